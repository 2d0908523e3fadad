"""The gateway in operation: one audit record per request, refusals included; the drain.

uvicorn on 127.0.0.1 in a thread, a loopback upstream, a scripted guard (the
helpers of ``test_gateway``). Each refused request's record is found by the
``x-guardrail-request-id`` the client got.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakellm import fake_llm
from loopback import JSONResponse, LoopbackServer
from served import serving
from test_gateway import SCRIPT, answer, ask, open_config, records, write_policy

from guardrail import Guard
from guardrail.audit import AuditSink
from guardrail.audit.sinkbase import SinkBase
from guardrail.errors import AuditError, GatewayConfigError
from guardrail.gateway import create_app, key_digest
from guardrail.gateway.config import load_gateway_config_text
from guardrail.gateway.inflight import InFlight
from guardrail.gateway.metrics import Metrics
from guardrail.testing import ScriptedClassifier

KEY = "gw-key-ops-0123456789abcdef"
CHAT = "/v1/chat/completions"


def wait_for(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.01)


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; its result (or exception) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def by_request_id(found: list[Any]) -> dict[str, Any]:
    ids = [r.request_id for r in found]
    assert len(ids) == len(set(ids)), "a request has two records"
    return dict(zip(ids, found, strict=True))


# ------------------------------------------------------------ one record per request


def test_every_request_to_a_guarded_endpoint_leaves_exactly_one_record(tmp_path: Path) -> None:
    main, other = write_policy(tmp_path), write_policy(tmp_path, name="other")
    with fake_llm(answer, delay_s=1.0) as llm:
        text = f"""
version: 1
limits: {{max_in_flight: 1, max_body_bytes: 4096}}
audit: {{unauthenticated_policy: other}}
upstreams:
  up: {{base_url: "{llm.base_url}"}}
policies:
  default: {main}
  other: {other}
keys:
  - {{id: ops, sha256: {key_digest(KEY)}, policy: default, upstream: up}}
