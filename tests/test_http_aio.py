"""The async transport (aiohttp): sessions per event loop, their closing, error mapping.

Against the loopback server of tests/loopback.py; the remote guard's behaviour on
both paths is tests/test_remote_guard.py's, its faults tests/test_faults.py's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import threading
import warnings
from collections.abc import Iterator

import aiohttp
import httpx
import pytest
from faultkit import remote_policy
from loopback import Drop, JSONResponse, LoopbackServer, Truncated, chat_completion
from tenacity import wait_none

from guardrail import Guard
from guardrail.audit import NullSink
from guardrail.classifiers.batching import arun_batch
from guardrail.classifiers.remote import RemoteQwen3Guard
from guardrail.errors import GuardConnectionError, GuardHTTPError, RemoteGuardTimeoutError
from guardrail.http import StatusError, transport_errors
from guardrail.http.aio import AIOHTTP_ERRORS
from guardrail.qwen3guard import GuardInput, guard_inputs
from guardrail.reward.remote import RemoteRewardScorer
from guardrail.types import Action, SafetyLevel

CHAT = "/v1/chat/completions"
PAIR_MESSAGES = [{"role": "user", "content": "Plan a picnic"}]
UNSAFE = "Safety: Unsafe\nCategories: Violent"


def prompt(text: str = "How do I hurt someone?") -> GuardInput:
    return guard_inputs([{"role": "user", "content": text}])[0]


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        srv.route("POST", CHAT, JSONResponse(chat_completion(UNSAFE)))
        yield srv


def guard_for(server: LoopbackServer, **kwargs: object) -> RemoteQwen3Guard:
    kwargs.setdefault("retry_wait", wait_none())
    return RemoteQwen3Guard(f"{server.url}/v1", **kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def nothing_left_unclosed() -> Iterator[None]:
    """Fail if aiohttp warns of a session or connector collected unclosed, within the block."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    assert [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []


async def classify_once(guard: RemoteQwen3Guard) -> SafetyLevel:
    [verdict] = await guard.aclassify([prompt()])
    return verdict.level


# ------------------------------------------------------------------ sessions


def test_one_guard_serves_one_event_loop_after_another(server: LoopbackServer) -> None:
    def use() -> list[SafetyLevel]:
        guard = guard_for(server)
        levels = [asyncio.run(classify_once(guard)) for _ in range(3)]  # a new loop each time
        guard.close()  # e.g. a sync `with` around asyncio.run()
        return levels

    with nothing_left_unclosed():  # the finished loops' sessions were closed
        levels = use()
    assert levels == [SafetyLevel.UNSAFE] * 3
    # pooled connections belong to their loop: each loop opened its own
    assert len({r.client for r in server.requests_to("POST", CHAT)}) == 3


def test_loops_running_at_once_in_two_threads(server: LoopbackServer) -> None:
    with nothing_left_unclosed():
        levels, errors = _two_threads(server)
    assert errors == []
    assert levels == [SafetyLevel.UNSAFE] * 6


def _two_threads(server: LoopbackServer) -> tuple[list[SafetyLevel], list[BaseException]]:
    guard = guard_for(server, max_concurrency=2)
    started = threading.Barrier(2, timeout=10)
    levels: list[SafetyLevel] = []
    errors: list[BaseException] = []

    async def several() -> None:
        started.wait()
        for _ in range(3):
            levels.append(await classify_once(guard))

    def run() -> None:
        try:
            asyncio.run(several())
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    guard.close()
    return levels, errors


async def test_aclose_closes_the_session_and_a_later_call_opens_a_new_one(
    server: LoopbackServer,
) -> None:
    async def use() -> None:
        guard = guard_for(server)
        assert await classify_once(guard) is SafetyLevel.UNSAFE
        await guard.aclose()
        assert await classify_once(guard) is SafetyLevel.UNSAFE
        await guard.aclose()

    with nothing_left_unclosed():
        await use()
    first, second = server.requests_to("POST", CHAT)
    assert first.client != second.client  # the first connection was closed with its session


