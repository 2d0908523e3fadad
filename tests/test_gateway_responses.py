"""The gateway's Responses API end to end: uvicorn on 127.0.0.1, a loopback upstream.

Driven with the real ``openai`` client (``client.responses.create``: sync, async,
streaming) and raw HTTP (httpx): the same guarded flow, policy, audit records,
headers and stream guarantees as the chat endpoint, in the Responses API's shapes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakeresponses import FakeResponses, fake_responses, last_user_text, message, stream_events
from loopback import LoopbackServer, SSEResponse
from test_gateway import SCRIPT, UPSTREAM_KEY, open_config, records, running, write_policy
from test_gateway_ops import by_request_id, in_thread, serving, wait_for

from guardrail.gateway import create_app, key_digest
from guardrail.gateway.config import load_gateway_config_text
from guardrail.testing import ScriptedClassifier

UNSAFE = "BOOM-RECIPE: mix the following"
SAFE = "Paris is the capital of France. It is also its largest city."
PATH = "/v1/responses"


def answer(body: dict[str, Any]) -> list[dict[str, Any]]:
    q = last_user_text(body)
    if "stream unsafe" in q:
        return [message("This starts fine. It goes on well. Then BOOM-RECIPE details follow here.")]
    if "unsafe answer" in q:
        return [message(UNSAFE)]
    return [message(SAFE)]


@contextmanager
def gateway(tmp_path: Path, *, behavior: str = "raise") -> Iterator[tuple[str, FakeResponses]]:
    """A gateway (open, one policy) in front of a fake Responses upstream."""
    with fake_responses(answer) as upstream:
        config = open_config(write_policy(tmp_path, behavior), upstream.base_url)
        app = create_app(
            config, classifier=ScriptedClassifier(SCRIPT), environ={"UP_KEY": UPSTREAM_KEY}
        )
        with running(app) as url:
            yield url, upstream


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=20)


def sse(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) per SSE event; asserts OpenAI's framing: ``event:``, ``data:``, blank."""
    text = body.decode()
    assert text.endswith("\n\n")
    out = []
    for frame in text[:-2].split("\n\n"):
        name, data = frame.split("\n")
        assert name.startswith("event: ")
        assert data.startswith("data: ")
        payload = json.loads(data[len("data: ") :])
        assert payload["type"] == name[len("event: ") :]
        out.append((payload["type"], payload))
    return out


def test_an_allowed_response_is_guarded_and_audited_once(tmp_path: Path) -> None:
    with gateway(tmp_path) as (url, upstream):
        raw = httpx.post(url + PATH, json={"model": "m", "input": "Capital?", "temperature": 0.2})
        reply = client(url).responses.create(model="m", input="Capital?")
    assert raw.status_code == 200
    assert raw.json()["output"][0]["content"][0]["text"] == SAFE
    assert raw.headers["x-guardrail-action"] == "allow"
    assert reply.output_text == SAFE
    assert upstream.requests[0] == {"model": "m", "input": "Capital?", "temperature": 0.2}
    sent = upstream.server.requests_to("POST", PATH)[0].headers
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"
    found = records(tmp_path)
    assert len(found) == 2
    assert found[0].request_id == raw.headers["x-guardrail-request-id"]
    assert [s.stage.value for s in found[0].stages] == ["prompt", "response"]


@pytest.mark.parametrize("where", ["prompt", "response"])
def test_a_block_with_behavior_raise_is_an_openai_400(tmp_path: Path, where: str) -> None:
    q = "how to build a bomb" if where == "prompt" else "give me the unsafe answer"
    with gateway(tmp_path) as (url, _):
        with pytest.raises(openai.BadRequestError) as info:
            client(url).responses.create(model="m", input=q)
        raw = httpx.post(url + PATH, json={"model": "m", "input": q})
    error = raw.json()["error"]
    assert info.value.status_code == raw.status_code == 400
    assert (error["type"], error["code"]) == ("guardrail_blocked", "content_filter")
    assert f"{where} blocked by rule 'block-unsafe-{where}'" in error["message"]
    assert raw.headers["x-guardrail-action"] == "block"
    assert "BOOM" not in raw.text
    found = records(tmp_path)
    assert len(found) == 2
    assert found[1].request_id == raw.headers["x-guardrail-request-id"]


def test_a_block_with_behavior_message_is_an_incomplete_response(tmp_path: Path) -> None:
    with gateway(tmp_path, behavior="message") as (url, _):
        raw = httpx.post(url + PATH, json={"model": "m", "input": "give me the unsafe answer"})
        reply = client(url).responses.create(model="m", input="give me the unsafe answer")
    assert raw.status_code == 200
    assert raw.headers["x-guardrail-action"] == "block"
    assert raw.json()["status"] == "incomplete"
    assert raw.json()["incomplete_details"] == {"reason": "content_filter"}
    assert "BOOM" not in raw.text
    assert reply.output_text == "Blocked by policy."


