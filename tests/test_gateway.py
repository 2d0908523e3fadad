"""The gateway end to end: uvicorn on 127.0.0.1, a loopback upstream, a scripted guard.

Driven with the real ``openai`` client (sync, async, streaming) and raw HTTP
(httpx): what a caller in any language sees.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakellm import FakeLLM, chunk_bodies, fake_llm, last_user
from loopback import JSONResponse, LoopbackServer, Request, SSEResponse
from served import serving

from guardrail import Guard
from guardrail.audit import read_records
from guardrail.cli import main
from guardrail.errors import GatewayConfigError, GuardTimeoutError
from guardrail.gateway import GatewayConfig, create_app, key_digest
from guardrail.gateway.config import load_gateway_config, load_gateway_config_text
from guardrail.policy import load_policy_text
from guardrail.testing import ScriptedClassifier

UNSAFE_ANSWER = "BOOM-RECIPE: mix the following"
SCRIPT = {
    "bomb": "Safety: Unsafe\nCategories: Violent",
    "BOOM-RECIPE": "Safety: Unsafe\nCategories: Violent\nRefusal: No",
}
UPSTREAM_KEY = "sk-upstream-secret-0123456789"
KEY_A, KEY_B = "gw-key-alpha-0123456789", "gw-key-beta-0123456789"

POLICY = """
version: 1
name: gateway-test
execution: {{mode: sequential, timeout_s: 5}}
block: {{behavior: {behavior}, message: "Blocked by policy."}}
streaming: {{chunk_chars: 24}}
audit: {{sink: jsonl, path: "{audit}", content: full, checkpoint_every: 1000}}
rules:
  - {{id: block-unsafe-prompt, stage: prompt, when: {{levels: [Unsafe]}}, action: block}}
  - {{id: block-unsafe-response, stage: response, when: {{levels: [Unsafe]}}, action: block}}
"""


def answer(messages: list[dict[str, Any]], index: int) -> str:
    q = last_user(messages)
    if "stream unsafe" in q:
        return "This starts fine. It goes on well. Then BOOM-RECIPE details follow here."
    if "unsafe answer" in q:
        return UNSAFE_ANSWER
    return "Paris is the capital of France. It is also its largest city."


def ask(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def write_policy(tmp_path: Path, behavior: str = "raise", name: str = "policy") -> Path:
    path = tmp_path / f"{name}.yaml"
    audit = tmp_path / f"{name}-audit.jsonl"
    path.write_text(POLICY.format(behavior=behavior, audit=audit))
    return path


def records(tmp_path: Path, name: str = "policy") -> list[Any]:
    path = tmp_path / f"{name}-audit.jsonl"
    return list(read_records(path)) if path.exists() else []


def open_config(policy: Path, upstream: str, **limits: int) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "version": 1,
            "limits": limits,
            "upstreams": {"main": {"base_url": upstream, "api_key_env": "UP_KEY"}},
            "policies": {"default": str(policy)},
            "open": {"policy": "default", "upstream": "main"},
        }
    )


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yields its URL."""
    with serving(app) as (url, _):
        yield url


@contextmanager
def gateway(
    tmp_path: Path,
    *,
    behavior: str = "raise",
    answer_fn: Any = answer,
    classifier: ScriptedClassifier | None = None,
    **limits: int,
) -> Iterator[tuple[str, FakeLLM]]:
    """A gateway (open, one policy) in front of a fake LLM; yields (base URL, the LLM)."""
    with fake_llm(answer_fn) as llm:
        config = open_config(write_policy(tmp_path, behavior), llm.base_url, **limits)
        app = create_app(
            config,
            classifier=classifier or ScriptedClassifier(SCRIPT),
            environ={"UP_KEY": UPSTREAM_KEY},
        )
        with running(app) as url:
            yield url, llm


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)


def sse_events(body: bytes) -> list[str]:
    """The data of each SSE event; asserts every event is a ``data:`` line and a blank line."""
    text = body.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e[len("data: ") :] for e in events]


# ------------------------------------------------------------------ chat completions


def test_allowed_call_reaches_the_upstream_and_is_audited_once(tmp_path: Path) -> None:
    with gateway(tmp_path) as (url, llm):
        raw = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "m", "messages": ask("Capital of France?"), "temperature": 0.2},
            timeout=20,
        )
        reply = client(url).chat.completions.create(model="m", messages=ask("Capital of France?"))
    assert raw.status_code == 200
    assert raw.json()["choices"][0]["message"]["content"].startswith("Paris is the capital")
    assert raw.headers["x-guardrail-action"] == "allow"
    assert reply.choices[0].message.content == raw.json()["choices"][0]["message"]["content"]
    assert llm.requests[0]["temperature"] == 0.2
    # The upstream got the upstream's key, never the caller's.
    upstream_auth = llm.server.requests_to("POST", "/v1/chat/completions")[0].headers
    assert upstream_auth["authorization"] == f"Bearer {UPSTREAM_KEY}"
    found = records(tmp_path)
    assert len(found) == 2
    assert found[0].request_id == raw.headers["x-guardrail-request-id"]