"""
        config = load_gateway_config_text(text, "gateway.yaml")
        app = create_app(config, classifier=ScriptedClassifier(SCRIPT), environ={})
        auth = {"authorization": f"Bearer {KEY}"}
        ok = {"model": "m", "messages": ask("hi")}
        with serving(app) as (url, _):
            post = httpx.Client(base_url=url, timeout=20)
            thread, slow = in_thread(lambda: post.post(CHAT, json=ok, headers=auth))
            wait_for(lambda: llm.requests, "the first request reached the upstream")
            answers = {
                "busy": post.post(CHAT, json=ok, headers=auth),
                "unknown key": post.post(CHAT, json=ok, headers={"authorization": "Bearer no"}),
                "no key": post.post(CHAT, json=ok),
            }
            thread.join(20)
            answers["slow"] = slow[0]
            answers["oversize"] = post.post(
                CHAT, json={"model": "m", "messages": ask("x" * 5000)}, headers=auth
            )
            answers["not json"] = post.post(CHAT, content=b"{nope", headers=auth)
            answers["blocked"] = post.post(
                CHAT, json={"model": "m", "messages": ask("bomb")}, headers=auth
            )
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
        "blocked": 400,
    }
    ids = {name: r.headers["x-guardrail-request-id"] for name, r in answers.items()}
    assert all(r.headers["x-guardrail-action"] in ("allow", "block") for r in answers.values())
    kept = by_request_id(records(tmp_path))
    unauthenticated = by_request_id(records(tmp_path, "other"))
    assert set(unauthenticated) == {ids["unknown key"], ids["no key"]}
    assert set(kept) == {ids[n] for n in ("busy", "slow", "oversize", "not json", "blocked")}
    messages = {
        name: (kept | unauthenticated)[rid].errors[0].message
        for name, rid in ids.items()
        if name not in ("slow", "blocked")
    }
    assert messages["busy"].startswith("HTTP 429 rate_limit_exceeded: the gateway is serving 1")
    assert messages["oversize"].startswith("HTTP 413: the request body is larger than 4096")
    assert messages["not json"].startswith("HTTP 400: the request body is not valid JSON")
    assert messages["unknown key"].endswith(f"(key sha256:{key_digest('no')[:8]})")
    assert messages["no key"] == (
        "HTTP 401 invalid_api_key: missing API key: send 'Authorization: Bearer <key>'"
    )
    assert KEY not in (tmp_path / "policy-audit.jsonl").read_text()
    refused = [kept.get(rid) or unauthenticated[rid] for rid in ids.values()]
    assert sum(r.final_action.value == "block" and not r.stages for r in refused) == 5
    assert kept[ids["blocked"]].stages[0].decision.rule_id == "block-unsafe-prompt"
    assert len(llm.requests) == 1  # only the admitted, well-formed, allowed call
    assert 'guardrail_gateway_requests_total{route="chat.completions",status="429"} 1' in metrics
    assert 'guardrail_gateway_requests_total{route="chat.completions",status="401"} 2' in metrics


def test_a_client_gone_before_its_body_was_read_is_audited_as_499(tmp_path: Path) -> None:
    with fake_llm(answer) as llm:
        config = open_config(write_policy(tmp_path), llm.base_url)
        app = create_app(config, classifier=ScriptedClassifier(SCRIPT), environ={"UP_KEY": "k"})
        with serving(app) as (url, _):
            port = int(url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                    b'content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"mod'
                )
                time.sleep(0.2)  # the body read has begun (not a timing assertion)
            wait_for(lambda: records(tmp_path), "the abandoned request was audited")
            metrics = httpx.get(url + "/metrics").text
    (record,) = records(tmp_path)
    assert record.errors[0].message == (
        "HTTP 499 client_closed_request: the client disconnected before its request was read"
    )
    assert llm.requests == []
    assert 'route="chat.completions",status="499"} 1' in metrics


class BrokenSink(SinkBase):
    """A sink whose every write fails, as a full disk would."""

    def write_json(self, data: dict[str, Any]) -> None:
        raise AuditError("disk full")


def test_a_refusal_whose_record_cannot_be_written_fails_closed_with_500(tmp_path: Path) -> None:
    policy = write_policy(tmp_path)
    sink: AuditSink = BrokenSink()
    guard = Guard(policy, classifier=ScriptedClassifier(SCRIPT), sink=sink)
    with fake_llm(answer) as llm:
        config = open_config(policy, llm.base_url)
        app = create_app(config, guards={"default": guard}, environ={"UP_KEY": "k"})
        with serving(app) as (url, _):
            refused = httpx.post(url + CHAT, content=b"{nope", timeout=20)
            call = httpx.post(url + CHAT, json={"model": "m", "messages": ask("hi")}, timeout=20)
    guard.close()
    assert refused.status_code == call.status_code == 500
    assert refused.json()["error"]["type"] == call.json()["error"]["type"] == "audit_error"


# ------------------------------------------------------------------------ the drain


def test_shutdown_lets_a_request_in_flight_finish_then_flushes_its_record(
    tmp_path: Path,
) -> None:
    with fake_llm(answer, delay_s=1.5) as llm:
        config = open_config(write_policy(tmp_path), llm.base_url)
        app = create_app(config, classifier=ScriptedClassifier(SCRIPT), environ={"UP_KEY": "k"})
        body = {"model": "m", "messages": ask("Capital of France?")}
        with serving(app, drain_s=30) as (url, server):
            thread, answer_box = in_thread(lambda: httpx.post(url + CHAT, json=body, timeout=20))
            wait_for(lambda: llm.requests, "the request reached the upstream")
            server.should_exit = True  # what SIGTERM does
            thread.join(20)
    (response,) = answer_box
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].startswith("Paris")
    (record,) = records(tmp_path)
    assert record.request_id == response.headers["x-guardrail-request-id"]
    assert record.final_action.value == "allow"
    # The sink was closed after the record: its final checkpoint counts it.
    checkpoint = tmp_path / "policy-audit.jsonl.checkpoint"
    assert json.loads(checkpoint.read_text().splitlines()[-1])["count"] == 1


def test_a_request_past_the_drain_timeout_is_cancelled_and_still_audited(tmp_path: Path) -> None:
    with LoopbackServer() as upstream:
        upstream.route("POST", CHAT, JSONResponse({"never": "sent"}, delay=60))
        config = open_config(write_policy(tmp_path), upstream.url + "/v1", drain_timeout_s=1)
        app = create_app(config, classifier=ScriptedClassifier(SCRIPT), environ={"UP_KEY": "k"})
        body = {"model": "m", "messages": ask("hi")}
        with serving(app, drain_s=config.limits.drain_timeout_s) as (url, server):
            thread, answer_box = in_thread(lambda: httpx.post(url + CHAT, json=body, timeout=30))
            wait_for(lambda: upstream.requests, "the request reached the upstream")
            server.should_exit = True
            thread.join(30)
            assert not thread.is_alive()
    (cut,) = answer_box
    assert cut.status_code == 503
    assert cut.json()["error"]["message"] == "the gateway shut down before serving the request"
    (record,) = records(tmp_path)
    assert [e.type for e in record.errors] == ["Abandoned"]  # cancelled while upstream
    assert record.content.response is None  # nothing of an answer was released
    checkpoint = tmp_path / "policy-audit.jsonl.checkpoint"
    assert json.loads(checkpoint.read_text().splitlines()[-1])["count"] == 1


def test_requests_during_a_drain_get_503_and_are_audited(tmp_path: Path) -> None:
    with fake_llm(answer) as llm:
        config = open_config(write_policy(tmp_path), llm.base_url)
        app = create_app(config, classifier=ScriptedClassifier(SCRIPT), environ={"UP_KEY": "k"})
        with serving(app) as (url, _):
            app.state.gateway.inflight.draining = True  # as Gateway.shutdown() begins
            refused = httpx.post(url + CHAT, json={"model": "m", "messages": ask("hi")})
            ready = httpx.get(url + "/readyz")
    assert refused.status_code == ready.status_code == 503
    assert refused.json()["error"]["code"] == "shutting_down"
    assert ready.json()["status"] == "draining"
    (record,) = records(tmp_path)
    assert record.request_id == refused.headers["x-guardrail-request-id"]
    assert record.errors[0].message == "HTTP 503 shutting_down: the gateway is shutting down"
    assert llm.requests == []


async def test_a_drain_waits_for_requests_then_cancels_those_past_its_timeout() -> None:
    inflight = InFlight(10, Metrics())
    finished: list[str] = []

    async def request(name: str, gate: asyncio.Event) -> None:
        with inflight.tracked():
            try:
                await gate.wait()
                finished.append(name)
            except asyncio.CancelledError:
                finished.append(f"{name} cancelled")
                raise

    quick, stuck = asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(request("quick", quick)),
        asyncio.create_task(request("stuck", stuck)),
    ]
    await asyncio.sleep(0)  # both are tracked
    asyncio.get_running_loop().call_soon(quick.set)
    cancelled = await asyncio.wait_for(inflight.drain(0.2, grace_s=5), timeout=10)
    assert cancelled == 1
    assert finished == ["quick", "stuck cancelled"]
    assert inflight.draining
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("policy", ["other", None])
def test_the_unauthenticated_policy_is_a_known_one_the_first_by_default(policy: str | None) -> None:
    audit = "" if policy is None else f"audit: {{unauthenticated_policy: {policy}}}\n"
    text = f"""
