"""The circuit breaker: its state machine on a fake clock, its settings, its wrappers.

Guarded calls against dead and hanging loopback servers are in
``test_breaker_guard.py``; here the breaker is driven by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from guardrail import deadline
from guardrail.breaker import (
    BreakerClassifier,
    BreakerScorer,
    BreakerSettings,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
)
from guardrail.errors import (
    CircuitOpenError,
    ClassifierError,
    ConfigurationError,
    GuardConnectionError,
    InputError,
    PolicyError,
)
from guardrail.policy import Policy, load_policy_text
from guardrail.qwen3guard import GuardInput, guard_inputs
from guardrail.reward.base import RewardPair, RewardScore
from guardrail.testing import ScriptedClassifier
from guardrail.types import Verdict

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """A breaker on a fake clock, recording its transitions."""

    def __init__(self, **settings: Any) -> None:
        self.clock = Clock()
        self.transitions: list[BreakerTransition] = []
        self.breaker = CircuitBreaker(
            "guard",
            BreakerSettings(**settings),
            on_transition=self.transitions.append,
            clock=self.clock,
        )

    @property
    def moves(self) -> list[tuple[BreakerState, BreakerState]]:
        return [(t.from_state, t.to_state) for t in self.transitions]

    def ok(self, n: int = 1) -> None:
        for _ in range(n):
            self.breaker.succeeded(self.breaker.acquire())

    def fail(self, n: int = 1) -> None:
        for _ in range(n):
            self.breaker.failed(self.breaker.acquire(), GuardConnectionError("down"))

    def rejected(self) -> CircuitOpenError:
        with pytest.raises(CircuitOpenError) as info:
            self.breaker.acquire()
        return info.value


# ------------------------------------------------------------------ consecutive failures


def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    h = Harness(failures=3, failure_rate=None)
    h.fail(2)
    h.ok()
    h.fail(2)
    assert h.breaker.state is CLOSED
    h.fail()
    assert h.breaker.state is OPEN
    (opened,) = h.transitions
    assert (opened.backend, opened.from_state, opened.to_state) == ("guard", CLOSED, OPEN)
    assert opened.reason == "3 consecutive failures (last: GuardConnectionError)"
    assert opened.consecutive_failures == 3
    assert (opened.window_calls, opened.window_failures) == (6, 5)


def test_an_open_breaker_fails_fast_until_its_cool_down_has_passed() -> None:
    h = Harness(failures=1, failure_rate=None, cooldown_s=10)
    h.fail()
    h.clock.advance(4)
    error = h.rejected()
    assert isinstance(error, ClassifierError)  # the failure mode decides, as for any guard error
    assert (error.backend, error.state, error.retry_after_s) == ("guard", "open", 6.0)
    assert "1 consecutive failures" in str(error)
    assert "6.0 s more" in str(error)
    h.clock.advance(5.9)
    h.rejected()
    assert h.moves == [(CLOSED, OPEN)]  # rejections are no transitions


# ----------------------------------------------------------------------- half-open


def test_after_the_cool_down_trial_calls_close_it_again() -> None:
    h = Harness(failures=1, failure_rate=None, cooldown_s=10, probes=1, successes=2)
    h.fail()
    h.clock.advance(10)
    trial = h.breaker.acquire()
    assert h.breaker.state is HALF
    assert h.transitions[-1].reason == "cool-down of 10 s passed"
    assert h.rejected().state == "half_open"  # one trial call at a time
    h.breaker.succeeded(trial)
    assert h.breaker.state is HALF  # one success of two
    h.ok()
    assert h.breaker.state is CLOSED
    assert h.moves == [(CLOSED, OPEN), (OPEN, HALF), (HALF, CLOSED)]
    assert h.transitions[-1].reason == "2 trial call(s) succeeded"
    h.ok(3)  # closed: calls go through
    assert h.breaker.state is CLOSED


def test_a_call_admitted_before_a_transition_does_not_count_after_it() -> None:
    # Admitted while closed, ended after the breaker opened and closed again: its
    # outcome belongs to a state that is gone, and must not move the new one.
    h = Harness(failures=2, failure_rate=None, cooldown_s=10, probes=1, successes=1)
    stale = h.breaker.acquire()
    h.fail(2)
    h.clock.advance(10)
    h.ok()  # the trial call closes it again
    assert h.breaker.state is CLOSED
    h.breaker.failed(stale, GuardConnectionError("late"))
    h.fail()
    assert h.breaker.state is CLOSED  # one failure of the new state, not two
    h.fail()
    assert h.breaker.state is OPEN
    assert h.transitions[-1].consecutive_failures == 2
    assert h.transitions[-1].window_calls == 2  # the late outcome was not counted


def test_a_failed_trial_call_opens_it_for_another_cool_down() -> None:
    h = Harness(failures=1, failure_rate=None, cooldown_s=10, successes=2)
    h.fail()
    h.clock.advance(10)
    h.ok()
    h.fail()
    assert h.moves == [(CLOSED, OPEN), (OPEN, HALF), (HALF, OPEN)]
    assert h.transitions[-1].reason == "a trial call failed (GuardConnectionError)"
    h.clock.advance(9.9)
    h.rejected()
    h.clock.advance(0.1)
    h.ok(2)
    assert h.breaker.state is CLOSED


def test_probes_limits_the_trial_calls_under_way_at_once() -> None:
    h = Harness(failures=1, failure_rate=None, cooldown_s=1, probes=2, successes=3)
    h.fail()
    h.clock.advance(1)
    first, second = h.breaker.acquire(), h.breaker.acquire()
    h.rejected()
    h.breaker.succeeded(first)  # frees a slot
    third = h.breaker.acquire()
    h.rejected()
    h.breaker.succeeded(second)
    assert h.breaker.state is HALF
    h.breaker.succeeded(third)
    assert h.breaker.state is CLOSED


def test_a_released_trial_call_frees_its_slot_without_counting() -> None:
    h = Harness(failures=1, failure_rate=None, cooldown_s=1, successes=1)
    h.fail()
    h.clock.advance(1)
    h.breaker.release(h.breaker.acquire())  # e.g. cancelled before its deadline
    assert h.breaker.state is HALF
    h.ok()
    assert h.breaker.state is CLOSED


# ------------------------------------------------------------------------ failure rate


def test_a_failure_rate_over_the_window_opens_it() -> None:
    h = Harness(failures=None, failure_rate=0.5, window_s=10, min_calls=6)
    for _ in range(2):
        h.fail()
        h.ok()  # never two failures in a row
    h.fail()
    assert h.breaker.state is CLOSED  # 3 of 5: too few calls to judge
    h.ok()
    assert h.breaker.state is CLOSED  # a success never opens it
    h.fail()
    assert h.breaker.state is OPEN  # 4 of 7
    assert h.transitions[-1].reason == (
        "4 of 7 calls failed in the last 10 s (last: GuardConnectionError)"
    )
    assert (h.transitions[-1].window_calls, h.transitions[-1].window_failures) == (7, 4)


def test_failures_older_than_the_window_no_longer_count() -> None:
    h = Harness(failures=None, failure_rate=0.5, window_s=10, min_calls=4)
    h.fail(3)  # below min_calls
    h.clock.advance(11)
    h.ok(3)
    h.fail(2)
    assert h.breaker.state is CLOSED  # 2 of 5 in the window (5 of 8 since the start)
    h.fail()
    assert h.breaker.state is OPEN  # 3 of 6
    assert (h.transitions[-1].window_calls, h.transitions[-1].window_failures) == (6, 3)


def test_closing_clears_the_window() -> None:
    h = Harness(failures=None, failure_rate=0.5, window_s=100, min_calls=2, cooldown_s=1)
    h.fail(2)
    assert h.breaker.state is OPEN
    h.clock.advance(1)
    h.ok(2)
    assert h.breaker.state is CLOSED
    h.fail()
    assert h.breaker.state is CLOSED  # 1 of 1: below min_calls, earlier failures forgotten


# --------------------------------------------------------------- deadlines and epochs


def test_a_call_still_running_at_its_deadline_counts_as_failed() -> None:
    h = Harness(failures=2, failure_rate=None)
    hung = [h.breaker.acquire(deadline=h.clock.now + 1) for _ in range(2)]
    h.clock.advance(1)
    error = h.rejected()  # the next call notices both overdue calls first: it fails fast
    assert h.breaker.state is OPEN
    assert "2 consecutive failures (last: no answer within its deadline)" in str(error)
    for permit in hung:  # their late answers change nothing
        h.breaker.succeeded(permit)
    assert h.breaker.state is OPEN


def test_a_hung_trial_call_opens_it_again_at_its_deadline() -> None:
    h = Harness(failures=1, failure_rate=None, cooldown_s=5)
    h.fail()
    h.clock.advance(5)
    h.breaker.acquire(deadline=h.clock.now + 2)
    h.clock.advance(2)
    h.rejected()  # noticed on the next call: open for another cool-down
    assert h.moves == [(CLOSED, OPEN), (OPEN, HALF), (HALF, OPEN)]
    assert h.transitions[-1].reason == "a trial call failed (no answer within its deadline)"


def test_outcomes_of_calls_admitted_before_a_transition_are_ignored() -> None:
    h = Harness(failures=2, failure_rate=None, cooldown_s=1, successes=1)
    slow = [h.breaker.acquire() for _ in range(3)]
    h.fail(2)
    assert h.breaker.state is OPEN
    h.breaker.succeeded(slow[0])  # admitted while closed: no probe
    assert h.breaker.state is OPEN
    h.clock.advance(1)
    trial = h.breaker.acquire()
    h.breaker.failed(slow[1])  # a stale failure does not reopen it
    h.breaker.succeeded(slow[2])  # nor does a stale success close it
    assert h.breaker.state is HALF
    h.breaker.succeeded(trial)
    assert h.breaker.state is CLOSED


def test_a_permit_is_settled_once() -> None:
    h = Harness(failures=2, failure_rate=None)
    permit = h.breaker.acquire()
    h.breaker.failed(permit)
    h.breaker.failed(permit)
    assert h.breaker.state is CLOSED


@pytest.mark.parametrize(
    ("error", "late", "counted"),
    [
        (GuardConnectionError("down"), False, True),
        (RuntimeError("CUDA error: an illegal memory access"), False, True),
        (InputError("bad turn"), False, False),  # the caller's mistake, not the backend's
        (ConfigurationError("misuse"), False, False),
        (asyncio.CancelledError(), False, False),  # cancelled: no news of the backend
        (asyncio.CancelledError(), True, True),  # cut short by its deadline: a timeout
    ],
)
def test_ended_counts_what_tells_of_the_backend(
    error: BaseException, late: bool, counted: bool
) -> None:
    h = Harness(failures=1, failure_rate=None)
    permit = h.breaker.acquire(deadline=h.clock.now + 1)
    if late:
        h.clock.advance(1)
    h.breaker.ended(permit, error)
    assert (h.breaker.state is OPEN) is counted


def test_many_settled_calls_with_deadlines_leave_no_backlog() -> None:
    h = Harness(failures=3, failure_rate=None)
    for _ in range(10_000):
        h.breaker.succeeded(h.breaker.acquire(deadline=h.clock.now + 30))
    assert len(h.breaker._deadlines) < 200  # settled entries are dropped as they pile up


# ------------------------------------------------------------------------- callbacks


def test_a_transition_callback_that_raises_frees_the_trial_slot() -> None:
    clock = Clock()
    raising = True

    def report(transition: BreakerTransition) -> None:
        if raising and transition.to_state is HALF:
            raise RuntimeError("audit down")

    breaker = CircuitBreaker(
        "guard",
        BreakerSettings(failures=1, failure_rate=None, cooldown_s=1, successes=1),
        on_transition=report,
        clock=clock,
    )
    breaker.failed(breaker.acquire())
    clock.advance(1)
    with pytest.raises(RuntimeError, match="audit down"):
        breaker.acquire()  # the transition happened; its report failed, loudly
    raising = False
    breaker.succeeded(breaker.acquire())  # the slot was not leaked
    assert breaker.state is CLOSED


# -------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"failures": None, "failure_rate": None}, "needs failures or failure_rate"),
        ({"failures": 0}, "failures must be at least 1"),
        ({"failure_rate": 1.5}, "failure_rate must be in (0, 1]"),
        ({"cooldown_s": 0.0}, "cooldown_s must be a positive number"),
        ({"window_s": float("inf")}, "window_s must be a positive number"),
        ({"probes": 0}, "probes must be at least 1"),
    ],
)
def test_bad_settings_raise_configuration_errors(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BreakerSettings(**settings)


POLICY = """\
version: 1
name: breaker-test
guard:
  backend: remote
  base_url: http://127.0.0.1:9/v1
  breaker:
{breaker}
"""


def policy_with(breaker: str) -> Policy:
    body = "\n".join("    " + line for line in breaker.strip().splitlines())
    return load_policy_text(POLICY.format(breaker=body), source="breaker.yaml")


def test_the_default_policy_turns_the_breakers_on() -> None:
    default = Policy.default().guard.breaker
    assert default.enabled
    assert (default.failures, default.failure_rate, default.window_s) == (5, 0.5, 30.0)
    assert (default.min_calls, default.cooldown_s, default.probes, default.successes) == (
        20,
        10.0,
        1,
        2,
    )


def test_policy_breaker_settings_are_read() -> None:
    config = policy_with("failures: 2\nfailure_rate: null\ncooldown_s: 1.5\nprobes: 3")
    breaker = config.guard.breaker
    assert (breaker.failures, breaker.failure_rate, breaker.cooldown_s, breaker.probes) == (
        2,
        None,
        1.5,
        3,
    )


@pytest.mark.parametrize(
    ("breaker", "line", "field", "message"),
    [
        ("failures: 0", 7, "guard.breaker.failures", "must be >= 1"),
        ("failure_rate: 2", 7, "guard.breaker.failure_rate", "must be <= 1"),
        ("cooldown_s: '10'", 7, "guard.breaker.cooldown_s", "number"),
        ("failures: null\nfailure_rate: null", 7, "guard.breaker.failures", "could never open"),
        ("failure_rate: null\nwindow_s: 5", 8, "guard.breaker.window_s", "only used with"),
        ("enabled: false\nprobes: 2", 8, "guard.breaker.probes", "only used when"),
        ("cooldown: 5", 7, "guard.breaker.cooldown", "cooldown_s"),
    ],
)
def test_bad_breaker_settings_are_located(
    breaker: str, line: int, field: str, message: str
) -> None:
    with pytest.raises(PolicyError) as info:
        policy_with(breaker)
    error = info.value
    assert (error.source, error.line, error.field) == ("breaker.yaml", line, field)
    assert message in str(error)


def test_reward_models_have_a_breaker_section_too() -> None:
    text = """\