async def test_sync_close_inside_a_running_loop_closes_its_session(
    server: LoopbackServer,
) -> None:
    async def use() -> None:
        guard = guard_for(server)
        await classify_once(guard)
        guard.close()  # e.g. a sync context manager exited in a coroutine

    with nothing_left_unclosed():
        await use()
        await asyncio.sleep(0.05)  # the close runs on this loop


async def test_an_injected_session_is_used_and_left_open(server: LoopbackServer) -> None:
    seen: list[str] = []

    async def on_start(
        session: object, context: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        seen.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        async with guard_for(server, async_http_client=session) as guard:
            assert await classify_once(guard) is SafetyLevel.UNSAFE
        assert not session.closed
    assert seen == [f"{server.url}{CHAT}"]


async def test_connections_are_bounded_by_max_concurrency(server: LoopbackServer) -> None:
    server.route("POST", CHAT, JSONResponse(chat_completion(UNSAFE), delay=0.05))
    async with guard_for(server, max_concurrency=2) as guard:
        # two batches at once: each is bounded by its own workers, the pool by its limit
        results = await asyncio.gather(*(guard.aclassify([prompt()] * 3) for _ in range(2)))
    assert [len(r) for r in results] == [3, 3]
    assert len({r.client for r in server.requests_to("POST", CHAT)}) <= 2


async def test_url_credentials_and_query_on_the_async_path(server: LoopbackServer) -> None:
    server.route("POST", CHAT, JSONResponse({}, status=403))
    url = server.url.replace("http://", "http://user:pw-hidden-1@") + "/v1/?key=q-hidden-2"
    async with RemoteQwen3Guard(url, api_key="k-hidden-3") as guard:
        with pytest.raises(GuardHTTPError) as info:
            await guard.aclassify([prompt()])
    assert "hidden" not in str(info.value)
    assert isinstance(info.value.__cause__, StatusError)
    assert info.value.__cause__.response.status_code == 403
    [request] = server.requests_to("POST", CHAT)
    assert request.query == {"key": ["q-hidden-2"]}
    # as httpx does on the sync path: credentials in the URL are sent as basic auth
    expected = base64.b64encode(b"user:pw-hidden-1").decode()
    assert request.headers["authorization"] == f"Basic {expected}"


async def test_the_api_key_is_sent_as_a_bearer_token(server: LoopbackServer) -> None:
    async with guard_for(server, api_key="sk-test-key") as guard:
        await classify_once(guard)
    [request] = server.requests_to("POST", CHAT)
    assert request.headers["authorization"] == "Bearer sk-test-key"
    assert request.headers["content-type"] == "application/json"
    assert request.json["messages"] == [{"role": "user", "content": "How do I hurt someone?"}]


async def test_the_reward_scorer_posts_through_aiohttp_too() -> None:
    with LoopbackServer() as srv:
        srv.route("POST", "/pooling", JSONResponse({"data": [{"data": [1.5]}]}))
        async with RemoteRewardScorer(srv.url, model="rm", retry_wait=wait_none()) as scorer:
            [score] = await scorer.ascore([(PAIR_MESSAGES, "Bring sandwiches.")])
            srv.route("POST", "/pooling", JSONResponse({"error": "no"}, status=400))
            with pytest.raises(GuardHTTPError, match=r"reward server .* HTTP 400: no"):
                await scorer.ascore([(PAIR_MESSAGES, "Bring sandwiches.")])
    assert score.score == 1.5


# ----------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (aiohttp.ServerDisconnectedError(), GuardConnectionError),
        (aiohttp.ClientPayloadError("Response payload is not completed"), GuardConnectionError),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), GuardConnectionError),
        (ConnectionResetError(104, "Connection reset by peer"), GuardConnectionError),
        (
            aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
            RemoteGuardTimeoutError,
        ),
        (aiohttp.ConnectionTimeoutError(), RemoteGuardTimeoutError),
        (asyncio.TimeoutError(), RemoteGuardTimeoutError),
    ],
)
def test_aiohttp_failures_map_onto_the_guard_errors(
    raised: BaseException, expected: type[Exception]
) -> None:
    with (
        pytest.raises(expected) as info,
        transport_errors("guard server", "http://g/v1", 2.0, AIOHTTP_ERRORS),
    ):
        raise raised
    assert info.value.__cause__ is raised
    assert "guard server http://g/v1" in str(info.value)