version: 1
{audit}upstreams: {{up: {{base_url: "http://127.0.0.1:9/v1"}}}}
policies: {{default: a.yaml, other: b.yaml}}
keys: [{{id: k, sha256: {key_digest(KEY)}, policy: default, upstream: up}}]
"""
    assert load_gateway_config_text(text).unauthenticated_policy == (policy or "default")
    bad = text.replace("version: 1\n", "version: 1\naudit: {unauthenticated_policy: otter}\n")
    if policy is None:
        with pytest.raises(GatewayConfigError) as info:
            load_gateway_config_text(bad, "gw.yaml")
        assert str(info.value).startswith(
            "gw.yaml:3:33: audit.unauthenticated_policy: unknown policy 'otter'; "
            "did you mean 'other'?"
        )


def test_serve_runs_uvicorn_without_access_log_on_a_settled_heap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import gc

    import uvicorn

    from guardrail.gateway import GatewayConfig, app, serve

    seen: dict[str, Any] = {}

    def run(target: Any, **options: Any) -> None:
        seen.update(options, target=target, frozen=gc.get_freeze_count())

    monkeypatch.setattr(app, "create_app", lambda config: "the app")
    monkeypatch.setattr(uvicorn, "run", run)
    config = GatewayConfig.simple(policy=str(write_policy(tmp_path)), upstream="http://up/v1")
    try:
        serve.serve(config)
    finally:
        gc.unfreeze()
    assert seen["target"] == "the app"
    assert (seen["access_log"], seen["server_header"]) == (False, False)
    assert seen["frozen"] > 0  # start-up objects are out of the collector's scans
