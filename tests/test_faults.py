"""Fault injection: ten ways a guard server fails, each with the guard failing closed and open.

Each case is one chat completion through a real ``openai`` client (sync and
async) wrapped by guardrail, whose ``RemoteQwen3Guard`` calls a loopback guard
server scripted to fail one way, in front of a loopback upstream LLM. Every
case resolves within its bound (each check's recorded latency within the
policy's check deadline, attempts within ``1 + max_retries``, one attempt where
a retry cannot help), the decision follows the failure mode, and the call
leaves exactly one audit record naming the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from fakellm import FakeLLM, fake_llm
from faultkit import CHAT, SAFE, ListSink, remote_policy
from loopback import (
    Drop,
    JSONResponse,
    LoopbackServer,
    RawResponse,
    Truncated,
    chat_completion,
)

import guardrail
from guardrail import BlockedError, Guard
from guardrail.types import Action, Stage

REQUEST_TIMEOUT_S = 0.2  # guard.timeout_s: one request to the guard server
DEADLINE_S = 0.6  # execution.timeout_s: one check, retries included
MAX_RETRIES = 2
ANSWER = "Bring sandwiches and a blanket."


@dataclass(frozen=True)
class Fault:
    """A guard server's failure: its response, the errors it may surface as, its attempts."""

    response: Any
    errors: frozenset[str]
    retried: bool
    """Whether retrying can help (then up to 1 + max_retries attempts; else exactly one)."""


TIMEOUTS = frozenset({"GuardTimeoutError", "RemoteGuardTimeoutError"})
UNREACHABLE = frozenset({"GuardConnectionError", "GuardTimeoutError"})

FAULTS = {
    "hang": Fault(JSONResponse(chat_completion(SAFE), delay=60), TIMEOUTS, True),
    "slow": Fault(JSONResponse(chat_completion(SAFE), delay=0.4), TIMEOUTS, True),
    # asks for a pause that would end past the deadline: no retry is started
    "429-retry-after": Fault(
        JSONResponse({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "3"}),
        frozenset({"GuardHTTPError"}),
        False,
    ),
    "500": Fault(
        JSONResponse({"error": {"message": "boom"}}, status=500),
        frozenset({"GuardHTTPError", "GuardTimeoutError"}),
        True,
    ),
    "503": Fault(
        JSONResponse({"error": {"message": "loading"}}, status=503),
        frozenset({"GuardHTTPError", "GuardTimeoutError"}),
        True,
    ),
    "reset": Fault(Drop(), UNREACHABLE, True),
    "close-mid-body": Fault(Truncated('{"choices": [{"message": '), UNREACHABLE, True),
    "non-json": Fault(
        RawResponse("<html>502 Bad Gateway</html>", content_type="text/html"),
        frozenset({"RemoteGuardError"}),
        False,
    ),
    "content-null": Fault(
        JSONResponse(chat_completion(None)), frozenset({"VerdictParseError"}), False
    ),
    "chatty": Fault(
        JSONResponse(chat_completion("Sure! This conversation looks perfectly fine to me.")),
        frozenset({"VerdictParseError"}),
        False,
    ),
}

SLOW_FAULTS = {"hang", "slow"}  # each check waits out its timeouts


def cases() -> list[Any]:
    return [
        pytest.param(
            name, fail, id=f"{name}-{fail}", marks=[pytest.mark.slow] * (name in SLOW_FAULTS)
        )
        for name in FAULTS
        for fail in ("closed", "open")
    ]


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with fake_llm(lambda messages, index: ANSWER) as server:
        yield server


@pytest.fixture
def guard_server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


def faulty_guard(server: LoopbackServer, name: str, fail: str, sink: ListSink) -> Guard:
    server.route("POST", CHAT, FAULTS[name].response)
    policy = remote_policy(
        f"{server.url}/v1",
        fail=fail,
        timeout_s=REQUEST_TIMEOUT_S,
        max_retries=MAX_RETRIES,
        deadline_s=DEADLINE_S,
    )
    return Guard(policy, sink=sink)


def check_outcome(
    name: str, fail: str, server: LoopbackServer, sink: ListSink, reply: Any, error: Any
) -> None:
    fault = FAULTS[name]
    (record,) = sink.records  # exactly one record for the call
    if fail == "closed":
        assert isinstance(error, BlockedError)
        assert error.decision.rule_id == "failure"
        assert (record.final_action, record.blocked_stage) == (Action.BLOCK, Stage.PROMPT)
        checks = [Stage.PROMPT]
    else:
        assert error is None
        assert reply.choices[0].message.content == ANSWER
        report = guardrail.report(reply)
        assert report is not None
        assert "guard_error" in report.flags
        assert record.final_action is Action.ALLOW
        checks = [Stage.PROMPT, Stage.RESPONSE]
    assert [s.stage for s in record.stages] == checks
    for stage in record.stages:
        assert stage.decision.rule_id == "failure"
        assert "guard_error" in stage.decision.flags
        assert stage.error is not None
        assert stage.error.type in fault.errors, stage.error
        assert stage.latency_s <= 2 * DEADLINE_S  # bounded by the check's deadline
    attempts = len(server.requests_to("POST", CHAT))
    if fault.retried:
        assert len(checks) <= attempts <= len(checks) * (1 + MAX_RETRIES)
    else:
        assert attempts == len(checks)


@pytest.mark.parametrize(("name", "fail"), cases())
def test_a_sync_call_resolves_each_guard_fault_by_the_failure_mode(
    name: str, fail: str, llm: FakeLLM, guard_server: LoopbackServer
) -> None:
    sink = ListSink()
    raw = openai.OpenAI(base_url=llm.base_url, api_key="k", max_retries=0)
    reply: Any = None
    error: Any = None
    with faulty_guard(guard_server, name, fail, sink) as guard:
        client = guardrail.wrap(raw, guard=guard)
        try:
            reply = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Plan a picnic"}]
            )
        except BlockedError as blocked:
            error = blocked
    check_outcome(name, fail, guard_server, sink, reply, error)


@pytest.mark.parametrize(("name", "fail"), cases())
def test_an_async_call_resolves_each_guard_fault_by_the_failure_mode(
    name: str, fail: str, llm: FakeLLM, guard_server: LoopbackServer
) -> None:
    sink = ListSink()

    async def call(guard: Guard) -> tuple[Any, Any]:
        raw = openai.AsyncOpenAI(base_url=llm.base_url, api_key="k", max_retries=0)
        client = guardrail.wrap(raw, guard=guard)
        try:
            return await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Plan a picnic"}]
            ), None
        except BlockedError as blocked:
            return None, blocked
        finally:
            await raw.close()

    with faulty_guard(guard_server, name, fail, sink) as guard:
        reply, error = asyncio.run(call(guard))
    check_outcome(name, fail, guard_server, sink, reply, error)