@pytest.mark.parametrize("where", ["prompt", "response"])
def test_a_block_with_behavior_raise_is_an_openai_400(tmp_path: Path, where: str) -> None:
    q = "how to build a bomb" if where == "prompt" else "give me the unsafe answer"
    with gateway(tmp_path) as (url, _):
        with pytest.raises(openai.BadRequestError) as info:
            client(url).chat.completions.create(model="m", messages=ask(q))
        raw = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": ask(q)})
    error = raw.json()["error"]
    assert info.value.status_code == raw.status_code == 400
    assert (error["type"], error["code"]) == ("guardrail_blocked", "content_filter")
    assert f"{where} blocked by rule 'block-unsafe-{where}'" in error["message"]
    assert raw.headers["x-guardrail-action"] == "block"
    assert UNSAFE_ANSWER not in raw.text
    found = records(tmp_path)
    assert len(found) == 2
    assert found[1].request_id == raw.headers["x-guardrail-request-id"]


def test_a_block_with_behavior_message_is_a_normal_completion(tmp_path: Path) -> None:
    with gateway(tmp_path, behavior="message") as (url, _):
        raw = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "m", "messages": ask("give me the unsafe answer")},
            # No header a client sends can weaken the policy.
            headers={"x-guardrail-action": "allow", "x-guardrail-policy": "none"},
        )
    assert raw.status_code == 200
    choice = raw.json()["choices"][0]
    assert choice["message"]["content"] == "Blocked by policy."
    assert choice["finish_reason"] == "content_filter"
    assert raw.headers["x-guardrail-action"] == "block"


def test_an_allowed_stream_is_framed_as_openai_sends_it(tmp_path: Path) -> None:
    body = {"model": "m", "messages": ask("Capital of France?"), "stream": True}
    with gateway(tmp_path) as (url, _):
        raw = httpx.post(url + "/v1/chat/completions", json=body, timeout=20)
        streamed = client(url).chat.completions.create(
            model="m", messages=ask("Capital of France?"), stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw.content)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert text == answer(ask("Capital of France?"), 0)
    assert len(records(tmp_path)) == 2


def test_a_cut_stream_ends_with_content_filter_then_done(tmp_path: Path) -> None:
    body = {"model": "m", "messages": ask("stream unsafe please"), "stream": True}
    with gateway(tmp_path) as (url, _):
        raw = httpx.post(url + "/v1/chat/completions", json=body, timeout=20)
    events = sse_events(raw.content)
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "content_filter"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert "BOOM" not in text
    assert text.startswith("This starts fine.")  # checked text before the cut was released
    (record,) = records(tmp_path)
    assert record.final_action.value == "block"


async def test_the_async_client_streams_and_completes(tmp_path: Path) -> None:
    with gateway(tmp_path) as (url, _):
        aclient = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        reply = await aclient.chat.completions.create(model="m", messages=ask("hi"))
        stream = await aclient.chat.completions.create(
            model="m", messages=ask("stream unsafe please"), stream=True
        )
        chunks = [c async for c in stream]
        await aclient.close()
    assert reply.choices[0].message.content.startswith("Paris")
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert "BOOM" not in "".join(c.choices[0].delta.content or "" for c in chunks)


