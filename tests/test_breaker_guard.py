"""Circuit breakers and check deadlines in guarded checks, against loopback servers.

A dead guard (a closed port), a hanging one and a failing one: once the breaker
is open, checks are decided by the failure mode without a request (counted at
the server, or by the HTTP client's request hook); they recover through
half-open when the server comes back. Retries stop at the check's deadline,
also on a worker still running an abandoned check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from faultkit import CHAT, SAFE, UNSAFE, ListSink, remote_policy, transitions, wait_until
from loopback import JSONResponse, LoopbackServer, chat_completion, closed_port_url
from tenacity import wait_none

from guardrail import Guard, deadline
from guardrail.classifiers.remote import RemoteQwen3Guard
from guardrail.errors import ClassifierError, GuardHTTPError
from guardrail.reward.remote import RemoteRewardScorer
from guardrail.testing import ScriptedClassifier
from guardrail.types import Action, Stage

PROMPT = [{"role": "user", "content": "Plan a picnic"}]


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


def errors(sink: ListSink) -> list[str | None]:
    """The prompt check's error type in each record (``None``: the guard answered)."""
    return [r.stages[0].error.type if r.stages[0].error else None for r in sink.records]


def timed_out(names: list[str | None]) -> bool:
    """Whether every check ran out of time: the check's deadline or, cut to what was left
    of it, the last request's own timeout (which of the two fires first is a race)."""
    return bool(names) and all(n in ("GuardTimeoutError", "RemoteGuardTimeoutError") for n in names)


def counted_guard(url: str, attempts: list[httpx.Request], **kwargs: Any) -> RemoteQwen3Guard:
    """A remote guard whose HTTP client counts every attempt, refused connections included."""
    hooks = {"request": [attempts.append]}
    return RemoteQwen3Guard(
        url,
        http_client=httpx.Client(event_hooks=hooks),
        async_http_client=httpx.AsyncClient(event_hooks={"request": [_acount(attempts)]}),
        retry_wait=wait_none(),
        **kwargs,
    )


def _acount(attempts: list[httpx.Request]) -> Any:
    async def hook(request: httpx.Request) -> None:
        attempts.append(request)

    return hook


# ----------------------------------------------------------------------- dead guard


@pytest.mark.parametrize("fail", ["closed", "open"])
def test_a_dead_guard_is_left_alone_once_its_breaker_opens(fail: str) -> None:
    url = f"{closed_port_url()}/v1"
    attempts: list[httpx.Request] = []
    sink = ListSink()
    policy = remote_policy(url, fail=fail)  # breaker: 3 failures, then 60 s open
    with (
        transitions() as seen,
        Guard(policy, classifier=counted_guard(url, attempts), sink=sink) as guard,
    ):
        decisions = [guard.check_prompt(PROMPT) for _ in range(10)]
    assert len(attempts) == 3 * 3  # three failed checks, 1 + max_retries attempts each
    assert errors(sink) == ["GuardConnectionError"] * 3 + ["CircuitOpenError"] * 7
    expected = Action.BLOCK if fail == "closed" else Action.ALLOW
    assert {(d.action, d.rule_id) for d in decisions} == {(expected, "failure")}
    assert all("guard_error" in d.flags for d in decisions)
    assert len(sink.records) == 10  # one record per check, fast-failed ones included
    assert seen.moves() == [("closed", "open")]
    assert "circuit breaker 'guard' is open (3 consecutive failures" in (
        sink.records[-1].stages[0].error.message  # type: ignore[union-attr]
    )


async def test_a_dead_guard_fails_fast_in_async_checks_too() -> None:
    url = f"{closed_port_url()}/v1"
    attempts: list[httpx.Request] = []
    sink = ListSink()
    with Guard(remote_policy(url), classifier=counted_guard(url, attempts), sink=sink) as guard:
        for _ in range(6):
            await guard.acheck_prompt(PROMPT)
    assert len(attempts) == 9
    assert errors(sink) == ["GuardConnectionError"] * 3 + ["CircuitOpenError"] * 3


def test_the_default_policy_puts_any_guard_behind_a_breaker() -> None:
    # A local model that crashed on its device: the default policy's breaker trips
    # after 5 failed checks, and the model is not called again during the cool-down.
    crashed = ScriptedClassifier(error=ClassifierError("CUDA error: out of memory"))
    sink = ListSink()
    with Guard(classifier=crashed, sink=sink) as guard:
        for _ in range(8):
            assert guard.check_prompt(PROMPT).action is Action.BLOCK  # fails closed
    assert len(crashed.calls) == 5
    assert errors(sink) == ["ClassifierError"] * 5 + ["CircuitOpenError"] * 3


# -------------------------------------------------------------------- hanging guard