version: 1
name: reward-breaker
reward:
  models: [{id: en, kind: remote, model: rm, base_url: "http://127.0.0.1:9"}]
  breaker: {failures: 1, cooldown_s: 2}
"""
    reward = load_policy_text(text).reward
    assert reward is not None
    assert (reward.breaker.failures, reward.breaker.cooldown_s) == (1, 2.0)


# -------------------------------------------------------------------------- wrappers


class Crashing:
    """A backend that fails until told otherwise, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = RuntimeError("the model crashed")
        self.inner = ScriptedClassifier()

    @property
    def model_id(self) -> str:
        return "crashing"

    def _run(self, result: Callable[[], Any]) -> Any:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return result()

    def classify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        return self._run(lambda: self.inner.classify(inputs))  # type: ignore[no-any-return]

    async def aclassify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        return self._run(lambda: self.inner.classify(inputs))  # type: ignore[no-any-return]

    def score(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        return self._run(lambda: [RewardScore(score=1.0) for _ in pairs])  # type: ignore[no-any-return]

    async def ascore(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        return self.score(pairs)


PROMPT = guard_inputs([{"role": "user", "content": "hi"}])


def test_a_crashing_local_classifier_trips_its_breaker() -> None:
    clock = Clock()
    backend = Crashing()
    wrapped = BreakerClassifier(
        backend,
        CircuitBreaker("guard", BreakerSettings(failures=2, cooldown_s=5), clock=clock),
    )
    assert wrapped.model_id == "crashing"
    for _ in range(2):
        with pytest.raises(RuntimeError):
            wrapped.classify(PROMPT)
    with pytest.raises(CircuitOpenError):
        wrapped.classify(PROMPT)
    assert backend.calls == 2  # failed fast: the backend was not called
    backend.error = None
    clock.advance(5)
    assert wrapped.classify(PROMPT)[0].is_safe
    assert asyncio.run(wrapped.aclassify(PROMPT))[0].is_safe
    assert wrapped.breaker.state is CLOSED


def test_a_scorer_behind_a_breaker_fails_fast_once_open() -> None:
    backend = Crashing()
    wrapped = BreakerScorer(
        backend, CircuitBreaker("reward:en", BreakerSettings(failures=1), clock=Clock())
    )
    with pytest.raises(RuntimeError):
        asyncio.run(wrapped.ascore([([{"role": "user", "content": "q"}], "a")]))
    with pytest.raises(CircuitOpenError, match="'reward:en' is open"):
        wrapped.score([([{"role": "user", "content": "q"}], "a")])
    assert backend.calls == 1


class Cancelled:
    """A backend whose call is cancelled after the fake clock moved past a deadline."""

    model_id = "cancelled"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def classify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        self.clock.advance(2)
        raise asyncio.CancelledError

    async def aclassify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        return self.classify(inputs)


@pytest.mark.parametrize("has_deadline", [True, False])
def test_the_wrapper_hands_the_running_checks_deadline_to_the_breaker(has_deadline: bool) -> None:
    clock = Clock()
    breaker = CircuitBreaker("guard", BreakerSettings(failures=1), clock=clock)
    wrapped = BreakerClassifier(Cancelled(clock), breaker)
    with (
        deadline.scope(clock.now + 1 if has_deadline else None),
        pytest.raises(asyncio.CancelledError),
    ):
        asyncio.run(wrapped.aclassify(PROMPT))
    # cut short after its deadline: a failure; without a deadline, no news of the backend
    assert (breaker.state is OPEN) is has_deadline
