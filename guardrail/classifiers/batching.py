"""Batches: concurrent callers share one model batch; one batch fans out to many calls.

Dynamic micro-batching (:class:`MicroBatcher`, the local models): threads calling
:meth:`MicroBatcher.call` and coroutines awaiting :meth:`MicroBatcher.acall` submit
requests (lists of items) to one queue. A single worker thread takes a request,
collects more for at most ``max_wait_ms`` until the batch holds ``max_batch_size``
items, runs them in one call of the batch function, and routes each request its own
slice of the results, in order.

- A lone caller does not pay the wait: the worker only waits for company when
  there is evidence of concurrency (more requests already queued, or the previous
  batch held several requests).
- An exception fails only the requests that cause it: a failing batch of several
  requests is re-run one request at a time, so co-batched callers still get results.
- Async callers await an asyncio future completed from the worker thread through
  ``loop.call_soon_threadsafe``; the event loop never blocks.
- The worker exits when idle and is restarted on demand; :meth:`close` fails every
  queued request and joins the worker.

Bounded fan-out (:func:`run_batch`, :func:`arun_batch`, the remote backends): one
call per item, at most ``max_concurrency`` at once on threads or tasks, results in
input order, the first failure raised with no partial results.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatchStats", "MicroBatcher", "arun_batch", "run_batch"]

T = TypeVar("T")
R = TypeVar("R")

_IDLE_EXIT_S = 1.0
"""An idle worker exits after this long, so an unused batcher holds no thread."""


@dataclass
class BatchStats:
    """Counters of what the batcher did (for tests and monitoring)."""

    batches: int = 0
    """Batch-function calls made for queued requests."""
    requests: int = 0
    """Requests served."""
    items: int = 0
    """Items served."""
    largest_batch: int = 0
    """Most requests that shared one batch."""
    shared_batches: int = 0
    """Batches that held more than one request."""


@dataclass
class _Request(Generic[T, R]):
    items: list[T]
    done: Callable[[list[R] | None, BaseException | None], None]


@dataclass
class _Closed:
    pass


class MicroBatcher(Generic[T, R]):
    """Group concurrent requests into batches for ``run_batch`` (see the module doc).

    ``run_batch`` receives at most ``max_batch_size`` items, except when a single
    request is larger (it is never split), and must return one result per item.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 2.0,
        name: str = "guardrail-batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._name = name
        self._queue: queue.SimpleQueue[_Request[T, R] | _Closed] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._last_shared = False
        self.stats = BatchStats()
        """What the batcher has done so far."""

    # ----------------------------------------------------------------- callers

    def call(self, items: Sequence[T]) -> list[R]:
        """Run ``items`` in a shared batch and wait for their results (thread-safe)."""
        if not items:
            return []
        future: Future[list[R]] = Future()

        def done(result: list[R] | None, error: BaseException | None) -> None:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result or [])

        self._submit(_Request(list(items), done))
        return future.result()

    async def acall(self, items: Sequence[T]) -> list[R]:
        """Async :meth:`call`: awaits the worker without blocking the event loop."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[R]] = loop.create_future()

        def settle(result: list[R] | None, error: BaseException | None) -> None:
            if future.done():  # the caller was cancelled: drop the result
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result or [])

        def done(result: list[R] | None, error: BaseException | None) -> None:
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, error)

        self._submit(_Request(list(items), done))
        return await future

    def close(self) -> None:
        """Stop the worker after its running batch; queued and later requests fail.

        They fail with ``RuntimeError``. Idempotent; returns once the worker has exited.
        """
        with self._lock:
            self._closed = True
            worker = self._worker
            self._queue.put(_Closed())
        if worker is not None and worker is not threading.current_thread():
            worker.join()
        self._fail_queued()

    # ------------------------------------------------------------------ worker

    def _submit(self, request: _Request[T, R]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.put(request)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._worker.start()

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Request):
                item.done(None, RuntimeError("the batcher is closed"))

    def _work(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=_IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:  # exit only if nothing arrived meanwhile (submit holds the lock)
                    if self._queue.empty():
                        self._worker = None
                        return
                continue
            if isinstance(first, _Closed):
                return
            batch, closing = self._collect(first)
            self._serve(batch)
            if closing:
                return

    def _collect(self, first: _Request[T, R]) -> tuple[list[_Request[T, R]], bool]:
        batch, size = [first], len(first.items)
        # Wait for company only with evidence of concurrency, so a lone caller runs at once.
        wait = self.max_wait_s if (self._last_shared or not self._queue.empty()) else 0.0
        deadline = time.monotonic() + wait
        while size < self.max_batch_size:
            try:
                remaining = deadline - time.monotonic()
                item = self._queue.get(timeout=remaining) if remaining > 0 else None
                if item is None:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Closed):
                return batch, True
            if size + len(item.items) > self.max_batch_size:
                self._serve(batch)  # keep arrival order: this one starts the next batch
                batch, size = [item], len(item.items)
                continue
            batch.append(item)
            size += len(item.items)
        return batch, False

    def _serve(self, batch: list[_Request[T, R]]) -> None:
        if self._closed:  # close() was called: fail what has not started, promptly
            for request in batch:
                request.done(None, RuntimeError("the batcher is closed"))
            return
        stats = self.stats
        stats.batches += 1
        stats.requests += len(batch)
        stats.items += sum(len(r.items) for r in batch)
        stats.largest_batch = max(stats.largest_batch, len(batch))
        stats.shared_batches += len(batch) > 1
        self._last_shared = len(batch) > 1
        try:
            results = self._run_batch([item for r in batch for item in r.items])
        except BaseException as exc:
            if len(batch) == 1 or not isinstance(exc, Exception):
                for request in batch:
                    request.done(None, exc)
                return
            for request in batch:  # isolate the failure to the requests that cause it
                self._serve_alone(request)
            return
        start = 0
        for request in batch:
            end = start + len(request.items)
            request.done(results[start:end], None)
            start = end

    def _serve_alone(self, request: _Request[T, R]) -> None:
        try:
            results = self._run_batch(list(request.items))
        except BaseException as exc:
            request.done(None, exc)
        else:
            request.done(results, None)


# ------------------------------------------------------------- fan-out batches


def run_batch(
    fn: Callable[[T], R], items: Sequence[T], max_concurrency: int, thread_name: str
) -> list[R]:
    """``[fn(item) for item in items]`` on up to ``max_concurrency`` threads, in order.

    A single item runs on the calling thread. On the first failure the items not
    yet started are cancelled, the running ones finish, and the error of the first
    failed item (in input order) is raised: no partial results.
    """
    if len(items) <= 1:
        return [fn(item) for item in items]
    pool = ThreadPoolExecutor(min(max_concurrency, len(items)), thread_name)
    try:
        futures = [pool.submit(fn, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for future in futures:
        error = None if future.cancelled() else future.exception()
        if error is not None:
            raise error
    return [future.result() for future in futures]


async def arun_batch(
    fn: Callable[[T], Awaitable[R]], items: Sequence[T], max_concurrency: int
) -> list[R]:
    """Async twin of :func:`run_batch`: ``max_concurrency`` tasks share the items, in order.

    A single item runs in the calling task. On the first failure (or if the caller
    is cancelled) every unfinished task is cancelled and awaited, then the first
    failed item's error (in input order) is raised: no partial results.
    """
    if len(items) <= 1:
        return [await fn(item) for item in items]
    # A few workers pulling the next item, rather than a task per item: the same
    # bound on concurrent calls at a fraction of the bookkeeping per item.
    results: list[R | None] = [None] * len(items)
    failed: dict[int, BaseException] = {}
    pending = iter(range(len(items)))

    async def work() -> None:
        for index in pending:
            try:
                results[index] = await fn(items[index])
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                failed[index] = exc
                raise

    workers = [asyncio.ensure_future(work()) for _ in range(min(max_concurrency, len(items)))]
    try:
        await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for worker in workers:
            worker.cancel()  # no-op for finished workers
        await asyncio.gather(*workers, return_exceptions=True)
    if failed:
        raise failed[min(failed)]
    if any(worker.cancelled() for worker in workers):  # an item's call was cancelled
        raise asyncio.CancelledError
    return results  # type: ignore[return-value]  # every item has its result
