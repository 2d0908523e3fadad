"""The two drivers, run directly: deadlines, inline checks, scoring, raced calls, streams.

Waits are bounded by events (a test that would hang fails after WAIT_S instead);
no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import signal
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from test_flow import SCRIPT, SHAPES, ask, chunk, completion, policy, stream_of, texts

from guardrail import deadline
from guardrail.classifiers.base import Conversation, moderate_many
from guardrail.errors import ConfigurationError, GuardTimeoutError
from guardrail.flow import (
    AsyncDriver,
    CheckPace,
    FlowSettings,
    SyncDriver,
    Trace,
    check_flow,
    completion_flow,
    stream_flow,
)
from guardrail.flow import sync_driver as sync_driver_module
from guardrail.flow.effects import (
    CallUpstream,
    Cancel,
    Classify,
    Flow,
    Handle,
    Job,
    ReadChunk,
    Score,
    Start,
    WaitFirst,
    await_job,
    run_job,
    start_job,
)
from guardrail.flow.sync_driver import INLINE_AFTER, INLINE_BELOW_S
from guardrail.reward.base import RewardScore
from guardrail.testing import ScriptedClassifier
from guardrail.types import Action, SafetyLevel, Stage, Verdict

WAIT_S = 5.0
HI = ask("hello")["messages"]


def verdicts(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
    return moderate_many(ScriptedClassifier(SCRIPT), conversations)


def warm_pace() -> CheckPace:
    pace = CheckPace()
    for _ in range(INLINE_AFTER):
        pace.record(0.0)
    return pace


@pytest.fixture
def pools() -> Iterator[tuple[concurrent.futures.Executor, concurrent.futures.Executor]]:
    checks = concurrent.futures.ThreadPoolExecutor(2)
    io = concurrent.futures.ThreadPoolExecutor(2)
    yield checks, io
    checks.shutdown(wait=True, cancel_futures=True)
    io.shutdown(wait=True, cancel_futures=True)


class Audits(list[Trace]):
    def __call__(self, trace: Trace) -> None:
        self.append(trace)


def sync_driver(
    pools: tuple[concurrent.futures.Executor, concurrent.futures.Executor],
    classify: Any = verdicts,
    upstream: Any = lambda params: completion("Fine."),
    **options: Any,
) -> tuple[SyncDriver, Audits]:
    audits = Audits()
    options.setdefault("timeout_s", WAIT_S)
    checks, io = pools
    return SyncDriver(classify, upstream, audits, checks=checks, io=io, **options), audits


def direct_check(settings: FlowSettings | None = None) -> Flow[Any]:
    return check_flow(settings or FlowSettings.of(policy()), Stage.PROMPT, HI, None, None)


# ---------------------------------------------------------------------- the pace


def test_a_check_at_the_handoff_threshold_is_not_fast() -> None:
    pace = CheckPace()
    for _ in range(INLINE_AFTER):
        pace.record(INLINE_BELOW_S)
    assert not pace.inline


def test_a_slow_check_restarts_the_streak_from_zero() -> None:
    pace = warm_pace()
    pace.record(1.0)
    for _ in range(INLINE_AFTER - 1):
        pace.record(0.0)
    assert not pace.inline
    pace.record(0.0)
    assert pace.inline


# ------------------------------------------------------------------- sync checks


def test_a_driver_without_a_pace_keeps_its_own(pools: Any) -> None:
    driver, audits = sync_driver(pools)
    assert driver.run(direct_check()).action is Action.ALLOW
    assert len(audits) == 1


def test_an_inline_check_runs_on_the_callers_thread_and_is_decided(pools: Any) -> None:
    threads: list[int] = []
    stages: list[Stage] = []

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        threads.append(threading.get_ident())
        stages.append(stage)
        return verdicts(stage, conversations)

    driver, _ = sync_driver(pools, classify, pace=warm_pace())
    flow = check_flow(
        FlowSettings.of(policy()), Stage.PROMPT, ask("a bomb")["messages"], None, None
    )
    assert driver.run(flow).rule_id == "block-unsafe-prompt"
    assert threads == [threading.get_ident()]
    assert stages == [Stage.PROMPT]


@pytest.mark.parametrize("warm", [False, True])
def test_a_failing_check_is_decided_by_the_failure_mode(pools: Any, warm: bool) -> None:
    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        raise RuntimeError("guard crashed")

    driver, _ = sync_driver(pools, classify, pace=warm_pace() if warm else CheckPace())
    decision = driver.run(direct_check())
    assert decision.rule_id == "failure"
    assert decision.error == "ClassifierError: the guard failed: RuntimeError: guard crashed"


@pytest.mark.parametrize("warm", [False, True])
def test_a_check_past_its_deadline_names_its_stage(pools: Any, warm: bool) -> None:
    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        time.sleep(0.3)
        return verdicts(stage, conversations)

    pace = warm_pace() if warm else CheckPace()
    driver, _ = sync_driver(pools, classify, timeout_s=0.05, pace=pace)
    decision = driver.run(direct_check())
    assert decision.action is Action.BLOCK
    assert decision.error == "GuardTimeoutError: prompt check exceeded its 0.05s deadline"


def test_sync_checks_are_judged_at_their_stage(pools: Any) -> None:
    stages: list[Stage] = []

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        stages.append(stage)
        return verdicts(stage, conversations)

    driver, _ = sync_driver(pools, classify)
    trace = Trace.begin("concurrent")
    driver.run(completion_flow(FlowSettings.of(policy()), trace, ask("hi"), SHAPES))
    assert stages == [Stage.PROMPT, Stage.RESPONSE]


def test_an_awaited_check_first_starts_the_calls_started_after_it(pools: Any) -> None:
    # The check waits for the upstream call: it must be running while the flow waits.
    called = threading.Event()

    def upstream(params: dict[str, Any]) -> Any:
        called.set()
        return completion("Fine.")

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        assert called.wait(WAIT_S)
        return verdicts(stage, conversations)

    def flow() -> Flow[tuple[list[Verdict], Any]]:
        check = yield from start_job(Classify(Stage.PROMPT, [(HI, None)]))
        call = yield from start_job(CallUpstream(ask("hi")))
        judged = yield from await_job(check)
        answer = yield from await_job(call)
        return judged, answer

    driver, _ = sync_driver(pools, classify, upstream)
    judged, answer = driver.run(flow())
    assert judged[0].stage is Stage.PROMPT
    assert answer.choices[0].message.content == "Fine."


class Unknown(Job[None]):
    pass


def test_an_unknown_job_is_named(pools: Any) -> None:
    driver, _ = sync_driver(pools)
    with pytest.raises(TypeError, match=r"^unexpected job <"):
        driver.run(start_job(Unknown()))


# ------------------------------------------------------------------- sync scores

REWARD = "reward: {models: [{id: r, kind: seqcls, model: /r}]}\n"


def test_sync_scores_run_on_a_worker_and_reach_the_trace(pools: Any) -> None:
    threads: list[int] = []

    def score(conversations: Sequence[Conversation]) -> list[RewardScore | None]:
        threads.append(threading.get_ident())
        return [RewardScore(score=0.5, model="r") for _ in conversations]

    driver, _ = sync_driver(pools, score=score, pace=warm_pace())
    trace = Trace.begin("concurrent")
    driver.run(completion_flow(FlowSettings.of(policy(REWARD)), trace, ask("hi"), SHAPES))
    assert [(c, s.score) for c, s, _ in trace.rewards] == [(0, 0.5)]
    assert threads
    assert threading.get_ident() not in threads


def test_sync_scoring_without_a_scorer_is_an_audited_reward_failure(pools: Any) -> None:
    driver, _ = sync_driver(pools)
    trace = Trace.begin("concurrent")
    driver.run(completion_flow(FlowSettings.of(policy(REWARD)), trace, ask("hi"), SHAPES))
    (where, error), *_ = trace.errors
    assert where == "reward"
    assert isinstance(error, ConfigurationError)
    assert str(error) == "no reward models are configured"


# ------------------------------------------------------------ sync raced calls


class Stream:
    """An upstream result that can be closed; reports its closing."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