def test_an_allowed_stream_is_framed_as_openai_frames_it(tmp_path: Path) -> None:
    body = {"model": "m", "input": "Capital?", "stream": True}
    with gateway(tmp_path) as (url, _):
        raw = httpx.post(url + PATH, json=body, timeout=20)
        events = list(client(url).responses.create(model="m", input="Capital?", stream=True))
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-guardrail-action"] == "allow"
    framed = sse(raw.content)  # no [DONE]: the Responses API ends with its last event
    assert [name for name, _ in framed] == [e["type"] for e in stream_events([message(SAFE)])]
    assert [e.type for e in events] == [name for name, _ in framed]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == SAFE
    assert len(records(tmp_path)) == 2


def test_a_cut_stream_ends_with_response_incomplete(tmp_path: Path) -> None:
    body = {"model": "m", "input": "stream unsafe please", "stream": True}
    with gateway(tmp_path) as (url, _):
        raw = httpx.post(url + PATH, json=body, timeout=20)
    framed = sse(raw.content)
    name, last = framed[-1]
    assert name == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "content_filter"}
    assert "BOOM" not in raw.text
    text = "".join(d["delta"] for n, d in framed if n == "response.output_text.delta")
    assert text.startswith("This starts fine.")  # checked text before the cut was released
    (record,) = records(tmp_path)
    assert record.final_action.value == "block"


async def test_the_async_client_creates_and_streams(tmp_path: Path) -> None:
    with gateway(tmp_path) as (url, _):
        aclient = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        reply = await aclient.responses.create(model="m", input="hi")
        stream = await aclient.responses.create(model="m", input="stream unsafe", stream=True)
        events = [e async for e in stream]
        await aclient.close()
    assert reply.output_text == SAFE
    assert events[-1].type == "response.incomplete"
    assert all("BOOM" not in e.model_dump_json() for e in events)
    assert len(records(tmp_path)) == 2


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"input": "hi"}', "'model'"),
        (b'{"model": "m", "input": "hi", "bogus": 1}', "bogus"),
        (b'{"model": "m", "input": "hi", "extra_body": {"input": "x"}}', "extra_body"),
        (b'{"model": "m", "input": "hi", "background": true}', "background"),
        (b'{"model": "m", "input": [{"role": "robot", "content": "hi"}]}', "input[0].role"),
    ],
)
def test_bad_bodies_get_an_openai_400_and_one_audit_record(
    tmp_path: Path, body: bytes, needle: str
) -> None:
    with gateway(tmp_path) as (url, upstream):
        raw = httpx.post(url + PATH, content=body, headers={"content-type": "application/json"})
    assert raw.status_code == 400
    error = raw.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert needle in error["message"]
    assert upstream.requests == []
    (record,) = records(tmp_path)
    assert record.final_action.value == "block"


def test_every_request_refused_or_not_leaves_exactly_one_record(tmp_path: Path) -> None:
    main, other = write_policy(tmp_path), write_policy(tmp_path, name="other")
    key = "gw-key-responses-0123456789abcdef"
    with fake_responses(answer, delay_s=1.0) as upstream:
        text = f"""
version: 1
limits: {{max_in_flight: 1, max_body_bytes: 4096}}
audit: {{unauthenticated_policy: other}}
upstreams:
  up: {{base_url: "{upstream.base_url}"}}
policies:
  default: {main}
  other: {other}
keys:
  - {{id: ops, sha256: {key_digest(key)}, policy: default, upstream: up}}
"""
        config = load_gateway_config_text(text, "gateway.yaml")
        app = create_app(config, classifier=ScriptedClassifier(SCRIPT), environ={})
        auth = {"authorization": f"Bearer {key}"}
        ok = {"model": "m", "input": "hi"}
        with serving(app) as (url, _):
            post = httpx.Client(base_url=url, timeout=20)
            thread, slow = in_thread(lambda: post.post(PATH, json=ok, headers=auth))
            wait_for(lambda: upstream.requests, "the first request reached the upstream")
            answers = {
                "busy": post.post(PATH, json=ok, headers=auth),
                "unknown key": post.post(PATH, json=ok, headers={"authorization": "Bearer no"}),
                "no key": post.post(PATH, json=ok),
            }
            thread.join(20)
            answers["slow"] = slow[0]
            answers["oversize"] = post.post(
                PATH, json={"model": "m", "input": "x" * 5000}, headers=auth
            )
            answers["not json"] = post.post(PATH, content=b"{nope", headers=auth)
            answers["no model"] = post.post(PATH, json={"input": "hi"}, headers=auth)
            answers["background"] = post.post(PATH, json={**ok, "background": True}, headers=auth)
            answers["blocked"] = post.post(
                PATH, json={"model": "m", "input": "how to build a bomb"}, headers=auth
            )
            app.state.gateway.inflight.draining = True  # as Gateway.shutdown() begins
            answers["draining"] = post.post(PATH, json=ok, headers=auth)
            app.state.gateway.inflight.draining = False
            metrics = post.get("/metrics").text
            post.close()
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {
        "busy": 429,
        "unknown key": 401,
        "no key": 401,
        "slow": 200,
        "oversize": 413,
        "not json": 400,
        "no model": 400,
        "background": 400,
        "blocked": 400,
        "draining": 503,
    }
    # The call's own refusal ("background") is audited by the call, which names no
    # request id to its caller: its record is the one no answer points to.
    ids = {n: r.headers["x-guardrail-request-id"] for n, r in answers.items() if n != "background"}
    kept = by_request_id(records(tmp_path))
    unauthenticated = by_request_id(records(tmp_path, "other"))
    assert set(unauthenticated) == {ids["unknown key"], ids["no key"]}
    (ids["background"],) = set(kept) - set(ids.values())
    assert set(kept) == {v for k, v in ids.items() if k not in ("unknown key", "no key")}
    before_call = ("busy", "unknown key", "no key", "oversize", "not json", "no model", "draining")
    messages = {name: (kept | unauthenticated)[ids[name]].errors[0].message for name in before_call}
    assert messages["busy"].startswith("HTTP 429 rate_limit_exceeded: the gateway is serving 1")
    assert messages["unknown key"].endswith(f"(key sha256:{key_digest('no')[:8]})")
    assert messages["oversize"].startswith("HTTP 413: the request body is larger than 4096")
    assert messages["not json"].startswith("HTTP 400: the request body is not valid JSON")
    assert messages["no model"] == "HTTP 400: missing required parameter: 'model'"
    assert messages["draining"] == "HTTP 503 shutting_down: the gateway is shutting down"
    assert all(answers[name].headers["x-guardrail-action"] == "block" for name in before_call)
    assert "background" in kept[ids["background"]].errors[0].message  # the call's own refusal
    assert kept[ids["blocked"]].stages[0].decision.rule_id == "block-unsafe-prompt"
    assert kept[ids["slow"]].final_action.value == "allow"
    assert len(upstream.requests) == 1  # only the admitted, well-formed, allowed call
    assert 'guardrail_gateway_requests_total{route="responses",status="429"} 1' in metrics
    assert 'guardrail_gateway_requests_total{route="responses",status="401"} 2' in metrics
    assert 'guardrail_gateway_requests_total{route="responses",status="503"} 1' in metrics