# ------------------------------------------------------------------ refused requests


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"messages": []}', 400, "'model'"),
        (b'{"model": "m"}', 400, "'messages'"),
        (b'{"model": "m", "messages": "hi"}', 400, "messages"),
        (b'{"model": "m", "messages": [], "bogus": 1}', 400, "bogus"),
        (b'{"model": "m", "messages": [], "extra_headers": {"x": "y"}}', 400, "extra_headers"),
    ],
)
def test_bad_bodies_get_an_openai_400_and_one_audit_record(
    tmp_path: Path, body: bytes, status: int, needle: str
) -> None:
    with gateway(tmp_path) as (url, llm):
        raw = httpx.post(
            url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    assert raw.status_code == status
    error = raw.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert needle in error["message"]
    assert "Traceback" not in raw.text
    assert llm.requests == []
    (record,) = records(tmp_path)
    assert record.final_action.value == "block"


def test_an_oversized_body_gets_413(tmp_path: Path) -> None:
    big = {"model": "m", "messages": ask("x" * 5000)}
    with gateway(tmp_path, max_body_bytes=4096) as (url, llm):
        raw = httpx.post(url + "/v1/chat/completions", json=big)
        ok = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": ask("hi")})
    assert raw.status_code == 413
    assert "larger than 4096 bytes" in raw.json()["error"]["message"]
    assert ok.status_code == 200
    assert len(llm.requests) == 1


def test_overload_gets_429_with_retry_after(tmp_path: Path) -> None:
    with fake_llm(answer, delay_s=1.5) as llm:
        config = open_config(write_policy(tmp_path), llm.base_url, max_in_flight=1)
        app = create_app(config, classifier=ScriptedClassifier(SCRIPT), environ={"UP_KEY": "k"})
        with running(app) as url:
            body = {"model": "m", "messages": ask("hi")}
            first: list[httpx.Response] = []
            slow = threading.Thread(
                target=lambda: first.append(
                    httpx.post(url + "/v1/chat/completions", json=body, timeout=20)
                )
            )
            slow.start()
            deadline = time.monotonic() + 10
            while not llm.requests:  # the first request holds the only slot
                assert time.monotonic() < deadline
                time.sleep(0.01)
            second = httpx.post(url + "/v1/chat/completions", json=body, timeout=20)
            slow.join(20)
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert first[0].status_code == 200


def test_a_client_that_leaves_mid_stream_cancels_the_upstream(tmp_path: Path) -> None:
    pieces = [f"word{i} " for i in range(400)]

    def slow_stream(request: Request) -> SSEResponse:
        chunks = chunk_bodies("".join(pieces), model="m")
        return SSEResponse(chunks, chunk_delay=0.03)

    with LoopbackServer() as upstream:
        upstream.route("POST", "/v1/chat/completions", slow_stream)
        config = open_config(write_policy(tmp_path), upstream.url + "/v1")
        app = create_app(config, classifier=ScriptedClassifier(SCRIPT), environ={"UP_KEY": "k"})
        with running(app) as url:
            body = {"model": "m", "messages": ask("hi"), "stream": True}
            with httpx.stream("POST", url + "/v1/chat/completions", json=body) as response:
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")
            # The client closed its connection: the gateway closes the upstream's
            # (the full stream would take 400 x 30 ms = 12 s).
            deadline = time.monotonic() + 5
            while upstream.open_connections:
                assert time.monotonic() < deadline, "the upstream stream was not cancelled"
                time.sleep(0.02)
            deadline = time.monotonic() + 5
            while not records(tmp_path):
                assert time.monotonic() < deadline, "the abandoned call was not audited"
                time.sleep(0.02)
    assert len(records(tmp_path)) == 1
    assert len(upstream.requests) == 1


# ------------------------------------------------------------------ keys and secrets


def keyed_config(tmp_path: Path, a: str, b: str) -> GatewayConfig:
    text = f"""
version: 1
upstreams:
  a: {{base_url: "{a}", api_key_env: UP_KEY}}
  b: {{base_url: "{b}"}}
policies:
  default: {write_policy(tmp_path)}
keys:
  - {{id: alpha, sha256: {key_digest(KEY_A)}, policy: default, upstream: a}}
  - {{id: beta, key_env: GW_KEY_BETA, policy: default, upstream: b}}
"""
    return load_gateway_config_text(text, "gateway.yaml")


def test_keys_choose_the_upstream_and_unknown_keys_get_401(tmp_path: Path) -> None:
    with fake_llm(answer) as a, fake_llm(answer) as b:
        config = keyed_config(tmp_path, a.base_url, b.base_url)
        environ = {"UP_KEY": UPSTREAM_KEY, "GW_KEY_BETA": KEY_B}
        app = create_app(config, classifier=ScriptedClassifier(SCRIPT), environ=environ)
        with running(app) as url:
            client(url, KEY_A).chat.completions.create(model="m", messages=ask("hi"))
            client(url, KEY_B).chat.completions.create(model="m", messages=ask("hi"))
            client(url, KEY_B).chat.completions.create(model="m", messages=ask("hi"))
            with pytest.raises(openai.AuthenticationError) as bad:
                client(url, "not-a-key").chat.completions.create(model="m", messages=ask("hi"))
            missing = httpx.post(url + "/v1/chat/completions", json={"model": "m"})
            models = httpx.get(url + "/v1/models", headers={"authorization": "Bearer nope"})
    assert (len(a.requests), len(b.requests)) == (1, 2)
    assert bad.value.status_code == 401
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert models.status_code == 401
    # Refused requests reach neither the guard nor the upstream; each of the two to a
    # guarded endpoint leaves one record (GET /v1/models is not guarded: none).
    found = records(tmp_path)
    assert [r.final_action.value for r in found] == ["allow"] * 3 + ["block"] * 2
    assert all(r.stages == () for r in found[3:])
    assert [r.errors[0].type for r in found[3:]] == ["RequestRefusedError"] * 2
    assert found[3].errors[0].message.startswith("HTTP 401 invalid_api_key: invalid API key")
    assert f"(key sha256:{key_digest('not-a-key')[:8]})" in found[3].errors[0].message
    assert "missing API key" in found[4].errors[0].message
    assert "not-a-key" not in (tmp_path / "policy-audit.jsonl").read_text()


def test_the_upstream_key_never_reaches_the_caller_or_the_audit_log(tmp_path: Path) -> None:
    def echo_key(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        key = auth.removeprefix("Bearer ")
        message = f"Incorrect API key provided: {key}. Header was {auth}"
        return JSONResponse({"error": {"message": message, "type": "auth", "code": "bad"}}, 401)

    with LoopbackServer() as upstream:
        upstream.route("POST", "/v1/chat/completions", echo_key)
        upstream.route("GET", "/v1/models", echo_key)
        config = open_config(write_policy(tmp_path), upstream.url + "/v1")
        app = create_app(
            config, classifier=ScriptedClassifier(SCRIPT), environ={"UP_KEY": UPSTREAM_KEY}
        )
        with running(app) as url:
            raw = httpx.post(
                url + "/v1/chat/completions", json={"model": "m", "messages": ask("hi")}
            )
            models = httpx.get(url + "/v1/models")
    assert upstream.requests[0].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert raw.status_code == models.status_code == 401
    assert "Incorrect API key provided" in raw.json()["error"]["message"]
    for text in (raw.text, models.text, (tmp_path / "policy-audit.jsonl").read_text()):
        assert UPSTREAM_KEY not in text
    (record,) = records(tmp_path)
    # The upstream's failure names the record it left, as a block does.
    assert record.request_id == raw.headers["x-guardrail-request-id"]


# ------------------------------------------------------------------ other routes


def test_models_health_readiness_metrics_and_unguarded_apis(tmp_path: Path) -> None:
    models_body = {
        "object": "list",
        "data": [
            {"id": "m", "object": "model", "created": 1, "owned_by": "x"},
            {"id": "hidden", "object": "model", "created": 1, "owned_by": "x"},
        ],
    }
    with fake_llm(answer) as llm:
        llm.server.route("GET", "/v1/models", JSONResponse(models_body))
        config = open_config(write_policy(tmp_path), llm.base_url)
        upstreams = {"main": config.upstreams["main"].model_copy(update={"models": ["m"]})}
        config = config.model_copy(update={"upstreams": upstreams})
        app = create_app(config, classifier=ScriptedClassifier(SCRIPT), environ={"UP_KEY": "k"})
        with running(app) as url:
            listed = [m.id for m in client(url).models.list()]
            unknown = httpx.post(
                url + "/v1/chat/completions", json={"model": "other", "messages": ask("hi")}
            )
            httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": ask("bomb")})
            health = httpx.get(url + "/healthz")
            ready = httpx.get(url + "/readyz")
            metrics = httpx.get(url + "/metrics").text
            responses = httpx.get(url + "/v1/responses/resp_1")
            nowhere = httpx.get(url + "/v1/embeddings")
    assert listed == ["m"]
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert health.status_code == ready.status_code == 200
    assert ready.json()["breakers"] == {"default": "closed"}
    assert 'guardrail_gateway_requests_total{route="chat.completions",status="400"} 2' in metrics
    assert 'guardrail_gateway_actions_total{policy="default",action="block"} 1' in metrics
    assert 'guardrail_gateway_breaker_state{policy="default",state="closed"} 1' in metrics
    assert 'guardrail_gateway_guard_latency_seconds_count{stage="prompt"} 1' in metrics
    assert responses.status_code == 501
    assert "only POST /v1/responses is guarded" in responses.json()["error"]["message"]
    assert nowhere.status_code == 404
    assert nowhere.json()["error"]["type"] == "invalid_request_error"
    assert all(not r.path.startswith("/v1/responses") for r in llm.server.requests)


def test_readyz_fails_while_the_guard_breaker_is_open(tmp_path: Path) -> None:
    text = POLICY.format(behavior="raise", audit=tmp_path / "a.jsonl") + (
        "guard: {breaker: {failures: 1, failure_rate: null, cooldown_s: 600}}\n"
    )
    broken = ScriptedClassifier(error=GuardTimeoutError("guard timed out"))
    guard = Guard(load_policy_text(text), classifier=broken)
    with fake_llm(answer) as llm:
        config = open_config(write_policy(tmp_path), llm.base_url)
        app = create_app(config, guards={"default": guard}, environ={"UP_KEY": "k"})
        with running(app) as url:
            before = httpx.get(url + "/readyz")
            blocked = httpx.post(
                url + "/v1/chat/completions", json={"model": "m", "messages": ask("hi")}
            )
            after = httpx.get(url + "/readyz")
            metrics = httpx.get(url + "/metrics").text
    guard.close()
    assert before.status_code == 200
    assert blocked.status_code == 400  # fails closed
    assert after.status_code == 503
    assert after.json()["breakers"] == {"default": "open"}
    assert 'guardrail_gateway_breaker_state{policy="default",state="open"} 1' in metrics


def test_shutdown_flushes_the_audit_of_guards_it_built(tmp_path: Path) -> None:
    with gateway(tmp_path) as (url, _):
        httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": ask("hi")})
        checkpoint = tmp_path / "policy-audit.jsonl.checkpoint"
        assert not checkpoint.exists()
    # Closing the guard's sink writes its final checkpoint.
    assert json.loads(checkpoint.read_text().splitlines()[-1])["count"] == 1


# ------------------------------------------------------------------ config and CLI

GOOD = """\
version: 1
upstreams:
  main: {base_url: "http://127.0.0.1:9/v1", api_key_env: UP_KEY}
policies:
  default: POLICY
open: {policy: default, upstream: main}
"""


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (("open: {policy: default", "open: {policy: defualt"), "6:16: open.policy: unknown policy"),
        (("version: 1\n", "version: 1\nsevrer: {}\n"), "2:1: sevrer: unknown key 'sevrer'"),
        (("open:", "keys: []\nopen:"), None),
        (("api_key_env: UP_KEY", "api_key_env: sk-123"), "3:58: upstreams.main.api_key_env"),
        (("policies:", "upstreams: {}\npolicies:"), "4:1: upstreams: duplicate key"),
    ],
)
def test_config_errors_are_located(change: tuple[str, str], where: str | None) -> None:
    text = GOOD.replace("POLICY", "p.yaml").replace(*change)
    if where is None:
        assert load_gateway_config_text(text).open is not None
        return
    with pytest.raises(GatewayConfigError) as info:
        load_gateway_config_text(text, "gw.yaml")
    assert str(info.value).startswith(f"gw.yaml:{where}"), str(info.value)