def raced_blocked_prompt(
    pools: Any, result: Any, caplog: pytest.LogCaptureFixture
) -> tuple[threading.Event, Any]:
    """A concurrent call whose raced upstream call is still running when the prompt is blocked."""
    started, release = threading.Event(), threading.Event()

    def upstream(params: dict[str, Any]) -> Any:
        started.set()
        assert release.wait(WAIT_S)
        if isinstance(result, Exception):
            raise result
        return result

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        assert started.wait(WAIT_S)
        return verdicts(stage, conversations)

    driver, _ = sync_driver(pools, classify, upstream)
    settings = FlowSettings.of(policy("block: {behavior: message}\n"))
    with caplog.at_level(logging.ERROR):
        blocked = driver.run(
            completion_flow(settings, Trace.begin("concurrent"), ask("bomb"), SHAPES)
        )
    return release, blocked


def test_a_raced_stream_returned_after_a_block_is_closed(
    pools: Any, caplog: pytest.LogCaptureFixture
) -> None:
    stream = Stream()
    release, blocked = raced_blocked_prompt(pools, stream, caplog)
    assert blocked.choices[0].finish_reason == "content_filter"
    assert not stream.closed.is_set()
    release.set()
    assert stream.closed.wait(WAIT_S)


@pytest.mark.parametrize("result", [object(), ConnectionError("late failure")])
def test_an_abandoned_raced_call_ends_quietly(
    pools: Any, caplog: pytest.LogCaptureFixture, result: Any
) -> None:
    release, _ = raced_blocked_prompt(pools, result, caplog)
    with caplog.at_level(logging.ERROR):
        release.set()
        _, io = pools
        io.shutdown(wait=True)  # the abandoned call and its callbacks have run
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_an_instant_check_blocks_before_the_upstream_is_ever_called(pools: Any) -> None:
    calls: list[dict[str, Any]] = []

    def upstream(params: dict[str, Any]) -> Any:
        calls.append(params)
        return completion("Fine.")

    driver, audits = sync_driver(pools, upstream=upstream, pace=warm_pace())
    settings = FlowSettings.of(policy("block: {behavior: message}\n"))
    driver.run(completion_flow(settings, Trace.begin("concurrent"), ask("bomb"), SHAPES))
    assert calls == []
    assert len(audits) == 1


def test_a_queued_raced_call_is_dropped_before_it_runs(pools: Any) -> None:
    calls: list[dict[str, Any]] = []
    io = concurrent.futures.ThreadPoolExecutor(1)
    busy = threading.Event()
    io.submit(busy.wait, WAIT_S)  # the raced call queues behind this

    def upstream(params: dict[str, Any]) -> Any:
        calls.append(params)
        return completion("Fine.")

    checks, _ = pools
    driver = SyncDriver(verdicts, upstream, Audits(), timeout_s=WAIT_S, checks=checks, io=io)
    settings = FlowSettings.of(policy("block: {behavior: message}\n"))
    try:
        driver.run(completion_flow(settings, Trace.begin("concurrent"), ask("bomb"), SHAPES))
    finally:
        busy.set()
        io.shutdown(wait=True)
    assert calls == []


class AsyncClosing:
    """A result whose close() is a coroutine: a sync driver cannot await it."""

    async def close(self) -> None:
        raise AssertionError("never awaited")