def test_a_hanging_guard_trips_the_breaker_and_is_not_called_while_open(
    server: LoopbackServer,
) -> None:
    server.route("POST", CHAT, JSONResponse(chat_completion(SAFE), delay=30))
    sink = ListSink()
    policy = remote_policy(
        f"{server.url}/v1",
        deadline_s=0.3,  # each check gives up after 0.3 s; requests may take 5
        breaker="{failures: 2, failure_rate: null, cooldown_s: 60}",
    )
    with transitions() as seen, Guard(policy, sink=sink) as guard:
        for _ in range(2):
            guard.check_prompt(PROMPT)
        seen.wait_for(("closed", "open"))
        hung = len(server.requests_to("POST", CHAT))
        for _ in range(5):
            assert guard.check_prompt(PROMPT).action is Action.BLOCK
    assert hung == 2  # the deadline stopped each hung check's retries
    assert len(server.requests_to("POST", CHAT)) == hung  # open: nothing sent
    assert timed_out(errors(sink)[:2])
    assert errors(sink)[2:] == ["CircuitOpenError"] * 5


async def test_a_hanging_guard_trips_the_breaker_in_async_checks(server: LoopbackServer) -> None:
    server.route("POST", CHAT, JSONResponse(chat_completion(SAFE), delay=30))
    sink = ListSink()
    policy = remote_policy(
        f"{server.url}/v1",
        deadline_s=0.3,
        breaker="{failures: 2, failure_rate: null, cooldown_s: 60}",
    )
    with transitions() as seen, Guard(policy, sink=sink) as guard:
        for _ in range(2):
            await guard.acheck_prompt(PROMPT)  # cancelled at the deadline: counted
        await seen.await_move(("closed", "open"))
        for _ in range(3):
            await guard.acheck_prompt(PROMPT)
    assert len(server.requests_to("POST", CHAT)) == 2
    assert timed_out(errors(sink)[:2])
    assert errors(sink)[2:] == ["CircuitOpenError"] * 3


# ------------------------------------------------------------------------- recovery


def test_the_breaker_recovers_through_half_open_when_the_guard_comes_back(
    server: LoopbackServer,
) -> None:
    server.route("POST", CHAT, JSONResponse({"error": {"message": "loading"}}, status=503))
    sink = ListSink()
    policy = remote_policy(
        f"{server.url}/v1",
        max_retries=0,
        breaker="{failures: 2, failure_rate: null, cooldown_s: 0.2, successes: 2}",
    )
    with transitions() as seen, Guard(policy, sink=sink) as guard:
        for _ in range(3):
            guard.check_prompt(PROMPT)
        assert len(server.requests_to("POST", CHAT)) == 2
        server.route("POST", CHAT, [JSONResponse(chat_completion(UNSAFE))])  # back, judging
        time.sleep(0.25)  # the cool-down passes
        trials = [guard.check_prompt(PROMPT) for _ in range(2)]
        after = guard.check_prompt(PROMPT)
    assert [d.rule_id for d in trials] == ["block-unsafe-prompt"] * 2  # verdicts again
    assert after.rule_id == "block-unsafe-prompt"
    assert len(server.requests_to("POST", CHAT)) == 5
    assert errors(sink) == ["GuardHTTPError"] * 2 + ["CircuitOpenError"] + [None] * 3
    assert seen.moves() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failed_trial_check_opens_the_breaker_again(server: LoopbackServer) -> None:
    server.route("POST", CHAT, JSONResponse({"error": {"message": "down"}}, status=500))
    sink = ListSink()
    policy = remote_policy(
        f"{server.url}/v1",
        max_retries=0,
        breaker="{failures: 1, failure_rate: null, cooldown_s: 0.2}",
    )
    with transitions() as seen, Guard(policy, sink=sink) as guard:
        guard.check_prompt(PROMPT)
        time.sleep(0.25)
        guard.check_prompt(PROMPT)  # the trial: fails
        guard.check_prompt(PROMPT)  # open again: not sent
    assert len(server.requests_to("POST", CHAT)) == 2
    assert errors(sink) == ["GuardHTTPError", "GuardHTTPError", "CircuitOpenError"]
    assert seen.moves() == [("closed", "open"), ("open", "half_open"), ("half_open", "open")]


def test_a_policy_can_turn_the_breaker_off(server: LoopbackServer) -> None:
    server.route("POST", CHAT, JSONResponse({"error": {"message": "down"}}, status=500))
    sink = ListSink()
    policy = remote_policy(f"{server.url}/v1", max_retries=0, breaker="{enabled: false}")
    with Guard(policy, sink=sink) as guard:
        for _ in range(8):
            guard.check_prompt(PROMPT)
    assert len(server.requests_to("POST", CHAT)) == 8
    assert errors(sink) == ["GuardHTTPError"] * 8


# ------------------------------------------------------------------ retry deadline