def test_config_suggests_the_policy_and_requires_one_way_in() -> None:
    text = GOOD.replace("POLICY", "p.yaml").replace("policy: default", "policy: defualt")
    with pytest.raises(GatewayConfigError, match="did you mean 'default'"):
        load_gateway_config_text(text)
    with pytest.raises(GatewayConfigError, match=r"give keys .* or open"):
        load_gateway_config_text(text.replace("open: {policy: defualt, upstream: main}", ""))


def test_cli_checks_a_config_and_refuses_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = write_policy(tmp_path)
    good = tmp_path / "gateway.yaml"
    good.write_text(GOOD.replace("POLICY", policy.name))
    assert load_gateway_config(good).policies["default"] == str(policy)
    monkeypatch.delenv("UP_KEY", raising=False)
    assert main(["serve", "--config", str(good), "--check"]) == 2
    assert "UP_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("UP_KEY", "k")
    assert main(["serve", "--config", str(good), "--check", "--port", "9999"]) == 0
    assert "open (no key), 127.0.0.1:9999" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("POLICY", policy.name).replace("main}", "mian}"))
    assert main(["serve", "--config", str(bad), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{bad}:6:35: open.upstream:" in err
    assert "did you mean 'main'" in err
    assert main(["serve", "--policy", str(policy)]) == 2
    assert "--upstream" in capsys.readouterr().err
    args = ["serve", "--policy", str(policy), "--upstream", "http://127.0.0.1:9/v1", "--check"]
    assert main(args) == 0


def test_importing_the_gateway_package_loads_no_web_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, guardrail, guardrail.gateway, guardrail.cli\n"
        "print(sorted(m for m in ('starlette', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_the_example_config_is_valid() -> None:
    path = Path(__file__).resolve().parent.parent / "examples" / "gateway.yaml"
    config = load_gateway_config(path)
    assert [k.id for k in config.keys] == ["web-app", "batch-jobs"]
    for policy in config.policies.values():
        load_policy_text(Path(policy).read_bytes(), policy)