def test_cancellation_is_not_mapped() -> None:
    with (
        pytest.raises(asyncio.CancelledError),
        transport_errors("guard server", "u", 1.0, AIOHTTP_ERRORS),
    ):
        raise asyncio.CancelledError


@pytest.mark.parametrize(
    ("response", "error", "cause"),
    [
        (Drop(), GuardConnectionError, aiohttp.ClientError),
        (Truncated('{"choices": [{"message": '), GuardConnectionError, aiohttp.ClientPayloadError),
        (
            JSONResponse(chat_completion(UNSAFE), delay=5),
            RemoteGuardTimeoutError,
            asyncio.TimeoutError,
        ),
    ],
    ids=["drop", "cut-mid-body", "no-answer"],
)
async def test_a_failing_server_surfaces_as_the_guard_error(
    server: LoopbackServer, response: object, error: type[Exception], cause: type[BaseException]
) -> None:
    server.route("POST", CHAT, response)
    async with guard_for(server, timeout=0.2, max_retries=1) as guard:
        with pytest.raises(error) as info:
            await guard.aclassify([prompt()])
    assert isinstance(info.value.__cause__, cause)
    assert len(server.requests_to("POST", CHAT)) == 2  # retried once


async def test_an_injected_httpx_client_still_works(server: LoopbackServer) -> None:
    async with httpx.AsyncClient() as client, guard_for(server, async_http_client=client) as guard:
        assert await classify_once(guard) is SafetyLevel.UNSAFE


# ------------------------------------------------------------- arun_batch


async def test_arun_batch_keeps_order_and_bounds_concurrency() -> None:
    running, most = 0, 0

    async def one(item: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (item % 3))
        running -= 1
        return item * 10

    assert await arun_batch(one, list(range(20)), 4) == [i * 10 for i in range(20)]
    assert most == 4


async def test_arun_batch_raises_the_first_failed_item_and_cancels_the_rest() -> None:
    cancelled: list[int] = []

    async def one(item: int) -> int:
        try:
            if item in (3, 1):
                await asyncio.sleep(0.01 if item == 1 else 0)  # item 3 fails first
                raise ValueError(f"item {item}")
            await asyncio.sleep(10 if item == 0 else 0)
        except asyncio.CancelledError:
            cancelled.append(item)
            raise
        return item

    with pytest.raises(ValueError, match="item 3"):
        await arun_batch(one, list(range(8)), 4)
    assert 0 in cancelled  # the long call was cancelled, not waited for


async def test_arun_batch_reports_the_earliest_failed_item_in_input_order() -> None:
    async def one(item: int) -> int:
        await asyncio.sleep(0)
        raise ValueError(f"item {item}")

    with pytest.raises(ValueError, match="item 0"):
        await arun_batch(one, list(range(4)), 4)


async def test_arun_batch_runs_a_single_item_in_the_calling_task() -> None:
    caller = asyncio.current_task()

    async def one(item: int) -> bool:
        return asyncio.current_task() is caller

    assert await arun_batch(one, [1], 4) == [True]
    assert await arun_batch(one, [], 4) == []


async def test_arun_batch_an_item_cancelled_from_inside_cancels_the_batch() -> None:
    async def one(item: int) -> int:
        if item == 2:
            raise asyncio.CancelledError
        return item

    with pytest.raises(asyncio.CancelledError):
        await arun_batch(one, list(range(4)), 2)


def test_a_guard_closes_the_remote_guard_it_built(server: LoopbackServer) -> None:
    def use() -> bool:
        with Guard(remote_policy(f"{server.url}/v1"), sink=NullSink()) as guard:
            decision = asyncio.run(guard.acheck_prompt([{"role": "user", "content": "hi"}]))
        return decision.action is Action.BLOCK

    with nothing_left_unclosed():  # its session was closed with the guard
        blocked = use()
    assert blocked  # the server judges every prompt Unsafe
    assert len(server.requests_to("POST", CHAT)) == 1