@pytest.mark.parametrize("use_async", [False, True])
def test_no_retry_starts_past_the_checks_deadline(server: LoopbackServer, use_async: bool) -> None:
    # The server asks for a 2 s pause: a retry would start after the deadline.
    busy = JSONResponse({"error": {"message": "busy"}}, status=429, headers={"Retry-After": "2"})
    server.route("POST", CHAT, busy)
    from guardrail.qwen3guard import guard_inputs

    inputs = guard_inputs(PROMPT)
    with RemoteQwen3Guard(f"{server.url}/v1", max_retries=3, retry_wait=wait_none()) as remote:

        async def ajudge() -> None:
            with deadline.scope(time.monotonic() + 1.0):
                await remote.aclassify(inputs)

        def judge() -> None:
            with deadline.scope(time.monotonic() + 1.0):
                remote.classify(inputs)

        with pytest.raises(GuardHTTPError):
            asyncio.run(ajudge()) if use_async else judge()
    assert len(server.requests_to("POST", CHAT)) == 1


def test_an_abandoned_sync_check_stops_retrying_at_its_deadline(server: LoopbackServer) -> None:
    # Each attempt fails after 0.15 s; ten retries would keep a worker busy for 1.65 s.
    server.route("POST", CHAT, JSONResponse({"error": {"message": "busy"}}, status=503, delay=0.15))
    remote = RemoteQwen3Guard(f"{server.url}/v1", max_retries=10, retry_wait=wait_none())
    policy = remote_policy(
        f"{server.url}/v1",
        deadline_s=0.4,
        breaker="{failures: 1, failure_rate: null, cooldown_s: 60}",
    )
    with transitions() as seen, Guard(policy, classifier=remote, sink=ListSink()) as guard:
        decision = guard.check_prompt(PROMPT)  # abandoned at 0.4 s, still running on a worker
        seen.wait_for(("closed", "open"))  # the worker gave up: its failure is counted
    assert decision.action is Action.BLOCK
    assert 1 <= len(server.requests_to("POST", CHAT)) <= 3  # ~0.4 s / 0.15 s, not 11


# ----------------------------------------------------------------------- reward


POOLING = "/pooling"


def reward_policy(server: LoopbackServer) -> str:
    return f"""\
version: 1
name: reward-breaker
reward:
  models: [{{id: en, kind: remote, model: rm, base_url: "{server.url}"}}]
  breaker: {{failures: 2, failure_rate: null, cooldown_s: 0.2, successes: 1}}
"""


def test_a_failing_reward_model_is_left_alone_while_its_breaker_is_open(
    server: LoopbackServer,
) -> None:
    from guardrail.policy import load_policy_text

    server.route("POST", POOLING, JSONResponse({"error": {"message": "oom"}}, status=500))
    scorer = RemoteRewardScorer(server.url, model="rm", max_retries=0, retry_wait=wait_none())
    sink = ListSink()
    policy = load_policy_text(reward_policy(server))
    with (
        transitions() as seen,
        Guard(policy, classifier=ScriptedClassifier(), scorers={"en": scorer}, sink=sink) as guard,
    ):
        for _ in range(4):
            decision = guard.check_response(PROMPT, "Bring sandwiches.")
            assert decision.action is Action.ALLOW  # the guard is the gate; rewards only score
        assert len(server.requests_to("POST", POOLING)) == 2
        server.route("POST", POOLING, JSONResponse({"data": [{"index": 0, "data": [1.5]}]}))
        time.sleep(0.25)
        guard.check_response(PROMPT, "Bring sandwiches.")
    reward_errors = [[e.type for e in r.errors] for r in sink.records]
    assert reward_errors == [["GuardHTTPError"]] * 2 + [["CircuitOpenError"]] * 2 + [[]]
    assert sink.records[2].errors[0].stage is Stage.RESPONSE
    assert "reward:en" in sink.records[2].errors[0].message
    assert [e.score for e in sink.records[-1].rewards] == [1.5]  # recovered: scored again
    assert seen.moves("reward:en") == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert seen.moves("guard") == []


def test_wait_until_reports_a_timeout() -> None:
    assert not wait_until(lambda: False, limit_s=0.05)


def test_every_transition_is_an_audit_event(server: LoopbackServer, tmp_path: Any) -> None:
    from guardrail.audit import read_entries, verify_file
    from guardrail.audit.record import EventRecord

    server.route("POST", CHAT, JSONResponse({"error": {"message": "down"}}, status=500))
    policy = remote_policy(
        f"{server.url}/v1",
        max_retries=0,
        breaker="{failures: 1, failure_rate: null, cooldown_s: 0.2}",
    )
    log = tmp_path / "audit.jsonl"
    audit = policy.audit.model_copy(update={"sink": "jsonl", "path": str(log)})
    policy = policy.model_copy(update={"audit": audit})
    with Guard(policy) as guard:
        guard.check_prompt(PROMPT)  # fails: opens
        time.sleep(0.25)
        guard.check_prompt(PROMPT)  # half-open trial: fails, opens again
    entries = list(read_entries(log))
    events = [
        (e.type, e.details["from"], e.details["backend"])
        for e in entries
        if isinstance(e, EventRecord)
    ]
    assert events == [
        ("breaker.open", "closed", "guard"),
        ("breaker.half_open", "open", "guard"),
        ("breaker.open", "half_open", "guard"),
    ]
    assert sum(not isinstance(e, EventRecord) for e in entries) == 2  # the two calls
    assert verify_file(log).ok