def test_a_sync_driver_never_calls_an_async_close(
    pools: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        release, _ = raced_blocked_prompt(pools, AsyncClosing(), caplog)
        release.set()
        _, io = pools
        io.shutdown(wait=True)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []


# ------------------------------------------------------------------ sync streams


class OneShot:
    """An upstream stream that fails if it is read again after its end."""

    def __init__(self, chunks: Iterator[Any]) -> None:
        self.chunks = chunks
        self.ended = False
        self.closed = False

    def __iter__(self) -> OneShot:
        return self

    def __next__(self) -> Any:
        assert not self.ended, "read past the end of the stream"
        try:
            return next(self.chunks)
        except StopIteration:
            self.ended = True
            raise

    def close(self) -> None:
        self.closed = True


STREAMING = "streaming: {chunk_chars: 24}\nblock: {behavior: message}\n"


@pytest.mark.parametrize("warm", [False, True])
def test_a_sync_stream_ends_at_the_upstream_end(pools: Any, warm: bool) -> None:
    upstream = OneShot(stream_of("Hello there. ", "Bye now."))
    driver, audits = sync_driver(
        pools, upstream=lambda params: upstream, pace=warm_pace() if warm else CheckPace()
    )
    flow = stream_flow(FlowSettings.of(policy(STREAMING)), Trace.begin("s"), ask("hi"), SHAPES)
    assert texts(list(driver.stream(flow))) == "Hello there. Bye now."
    assert upstream.ended
    assert upstream.closed
    assert len(audits) == 1


@pytest.mark.parametrize("warm", [False, True])
def test_checked_text_is_released_before_the_next_chunk_arrives(pools: Any, warm: bool) -> None:
    seen_first = threading.Event()

    def pieces() -> Iterator[Any]:
        yield chunk("The weather is nice today. ")
        # The rest comes only once the caller has the first sentence.
        assert seen_first.wait(WAIT_S), "the checked sentence was held back"
        yield chunk("Bye.")
        yield chunk(None, finish="stop")

    driver, _ = sync_driver(
        pools, upstream=lambda params: pieces(), pace=warm_pace() if warm else CheckPace()
    )
    flow = stream_flow(FlowSettings.of(policy(STREAMING)), Trace.begin("s"), ask("hi"), SHAPES)
    got = []
    for piece in driver.stream(flow):
        got.append(piece)
        seen_first.set()
    assert texts(got) == "The weather is nice today. Bye."


def test_a_hung_check_times_out_while_the_upstream_stalls(pools: Any) -> None:
    closed = threading.Event()
    hang = threading.Event()

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        if stage is Stage.RESPONSE:
            hang.wait(WAIT_S)
        return verdicts(stage, conversations)

    class Stalling:
        def __init__(self) -> None:
            self.sent = False

        def __iter__(self) -> Stalling:
            return self

        def __next__(self) -> Any:
            if not self.sent:
                self.sent = True
                return chunk("The weather is nice today. ")
            assert closed.wait(WAIT_S), "the stream waited for the upstream, not the check"
            raise StopIteration

        def close(self) -> None:
            closed.set()

    driver, audits = sync_driver(pools, classify, upstream=lambda params: Stalling(), timeout_s=0.1)
    flow = stream_flow(FlowSettings.of(policy(STREAMING)), Trace.begin("s"), ask("hi"), SHAPES)
    try:
        got = list(driver.stream(flow))
    finally:
        hang.set()
    assert got[-1].choices[0].finish_reason == "content_filter"
    (trace,) = audits
    assert trace.outcomes[-1].decision.rule_id == "failure"


# ------------------------------------------- sync deadlines, queues, races, cancels


def judged_and_scored() -> Flow[tuple[list[Verdict], list[RewardScore | None]]]:
    judged = yield from run_job(Classify(Stage.PROMPT, [(HI, None)]))
    scored = yield from run_job(Score([(HI, None)]))
    return judged, scored


class DeadlineProbe(list[float | None]):
    """Records, for each call, the seconds left before the deadline the driver set for it."""

    def seen(self) -> None:
        current = deadline.current()
        self.append(None if current is None else current - time.monotonic())

    def classify(self, stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        self.seen()
        return verdicts(stage, conversations)

    def score(self, conversations: Sequence[Conversation]) -> list[RewardScore | None]:
        self.seen()
        return [None for _ in conversations]


@pytest.mark.parametrize("warm", [False, True])
def test_sync_checks_and_scores_run_under_their_deadline(pools: Any, warm: bool) -> None:
    probe = DeadlineProbe()
    pace = warm_pace() if warm else CheckPace()
    driver, _ = sync_driver(pools, probe.classify, score=probe.score, pace=pace)
    driver.run(judged_and_scored())
    assert len(probe) == 2
    assert all(left is not None and 0 < left <= WAIT_S for left in probe)
    assert deadline.current() is None  # restored on the caller's thread


@pytest.mark.parametrize("warm", [False, True])
def test_a_sync_driver_without_a_deadline_runs_checks_without_one(pools: Any, warm: bool) -> None:
    probe = DeadlineProbe()
    pace = warm_pace() if warm else CheckPace()
    driver, _ = sync_driver(pools, probe.classify, timeout_s=None, pace=pace)
    assert driver.run(direct_check()).action is Action.ALLOW
    assert probe == [None]


class RecordingPace(CheckPace):
    def __init__(self) -> None:
        super().__init__()
        self.took: list[float] = []

    def record(self, seconds: float) -> None:
        self.took.append(seconds)
        super().record(seconds)


def test_the_pace_is_told_how_long_the_check_took(pools: Any) -> None:
    pace = RecordingPace()
    driver, _ = sync_driver(pools, pace=pace)
    begun = time.perf_counter()
    driver.run(direct_check())
    whole = time.perf_counter() - begun
    assert len(pace.took) == 1
    assert 0 <= pace.took[0] <= whole  # a part of the call, never more


def test_a_sync_check_with_a_zero_deadline_names_it(pools: Any) -> None:
    release = threading.Event()

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        release.wait(WAIT_S)
        return verdicts(stage, conversations)

    driver, _ = sync_driver(pools, classify, timeout_s=0.0)
    try:
        decision = driver.run(direct_check())
    finally:
        release.set()
    assert decision.error == "GuardTimeoutError: prompt check exceeded its 0s deadline"


def test_a_sync_check_awaited_after_its_deadline_times_out_at_once(pools: Any) -> None:
    # The deadline counts from when the check started, not from when it is awaited.
    go = threading.Event()
    answer_soon = threading.Timer(0.5, go.set)

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        assert go.wait(WAIT_S)
        return verdicts(stage, conversations)

    def upstream(params: dict[str, Any]) -> Any:
        time.sleep(0.35)  # past the check's 0.3 s deadline
        return completion("Fine.")

    def flow() -> Flow[str]:
        check = yield from start_job(Classify(Stage.PROMPT, [(HI, None)]))
        yield from run_job(CallUpstream(ask("hi")))
        answer_soon.start()  # well within a deadline wrongly counted from now
        try:
            yield from await_job(check)
        except GuardTimeoutError as exc:
            return str(exc)
        return "answered"

    driver, _ = sync_driver(pools, classify, upstream, timeout_s=0.3)
    try:
        outcome = driver.run(flow())
    finally:
        answer_soon.cancel()
        go.set()
    assert outcome == "prompt check exceeded its 0.3s deadline"


def busy_pool() -> tuple[concurrent.futures.ThreadPoolExecutor, threading.Event]:
    """A one-worker pool whose worker is busy until the event is set."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    busy = threading.Event()
    pool.submit(busy.wait, WAIT_S)
    return pool, busy


def test_a_check_that_finds_no_free_worker_times_out_and_never_runs(
    pools: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_driver_module, "QUEUE_LIMIT_S", 0.05)
    stages: list[Stage] = []

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        stages.append(stage)
        return verdicts(stage, conversations)

    checks, busy = busy_pool()
    _, io = pools
    driver = SyncDriver(
        classify,
        lambda params: completion("Fine."),
        Audits(),
        timeout_s=WAIT_S,
        checks=checks,
        io=io,
    )
    try:
        decision = driver.run(direct_check())
    finally:
        busy.set()
        checks.shutdown(wait=True)
    assert decision.error == "GuardTimeoutError: no guard worker was free for 0.05s"
    assert stages == []  # the queued check was dropped


def test_a_cancelled_check_still_queued_never_runs(pools: Any) -> None:
    stages: list[Stage] = []

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        stages.append(stage)
        return verdicts(stage, conversations)

    def flow() -> Flow[str]:
        handle = yield from start_job(Classify(Stage.PROMPT, [(HI, None)]))
        yield Cancel(handle)
        return "cancelled"

    checks, busy = busy_pool()
    _, io = pools
    driver = SyncDriver(
        classify,
        lambda params: completion("Fine."),
        Audits(),
        timeout_s=WAIT_S,
        checks=checks,
        io=io,
    )
    try:
        assert driver.run(flow()) == "cancelled"
    finally:
        busy.set()
        checks.shutdown(wait=True)
    assert stages == []


def test_cancelling_a_check_that_ran_inline_is_harmless(pools: Any) -> None:
    threads: list[int] = []

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        threads.append(threading.get_ident())
        return verdicts(stage, conversations)

    def flow() -> Flow[str]:
        handle = yield from start_job(Classify(Stage.PROMPT, [(HI, None)]))
        yield Cancel(handle)
        return "cancelled"

    driver, _ = sync_driver(pools, classify, pace=warm_pace())
    assert driver.run(flow()) == "cancelled"
    assert threads == [threading.get_ident()]


def test_cancelling_an_unstarted_call_twice_is_harmless(pools: Any) -> None:
    calls: list[dict[str, Any]] = []

    def upstream(params: dict[str, Any]) -> Any:
        calls.append(params)
        return completion("Fine.")

    def flow() -> Flow[str]:
        handle = yield from start_job(CallUpstream(ask("hi")))
        yield Cancel(handle)
        yield Cancel(handle)
        return "cancelled"

    driver, _ = sync_driver(pools, upstream=upstream)
    assert driver.run(flow()) == "cancelled"
    assert calls == []


class Interrupt(BaseException):
    """Not an Exception: the driver lets it through, and the flow is abandoned."""


def test_an_interrupted_upstream_call_reaches_the_caller_unchanged(pools: Any) -> None:
    def upstream(params: dict[str, Any]) -> Any:
        raise Interrupt

    driver, _ = sync_driver(pools, upstream=upstream)
    # The call ran on the caller's thread; the abandoned flow's cancel of it is harmless.
    with pytest.raises(Interrupt):
        driver.run(run_job(CallUpstream(ask("hi"))))


def race(stream: Any, release: Any) -> Flow[tuple[str, Any]]:
    """Race a read against a check; then release the check and collect both."""
    check = yield from start_job(Classify(Stage.RESPONSE, [(HI, None)]))
    read = yield from start_job(ReadChunk(stream))
    first = yield WaitFirst(read, check)
    release()
    yield from await_job(check)
    got = yield from await_job(read)
    return first, got


def test_a_sync_race_answers_read_when_only_the_read_has_ended(pools: Any) -> None:
    release = threading.Event()

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        assert release.wait(WAIT_S)
        return verdicts(stage, conversations)

    driver, _ = sync_driver(pools, classify)
    try:
        assert driver.run(race(iter(["chunk"]), release.set)) == ("read", "chunk")
    finally:
        release.set()


def test_a_sync_race_with_a_finished_check_leaves_the_read_to_the_caller(pools: Any) -> None:
    threads: list[int] = []

    class Reads:
        def __iter__(self) -> Reads:
            return self

        def __next__(self) -> str:
            threads.append(threading.get_ident())
            return "chunk"

    def flow() -> Flow[tuple[str, Any]]:
        check: Handle[list[Verdict]] = yield from start_job(Classify(Stage.RESPONSE, [(HI, None)]))
        yield from await_job(check)  # on a worker, and done
        read = yield from start_job(ReadChunk(Reads()))
        first = yield WaitFirst(read, check)
        got = yield from await_job(read)
        return first, got

    driver, _ = sync_driver(pools)
    assert driver.run(flow()) == ("check", "chunk")
    assert threads == [threading.get_ident()]  # never handed to a worker


# ------------------------------------------------------------------------- async


def async_driver(
    classify: Any = None, upstream: Any = None, **options: Any
) -> tuple[AsyncDriver, Audits]:
    async def default_classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        return verdicts(stage, conversations)

    async def default_upstream(params: dict[str, Any]) -> Any:
        return completion("Fine.")

    audits = Audits()
    options.setdefault("timeout_s", WAIT_S)
    driver = AsyncDriver(
        classify or default_classify, upstream or default_upstream, audits, **options
    )
    return driver, audits


async def test_async_checks_are_judged_at_their_stage() -> None:
    stages: list[Stage] = []

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        stages.append(stage)
        return verdicts(stage, conversations)

    driver, _ = async_driver(classify)
    await driver.run(
        completion_flow(FlowSettings.of(policy()), Trace.begin("c"), ask("hi"), SHAPES)
    )
    assert stages == [Stage.PROMPT, Stage.RESPONSE]


async def test_an_async_upstream_may_answer_any_awaitable() -> None:
    # Not a coroutine: a future, as an upstream built on callbacks would hand back.
    def upstream(params: dict[str, Any]) -> Any:
        answered = asyncio.get_running_loop().create_future()
        answered.set_result(completion("From a future."))
        return answered

    driver, _ = async_driver(upstream=upstream)
    result = await driver.run(
        completion_flow(FlowSettings.of(policy()), Trace.begin("c"), ask("hi"), SHAPES)
    )
    assert result.choices[0].message.content == "From a future."


async def test_an_async_driver_without_a_deadline_runs_checks() -> None:
    driver, _ = async_driver(timeout_s=None)
    assert (await driver.run(direct_check())).action is Action.ALLOW


async def test_an_async_check_past_its_deadline_names_its_stage() -> None:
    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        await asyncio.sleep(0.3)
        return verdicts(stage, conversations)

    driver, _ = async_driver(classify, timeout_s=0.05)
    decision = await driver.run(direct_check())
    assert decision.error == "GuardTimeoutError: prompt check exceeded its 0.05s deadline"


async def test_an_async_upstream_call_is_not_held_to_the_check_deadline() -> None:
    async def upstream(params: dict[str, Any]) -> Any:
        await asyncio.sleep(0.2)
        return completion("Fine.")

    driver, _ = async_driver(upstream=upstream, timeout_s=0.1)
    trace = Trace.begin("sequential")
    settings = FlowSettings.of(policy("execution: {mode: sequential}\n"))
    result = await driver.run(completion_flow(settings, trace, ask("hi"), SHAPES))
    assert result.choices[0].message.content == "Fine."


async def test_an_async_upstream_failure_reaches_the_caller() -> None:
    async def upstream(params: dict[str, Any]) -> Any:
        raise ConnectionError("down")

    driver, audits = async_driver(upstream=upstream)
    with pytest.raises(ConnectionError, match="down"):
        await driver.run(
            completion_flow(FlowSettings.of(policy()), Trace.begin("c"), ask("hi"), SHAPES)
        )
    assert [where for where, _ in audits[0].errors] == ["upstream"]


async def test_async_scores_reach_the_trace() -> None:
    seen: list[int] = []

    async def score(conversations: Sequence[Conversation]) -> list[RewardScore | None]:
        seen.append(len(conversations))
        return [RewardScore(score=0.5, model="r") for _ in conversations]

    driver, _ = async_driver(score=score)
    trace = Trace.begin("c")
    await driver.run(completion_flow(FlowSettings.of(policy(REWARD)), trace, ask("hi"), SHAPES))
    assert seen == [1]
    assert [(c, s.score) for c, s, _ in trace.rewards] == [(0, 0.5)]


async def test_async_scoring_without_a_scorer_is_an_audited_reward_failure() -> None:
    driver, _ = async_driver()
    trace = Trace.begin("c")
    await driver.run(completion_flow(FlowSettings.of(policy(REWARD)), trace, ask("hi"), SHAPES))
    (where, error), *_ = trace.errors
    assert where == "reward"
    assert str(error) == "no reward models are configured"


async def test_an_unknown_job_is_named_by_the_async_driver() -> None:
    driver, _ = async_driver()
    with pytest.raises(TypeError, match=r"^unexpected job <"):
        await driver.run(start_job(Unknown()))


class AsyncStream:
    def __init__(self, chunks: AsyncIterator[Any]) -> None:
        self.chunks = chunks
        self.closed = asyncio.Event()

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        return await self.chunks.__anext__()

    async def close(self) -> None:
        self.closed.set()


@pytest.mark.parametrize("finished", [False, True])
async def test_an_async_raced_stream_is_closed_after_a_block(
    finished: bool, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()  # never set
    stream = AsyncStream(aiter_of())

    async def upstream(params: dict[str, Any]) -> Any:
        if not finished:
            with contextlib.suppress(asyncio.CancelledError):  # a call that ends anyway
                await release.wait()
        return stream

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        await asyncio.sleep(0)  # the raced call starts (and may finish) first
        await asyncio.sleep(0)
        return verdicts(stage, conversations)

    driver, _ = async_driver(classify, upstream)
    settings = FlowSettings.of(policy("block: {behavior: message}\n"))
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        result = await driver.run(completion_flow(settings, Trace.begin("c"), ask("bomb"), SHAPES))
        assert result.choices[0].finish_reason == "content_filter"
        await asyncio.wait_for(stream.closed.wait(), WAIT_S)
        for _ in range(3):  # the closing task's callbacks run
            await asyncio.sleep(0)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("finished", [True, False])
async def test_an_async_raced_answer_without_close_is_dropped_quietly_after_a_block(
    finished: bool, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()  # never set
    answers: list[Any] = []

    async def upstream(params: dict[str, Any]) -> Any:
        if not finished:
            with contextlib.suppress(asyncio.CancelledError):  # a call that ends anyway
                await release.wait()
        answers.append(completion("Too late."))  # a completion has no close()
        return answers[-1]

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        await asyncio.sleep(0)  # the raced call starts (and may finish) first
        await asyncio.sleep(0)
        return verdicts(stage, conversations)

    driver, _ = async_driver(classify, upstream)
    settings = FlowSettings.of(policy("block: {behavior: message}\n"))
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        result = await driver.run(completion_flow(settings, Trace.begin("c"), ask("bomb"), SHAPES))
        for _ in range(5):  # the raced call ends and its callbacks run
            await asyncio.sleep(0)
    assert result.choices[0].finish_reason == "content_filter"
    assert len(answers) == 1  # the raced call did answer, and its answer was dropped
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def aiter_of(*items: Any) -> AsyncIterator[Any]:
    for item in items:
        yield item


@pytest.mark.parametrize("result", [object(), ConnectionError("late failure")])
async def test_an_abandoned_async_call_ends_quietly(
    caplog: pytest.LogCaptureFixture, result: Any
) -> None:
    release = asyncio.Event()
    done = asyncio.Event()

    async def upstream(params: dict[str, Any]) -> Any:
        try:
            await release.wait()
        except asyncio.CancelledError:
            done.set()
            raise
        done.set()
        if isinstance(result, Exception):
            raise result
        return result

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        await asyncio.sleep(0)  # suspends: the raced upstream call starts meanwhile
        return verdicts(stage, conversations)

    driver, _ = async_driver(classify, upstream)
    settings = FlowSettings.of(policy("block: {behavior: message}\n"))
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        await driver.run(completion_flow(settings, Trace.begin("c"), ask("bomb"), SHAPES))
        release.set()
        await asyncio.wait_for(done.wait(), WAIT_S)
        for _ in range(3):
            await asyncio.sleep(0)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_async_stream_releases_checked_text_before_the_next_chunk() -> None:
    seen_first = asyncio.Event()

    async def pieces() -> AsyncIterator[Any]:
        yield chunk("The weather is nice today. ")
        await asyncio.wait_for(seen_first.wait(), WAIT_S)
        yield chunk("Bye.")
        yield chunk(None, finish="stop")

    async def upstream(params: dict[str, Any]) -> Any:
        return AsyncStream(pieces())

    driver, _ = async_driver(upstream=upstream)
    flow = stream_flow(FlowSettings.of(policy(STREAMING)), Trace.begin("s"), ask("hi"), SHAPES)
    got = []
    async for piece in driver.stream(flow):
        got.append(piece)
        seen_first.set()
    assert texts(got) == "The weather is nice today. Bye."


async def test_an_async_hung_check_times_out_while_the_upstream_stalls() -> None:
    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        if stage is Stage.RESPONSE:
            await asyncio.sleep(WAIT_S)
        return verdicts(stage, conversations)

    async def stalling() -> AsyncIterator[Any]:
        yield chunk("The weather is nice today. ")
        await asyncio.sleep(WAIT_S)
        raise AssertionError("the stream waited for the upstream, not the check")

    async def upstream(params: dict[str, Any]) -> Any:
        return AsyncStream(stalling())

    driver, audits = async_driver(classify, upstream, timeout_s=0.1)
    flow = stream_flow(FlowSettings.of(policy(STREAMING)), Trace.begin("s"), ask("hi"), SHAPES)
    got = [piece async for piece in driver.stream(flow)]
    assert got[-1].choices[0].finish_reason == "content_filter"
    assert audits[0].outcomes[-1].decision.rule_id == "failure"


@pytest.mark.parametrize("blocks", [True, False, None])
async def test_an_async_audit_write_runs_inline_only_when_it_never_blocks(
    blocks: bool | None,
) -> None:
    threads: list[int] = []
    driver = AsyncDriver(
        lambda stage, conversations: asyncio.sleep(0, verdicts(stage, conversations)),
        lambda params: asyncio.sleep(0, completion("Fine.")),
        lambda trace: threads.append(threading.get_ident()),
        timeout_s=WAIT_S,
        **({} if blocks is None else {"audit_blocks": blocks}),
    )
    await driver.run(direct_check())
    assert len(threads) == 1
    # By default a write may block: it goes to a worker thread.
    assert (threads[0] == threading.get_ident()) is (blocks is False)


async def test_an_async_check_answered_within_its_deadline_leaves_no_timer() -> None:
    loop = asyncio.get_running_loop()

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        await asyncio.sleep(0.01)
        return verdicts(stage, conversations)

    driver, _ = async_driver(classify, timeout_s=3600.0)
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    assert (await driver.run(direct_check())).action is Action.ALLOW
    live = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    assert len(live) <= before  # the deadline's timer was cancelled, not left to fire


async def test_a_cancelled_async_check_cancels_its_job_and_is_audited() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    cancelled: list[bool] = []

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return verdicts(stage, conversations)

    driver, audits = async_driver(classify)
    call = asyncio.ensure_future(driver.run(direct_check()))
    await asyncio.wait_for(started.wait(), WAIT_S)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert len(audits) == 1  # the abandoned check is still audited...
    for _ in range(100):  # ...and its job is cancelled by the flow's cleanup
        if cancelled:
            break
        await asyncio.sleep(0.001)
    assert cancelled == [True]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks need Python 3.12")
async def test_a_launched_async_job_that_never_suspends_is_done_when_launched() -> None:
    current: list[object] = []

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        current.append(asyncio.current_task())
        return verdicts(stage, conversations)

    driver, _ = async_driver(classify)
    handle = driver._start(Start(Classify(Stage.PROMPT, ())))  # type: ignore[attr-defined]
    assert current == []  # started, not yet running
    handle.launch()
    assert handle.task.done()
    assert current == [handle.task]  # it ran as its own task, not as the caller


async def test_an_async_job_awaited_first_runs_in_the_callers_task() -> None:
    tasks: list[object] = []

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        tasks.append(asyncio.current_task())
        return verdicts(stage, conversations)

    async def upstream(params: dict[str, Any]) -> Any:
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0)
        return completion("Fine.")

    driver, _ = async_driver(classify, upstream)
    caller = asyncio.current_task()
    result = await driver.run(
        completion_flow(FlowSettings.of(policy()), Trace.begin("c"), ask("hi"), SHAPES)
    )
    assert result.choices[0].message.content == "Fine."
    assert tasks == [caller, caller, caller]  # prompt check, upstream call, response check


async def test_an_inline_async_job_that_suspends_starts_the_others() -> None:
    # The prompt check waits for the raced upstream call to start: it must be
    # started as soon as the check suspends, or this deadlocks.
    called = asyncio.Event()
    tasks: list[object] = []

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        if stage is Stage.PROMPT:
            await asyncio.wait_for(called.wait(), WAIT_S)
        return verdicts(stage, conversations)

    async def upstream(params: dict[str, Any]) -> Any:
        tasks.append(asyncio.current_task())
        called.set()
        return completion("Fine.")

    driver, _ = async_driver(classify, upstream)
    caller = asyncio.current_task()
    flow = completion_flow(FlowSettings.of(policy()), Trace.begin("c"), ask("hi"), SHAPES)
    result = await asyncio.wait_for(driver.run(flow), WAIT_S)
    assert result.choices[0].message.content == "Fine."
    assert len(tasks) == 1
    assert tasks[0] is not caller  # raced in a task of its own


async def test_a_blocked_instant_prompt_check_never_calls_the_raced_upstream() -> None:
    calls: list[dict[str, Any]] = []

    async def upstream(params: dict[str, Any]) -> Any:
        calls.append(params)
        return completion("Fine.")

    driver, audits = async_driver(upstream=upstream)
    settings = FlowSettings.of(policy("block: {behavior: message}\n"))
    result = await driver.run(completion_flow(settings, Trace.begin("c"), ask("bomb"), SHAPES))
    assert result.choices[0].finish_reason == "content_filter"
    assert calls == []  # dropped before it ran
    assert len(audits) == 1


async def test_an_inline_async_check_that_swallows_its_cancellation_still_times_out() -> None:
    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        with contextlib.suppress(asyncio.CancelledError):  # carries on regardless...
            await asyncio.sleep(WAIT_S)
        return verdicts(stage, conversations)  # ...with an answer that is too late

    driver, _ = async_driver(classify, timeout_s=0.05)
    decision = await asyncio.wait_for(driver.run(direct_check()), WAIT_S)
    assert decision.error == "GuardTimeoutError: prompt check exceeded its 0.05s deadline"


async def test_an_inline_async_check_past_its_deadline_is_cancelled_once() -> None:
    cancels: list[str] = []

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        try:
            await asyncio.sleep(WAIT_S)
        except asyncio.CancelledError:
            cancels.append("cancelled")
        await asyncio.sleep(0.05)  # as for a task: its cleanup is not cancelled again
        cancels.append("cleaned up")
        return verdicts(stage, conversations)

    driver, _ = async_driver(classify, timeout_s=0.05)
    decision = await asyncio.wait_for(driver.run(direct_check()), WAIT_S)
    assert decision.error == "GuardTimeoutError: prompt check exceeded its 0.05s deadline"
    assert cancels == ["cancelled", "cleaned up"]


async def test_an_inline_check_that_only_yields_is_cancelled_at_its_deadline_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        for _ in range(10**9):  # bare yields: nothing to cancel but the next resumption
            await asyncio.sleep(0)

    driver, _ = async_driver(classify, timeout_s=0.02)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        decision = await asyncio.wait_for(driver.run(direct_check()), WAIT_S)
    assert decision.error == "GuardTimeoutError: prompt check exceeded its 0.02s deadline"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_inline_check_cancelled_between_yields_is_cancelled_once() -> None:
    cancels: list[str] = []

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        try:
            for _ in range(10**9):  # bare yields: cancelled at the next resumption
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            cancels.append("cancelled")
        for _ in range(3):
            await asyncio.sleep(0)  # as for a task: not cancelled a second time
        cancels.append("cleaned up")
        return verdicts(stage, conversations)

    driver, _ = async_driver(classify, timeout_s=0.02)
    decision = await asyncio.wait_for(driver.run(direct_check()), WAIT_S)
    assert decision.error == "GuardTimeoutError: prompt check exceeded its 0.02s deadline"
    assert cancels == ["cancelled", "cleaned up"]


async def test_a_job_that_raises_cancelled_error_itself_is_not_a_timeout() -> None:
    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        await asyncio.sleep(0)
        raise asyncio.CancelledError  # nobody cancelled it, no deadline passed

    driver, _ = async_driver(classify, timeout_s=WAIT_S, audit_blocks=False)
    with pytest.raises(asyncio.CancelledError):
        await driver.run(direct_check())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is 3.11+")
async def test_a_caller_cancelled_as_its_inline_check_times_out_stays_cancelled() -> None:
    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        try:
            await asyncio.sleep(WAIT_S)
        except asyncio.CancelledError:  # the deadline's cancellation...
            caller = asyncio.current_task()  # (inline: the caller's task)
            assert caller is not None
            caller.cancel()  # ...and the caller's own, at the same moment
            raise
        return verdicts(stage, conversations)

    driver, _ = async_driver(classify, timeout_s=0.02, audit_blocks=False)
    returned: list[Any] = []

    async def call() -> None:
        returned.append(await driver.run(direct_check()))

    task = asyncio.ensure_future(call())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT_S)
    assert returned == []  # cancelled, not turned into a timed-out decision


def checked_after_an_upstream_call() -> Flow[tuple[Any, Any]]:
    """Start a check, then wait for an upstream call first: the check runs as a task."""
    check = yield from start_job(Classify(Stage.PROMPT, [(HI, None)]))
    answer = yield from run_job(CallUpstream(ask("hi")))
    verdict = yield from await_job(check)
    return verdict, answer


async def suspending_upstream(params: dict[str, Any]) -> Any:
    await asyncio.sleep(0.01)
    return completion("Fine.")


async def test_a_check_run_as_a_task_without_a_deadline_is_waited_for() -> None:
    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        await asyncio.sleep(0.05)  # outlasts the upstream call
        return verdicts(stage, conversations)

    driver, _ = async_driver(classify, suspending_upstream, timeout_s=None)
    (verdict,), answer = await asyncio.wait_for(
        driver.run(checked_after_an_upstream_call()), WAIT_S
    )
    assert verdict.level is SafetyLevel.SAFE
    assert answer.choices[0].message.content == "Fine."


async def test_a_check_run_as_a_task_with_a_zero_deadline_names_it() -> None:
    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        await asyncio.Event().wait()

    driver, _ = async_driver(classify, suspending_upstream, timeout_s=0.0)
    with pytest.raises(GuardTimeoutError, match="exceeded its 0s deadline"):
        await asyncio.wait_for(driver.run(checked_after_an_upstream_call()), WAIT_S)


async def test_an_upstream_task_awaited_after_a_check_is_not_held_to_its_deadline() -> None:
    async def upstream(params: dict[str, Any]) -> Any:
        await asyncio.sleep(0.15)  # past the check deadline
        return completion("Fine.")

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        await asyncio.sleep(0)  # suspends: the upstream call becomes a task
        return verdicts(stage, conversations)

    def flow() -> Flow[Any]:
        call = yield from start_job(CallUpstream(ask("hi")))
        yield from run_job(Classify(Stage.PROMPT, [(HI, None)]))
        return (yield from await_job(call))

    driver, _ = async_driver(classify, upstream, timeout_s=0.05)
    answer = await asyncio.wait_for(driver.run(flow()), WAIT_S)
    assert answer.choices[0].message.content == "Fine."


async def test_a_race_against_a_check_already_answered_inline_answers_check() -> None:
    def flow() -> Flow[tuple[str, Any]]:
        check = yield from start_job(Classify(Stage.RESPONSE, [(HI, None)]))
        yield from await_job(check)  # instant: ran inline
        read = yield from start_job(ReadChunk(AsyncStream(aiter_of("chunk"))))
        first = yield WaitFirst(read, check)
        return first, (yield from await_job(read))

    driver, _ = async_driver()
    assert await asyncio.wait_for(driver.run(flow()), WAIT_S) == ("check", "chunk")


async def test_an_instant_async_check_that_overran_its_deadline_times_out() -> None:
    def slow_classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        time.sleep(0.06)  # blocks, never suspends

        async def answer() -> Any:
            return verdicts(stage, conversations)

        return answer()

    driver, _ = async_driver(slow_classify, timeout_s=0.05)
    decision = await asyncio.wait_for(driver.run(direct_check()), WAIT_S)
    assert decision.error == "GuardTimeoutError: prompt check exceeded its 0.05s deadline"


async def test_cancelling_the_caller_of_an_inline_check_is_not_a_timeout() -> None:
    started = asyncio.Event()

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        started.set()
        await asyncio.sleep(WAIT_S)
        return verdicts(stage, conversations)

    driver, audits = async_driver(classify, timeout_s=WAIT_S)
    call = asyncio.ensure_future(driver.run(direct_check()))
    await asyncio.wait_for(started.wait(), WAIT_S)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert len(audits) == 1
    # Cancelled by its caller, not timed out.
    assert not any(isinstance(error, GuardTimeoutError) for _, error in audits[0].errors)


async def test_async_checks_and_scores_run_under_their_deadline() -> None:
    probe = DeadlineProbe()

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        return probe.classify(stage, conversations)

    async def score(conversations: Sequence[Conversation]) -> list[RewardScore | None]:
        return probe.score(conversations)

    driver, _ = async_driver(classify, score=score)
    await asyncio.wait_for(driver.run(judged_and_scored()), WAIT_S)
    assert len(probe) == 2
    assert all(left is not None and 0 < left <= WAIT_S for left in probe)
    assert deadline.current() is None  # set only in the jobs' own contexts


async def test_an_async_check_with_a_zero_deadline_names_it() -> None:
    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        await asyncio.Event().wait()  # never answers: cancelled at the deadline

    driver, _ = async_driver(classify, timeout_s=0.0)
    decision = await asyncio.wait_for(driver.run(direct_check()), WAIT_S)
    assert decision.error == "GuardTimeoutError: prompt check exceeded its 0s deadline"


async def test_an_async_check_awaited_after_its_deadline_times_out_at_once() -> None:
    # The deadline counts from when the check started, not from when it is awaited.
    go = asyncio.Event()

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        await asyncio.wait_for(go.wait(), WAIT_S)
        return verdicts(stage, conversations)

    async def upstream(params: dict[str, Any]) -> Any:
        await asyncio.sleep(0.35)  # past the check's 0.3 s deadline
        return completion("Fine.")

    def flow() -> Flow[str]:
        check = yield from start_job(Classify(Stage.PROMPT, [(HI, None)]))
        yield from run_job(CallUpstream(ask("hi")))
        # Well within a deadline wrongly counted from now.
        answer_soon = asyncio.get_running_loop().call_later(0.5, go.set)
        try:
            yield from await_job(check)
        except GuardTimeoutError as exc:
            return str(exc)
        finally:
            answer_soon.cancel()
        return "answered"

    driver, _ = async_driver(classify, upstream, timeout_s=0.3)
    outcome = await asyncio.wait_for(driver.run(flow()), WAIT_S)
    assert outcome == "prompt check exceeded its 0.3s deadline"


async def test_an_async_race_answers_read_when_only_the_read_has_ended() -> None:
    release = asyncio.Event()

    async def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        await asyncio.wait_for(release.wait(), WAIT_S)
        return verdicts(stage, conversations)

    driver, _ = async_driver(classify)
    flow = race(AsyncStream(aiter_of("chunk")), release.set)
    assert await asyncio.wait_for(driver.run(flow), WAIT_S) == ("read", "chunk")


class _Interrupted(BaseException):
    """Stands for a KeyboardInterrupt delivered while the caller waits."""


def test_a_sync_caller_interrupted_during_a_run_drops_the_running_check(pools: Any) -> None:
    release, closed = threading.Event(), threading.Event()

    class Answer(list[Verdict]):
        def close(self) -> None:  # what a dropped job's late answer gets
            closed.set()

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        release.wait(WAIT_S)
        return Answer(verdicts(stage, conversations))

    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted

    driver, audits = sync_driver(pools, classify, pace=CheckPace())  # the check is pooled
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    try:
        with pytest.raises(_Interrupted):
            driver.run(direct_check())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert len(audits) == 1  # the abandoned call is still audited
    assert not closed.is_set()
    release.set()
    assert closed.wait(WAIT_S), "the interrupted run's check was not dropped"
