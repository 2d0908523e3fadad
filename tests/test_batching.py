"""Dynamic micro-batching: the batcher alone, then on the tiny guard."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from guardrail.classifiers.batching import MicroBatcher
from guardrail.classifiers.local import LocalQwen3Guard
from guardrail.testing.tinyguard import EXAMPLES
from guardrail.types import Verdict


class Recorder:
    """A batch function that doubles numbers, records batch sizes and fails on request."""

    def __init__(self, delay: float = 0.01) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)  # like a model: callers pile up meanwhile
        if any(i < 0 for i in items):
            raise ValueError(f"negative input in {items}")
        return [2 * i for i in items]


def test_threads_get_their_own_results_in_shared_batches() -> None:
    run = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=8, max_wait_ms=5)

    def call(k: int) -> list[int]:
        return batcher.call([k, k + 1000])

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, range(64)))
    assert results == [[2 * k, 2 * (k + 1000)] for k in range(64)]
    assert all(len(b) <= 8 for b in run.batches)
    assert batcher.stats.shared_batches > 0
    assert batcher.stats.largest_batch > 1
    assert batcher.stats.requests == 64
    assert batcher.stats.items == 128
    assert len(run.threads) == 1  # one worker runs the model
    batcher.close()


async def test_async_callers_are_batched_and_loop_stays_free() -> None:
    run = Recorder(delay=0.05)
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=16, max_wait_ms=20)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    results = await asyncio.gather(*(batcher.acall([k]) for k in range(12)))
    task.cancel()
    assert results == [[2 * k] for k in range(12)]
    assert len(run.batches) < 12
    assert ticks >= 5  # the loop ran while the worker computed
    batcher.close()


def test_errors_reach_only_the_failing_callers() -> None:
    run = Recorder(delay=0.02)
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=16, max_wait_ms=20)
    outcomes: dict[int, object] = {}

    def call(k: int) -> None:
        try:
            outcomes[k] = batcher.call([-k if k % 3 == 0 else k])
        except ValueError as exc:
            outcomes[k] = exc

    threads = [threading.Thread(target=call, args=(k,)) for k in range(1, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(1, 10):
        if k % 3 == 0:
            assert isinstance(outcomes[k], ValueError)
        else:
            assert outcomes[k] == [2 * k]
    assert batcher.stats.shared_batches > 0  # the failure really happened inside a shared batch
    batcher.close()


def test_lone_caller_does_not_wait() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(
        lambda items: items, max_batch_size=16, max_wait_ms=500
    )
    started = time.perf_counter()
    for k in range(5):
        assert batcher.call([k]) == [k]
    assert time.perf_counter() - started < 0.5  # no 500 ms wait per call
    batcher.close()


def test_close_is_clean_and_final() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(Recorder(delay=0), max_batch_size=4)
    assert batcher.call([1]) == [2]
    worker = batcher._worker
    assert worker is not None
    batcher.close()
    assert not worker.is_alive()
    batcher.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        batcher.call([1])
    assert batcher.call([]) == []


def test_close_while_requests_wait() -> None:
    run = Recorder(delay=0.1)
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=1, max_wait_ms=0)
    outcomes: list[object] = []

    def call(k: int) -> None:
        try:
            outcomes.append(batcher.call([k]))
        except RuntimeError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    batcher.close()
    for t in threads:
        t.join(timeout=5)
        assert not t.is_alive()  # nobody hangs
    assert len(outcomes) == 4
    assert any(isinstance(o, RuntimeError) for o in outcomes)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda items: items, max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(lambda items: items, max_wait_ms=-1)


# ------------------------------------------------------------------ on the tiny guard


def _label(v: Verdict) -> tuple[object, ...]:
    return (v.stage, v.level, v.category, v.refusal)


@pytest.mark.slow
def test_guard_threads_and_async_callers_share_batches(tiny_guard_dir: Path) -> None:
    guard = LocalQwen3Guard(str(tiny_guard_dir), max_batch_size=8, max_wait_ms=20)
    expected = {ex.guard_input: (ex.stage, ex.level, ex.category, ex.refusal) for ex in EXAMPLES}

    def call(k: int) -> None:
        ex = EXAMPLES[k % len(EXAMPLES)]
        (verdict,) = guard.classify([ex.guard_input])
        assert _label(verdict) == expected[ex.guard_input]

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(call, range(len(EXAMPLES))))
    assert guard.batch_stats.shared_batches > 0

    async def many() -> list[list[Verdict]]:
        return await asyncio.gather(*(guard.aclassify([ex.guard_input]) for ex in EXAMPLES))

    before = guard.batch_stats.batches
    got = asyncio.run(many())
    assert [_label(v[0]) for v in got] == [expected[ex.guard_input] for ex in EXAMPLES]
    assert guard.batch_stats.batches - before < len(EXAMPLES)
    guard.close()
    with pytest.raises(RuntimeError, match="closed"):
        guard.classify([EXAMPLES[0].guard_input])
