"""The real ``guardrail serve --workers 2`` process: requests, SIGTERM, then the audit verified.

The gateway runs as users run it (``python -m guardrail serve --config ...``),
on a free 127.0.0.1 port, in front of a loopback upstream; its policy's guard
is ``remote``, a loopback stand-in for vLLM whose verdicts are scripted. The
real ``openai`` client calls it; SIGTERM stops it; ``guardrail audit verify``
and ``audit list`` then read the worker files: one chain per worker, intact, and
one record per request. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakellm import chunk_bodies, completion_body, last_user
from loopback import JSONResponse, LoopbackServer, Request, SSEResponse, chat_completion

ROOT = Path(__file__).resolve().parent.parent
KEY = "gw-process-key-0123456789abcdef"

POLICY = """\
version: 1
name: process-test
execution: {{mode: sequential, timeout_s: 10}}
guard: {{backend: remote, base_url: "{guard}", model: scripted-guard, max_retries: 0}}
audit: {{path: audit.jsonl, content: full, checkpoint_every: 2}}
rules:
  - {{id: block-unsafe-prompt, stage: prompt, when: {{levels: [Unsafe]}}, action: block}}
"""

GATEWAY = """\
version: 1
limits: {{drain_timeout_s: 10}}
upstreams:
  up: {{base_url: "{upstream}"}}
policies:
  default: policy.yaml
keys:
  - {{id: test, key_env: GW_KEY, policy: default, upstream: up}}
"""


def scripted_guard(request: Request) -> dict[str, Any]:
    """Unsafe for a conversation that mentions a bomb; Safe otherwise (a refusal: No)."""
    messages = request.json["messages"]
    text = json.dumps(messages)
    verdict = "Unsafe\nCategories: Violent" if "bomb" in text else "Safe\nCategories: None"
    answered = messages[-1]["role"] == "assistant"
    return chat_completion(f"Safety: {verdict}" + ("\nRefusal: No" if answered else ""))


def upstream_answer(request: Request) -> JSONResponse | SSEResponse:
    """``Answer to <question>``; a question that says ``slow`` waits 2 s for its answer."""
    body = request.json
    text = f"Answer to {last_user(body['messages'])}"
    if body.get("stream"):
        return SSEResponse(chunk_bodies(text, model=body["model"]))
    delay = 2.0 if "slow" in text else 0.0
    return JSONResponse(completion_body([text], model=body["model"]), delay=delay)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardrail", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, f"the gateway exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"not healthy within 120 s: {log.read_text()}"
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def test_the_served_gateway_audits_every_request_once_per_worker_chain(tmp_path: Path) -> None:
    guard, upstream = LoopbackServer(), LoopbackServer()
    guard.route("POST", "/v1/chat/completions", scripted_guard)
    upstream.route("POST", "/v1/chat/completions", upstream_answer)
    with guard, upstream:
        (tmp_path / "policy.yaml").write_text(POLICY.format(guard=guard.url + "/v1"))
        (tmp_path / "gateway.yaml").write_text(GATEWAY.format(upstream=upstream.url + "/v1"))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp_path / "serve.log"
        command = [sys.executable, "-m", "guardrail", "serve", "--config", "gateway.yaml"]
        command += ["--workers", "2", "--port", str(port), "--log-level", "warning"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GW_KEY": KEY}
        with log.open("wb") as out:
            proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
        # SIGTERM while a call is in flight: it is drained, answered and audited.
        slow: list[httpx.Response] = []
        body = {"model": "m", "messages": [{"role": "user", "content": "slow question"}]}
        headers = {"authorization": f"Bearer {KEY}"}
        caller = threading.Thread(
            target=lambda: slow.append(
                httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
            ),
            daemon=True,
        )
        try:
            wait_healthy(url, proc, log)
            ids = send_requests(url)
            caller.start()
            deadline = time.monotonic() + 30
            while not any(b"slow" in r.body for r in upstream.requests):
                assert time.monotonic() < deadline, "the slow call did not reach the upstream"
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
                pytest.fail(f"the gateway did not stop within 60 s of SIGTERM: {log.read_text()}")
        if caller.ident is not None:  # it was started
            caller.join(60)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    (drained,) = slow
    assert drained.status_code == 200
    assert drained.json()["choices"][0]["message"]["content"] == "Answer to slow question"
    ids["slow"] = drained.headers["x-guardrail-request-id"]

    files = sorted(p.name for p in tmp_path.glob("audit*.jsonl"))
    assert files == ["audit.w0.jsonl", "audit.w1.jsonl"]  # a file per worker, no shared one
    verified = cli("audit", "verify", "audit.jsonl", "--json", cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert [(Path(r["path"]).name, r["chain_ok"]) for r in report["logs"]] == [
        ("audit.w0.jsonl", True),
        ("audit.w1.jsonl", True),
    ]
    anchored = cli(
        "audit", "verify", "audit.jsonl", "--checkpoint", "audit.jsonl.checkpoint", cwd=tmp_path
    )
    assert anchored.returncode == 0, anchored.stdout + anchored.stderr  # each worker's own
    listed = cli("audit", "list", "audit.jsonl", "--json", "--kind", "call", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    logged = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["request_id"] for r in logged) == sorted(ids.values())
    actions = {name: next(r for r in logged if r["request_id"] == rid) for name, rid in ids.items()}
    assert actions["bomb"]["final_action"] == "block"
    assert actions["unknown key"]["errors"][0]["message"].startswith("HTTP 401 invalid_api_key")
    assert actions["stream"]["content"]["response"] == "Answer to stream please"
    assert KEY not in (tmp_path / "audit.w0.jsonl").read_text()
    assert KEY not in (tmp_path / "audit.w1.jsonl").read_text()


def send_requests(url: str) -> dict[str, str]:
    """Calls of every kind; each request's ``x-guardrail-request-id``, by name."""
    gateway = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    ids: dict[str, str] = {}
    for i in range(6):
        raw = gateway.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": f"question {i}"}]
        )
        assert raw.parse().choices[0].message.content == f"Answer to question {i}"
        ids[f"call {i}"] = raw.headers["x-guardrail-request-id"]
    with gateway.chat.completions.with_streaming_response.create(
        model="m", messages=[{"role": "user", "content": "stream please"}], stream=True
    ) as streamed:
        ids["stream"] = streamed.headers["x-guardrail-request-id"]
        assert "[DONE]" in streamed.read().decode()
    with pytest.raises(openai.BadRequestError) as blocked:
        gateway.chat.completions.create(model="m", messages=[{"role": "user", "content": "bomb"}])
    ids["bomb"] = blocked.value.response.headers["x-guardrail-request-id"]
    stranger = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    ids["unknown key"] = refused.value.response.headers["x-guardrail-request-id"]
    gateway.close()
    stranger.close()
    return ids