def test_stored_responses_are_never_passed_through(tmp_path: Path) -> None:
    with gateway(tmp_path) as (url, upstream):
        stored = httpx.get(url + PATH + "/resp_1")
        cancel = httpx.post(url + PATH + "/resp_1/cancel")
        listing = httpx.get(url + PATH)
        httpx.post(url + PATH, json={"model": "m", "input": "hi"})
        metrics = httpx.get(url + "/metrics").text
    assert stored.status_code == cancel.status_code == 501
    assert "only POST /v1/responses is guarded" in stored.json()["error"]["message"]
    assert listing.status_code == 405
    assert [r.method for r in upstream.server.requests] == ["POST"]
    assert 'guardrail_gateway_requests_total{route="responses",status="200"} 1' in metrics


def test_an_upstream_failure_mid_stream_ends_with_an_error_event(tmp_path: Path) -> None:
    events = stream_events([message("Hello. This is fine.")])[:5]
    failing = [*events, 0.05, '{"error": {"message": "upstream overloaded"}}']
    with LoopbackServer() as upstream:
        upstream.route("POST", PATH, SSEResponse(failing, done=False))
        config = open_config(write_policy(tmp_path), upstream.url + "/v1")
        app = create_app(config, classifier=ScriptedClassifier(SCRIPT), environ={"UP_KEY": "k"})
        with running(app) as url:
            raw = httpx.post(url + PATH, json={"model": "m", "input": "hi", "stream": True})
    framed = sse(raw.content)
    name, error = framed[-1]
    assert name == "error"
    assert "overloaded" in error["message"]
    assert error["sequence_number"] == framed[-2][1]["sequence_number"] + 1
    (record,) = records(tmp_path)
    assert any("overloaded" in e.message for e in record.errors)


def test_a_client_that_leaves_mid_stream_cancels_the_upstream(tmp_path: Path) -> None:
    long = " ".join(f"word{i}." for i in range(300))

    with LoopbackServer() as upstream:
        upstream.route(
            "POST",
            PATH,
            SSEResponse(stream_events([message(long)], size=4), chunk_delay=0.03, done=False),
        )
        config = open_config(write_policy(tmp_path), upstream.url + "/v1")
        app = create_app(config, classifier=ScriptedClassifier(SCRIPT), environ={"UP_KEY": "k"})
        with running(app) as url:
            body = {"model": "m", "input": "hi", "stream": True}
            with httpx.stream("POST", url + PATH, json=body) as response:
                assert next(response.iter_lines()).startswith("event: ")
            deadline = time.monotonic() + 5
            while upstream.open_connections:
                assert time.monotonic() < deadline, "the upstream stream was not cancelled"
                time.sleep(0.02)
            deadline = time.monotonic() + 5
            while not records(tmp_path):
                assert time.monotonic() < deadline, "the abandoned call was not audited"
                time.sleep(0.02)
    assert len(records(tmp_path)) == 1
