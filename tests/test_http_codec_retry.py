"""The async request path's codec and retry driver: orjson with json's answers, retries as before.

Bodies are encoded and replies decoded through orjson; whatever orjson refuses
takes the json path, so results and errors are json's. The async path makes the
first attempt itself and hands a failure to :meth:`RetryPolicy.aretry`, which
must retry exactly as :meth:`RetryPolicy.acall` does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from tenacity import RetryCallState

from guardrail.errors import GuardConnectionError, GuardHTTPError, RemoteGuardTimeoutError
from guardrail.http import RetryPolicy
from guardrail.http.aio import AIOHTTP_ERRORS, _compact_json, _encode
from guardrail.http.errors import Reply, mapped_transport_error

# ------------------------------------------------------------------------ codec


@pytest.mark.parametrize(
    "content",
    [
        b'{"choices": [{"message": {"content": "Safety: Safe"}}]}',
        '{"text": "caf\u00e9 \u2603 \U0001f600"}'.encode(),
        b'{"logprob": NaN, "top": -Infinity}',  # json reads these, orjson does not
        b'{"n": 1' + b"0" * 400 + b"}",  # beyond a double: json's integer
        b'{"s": "\\ud800"}',  # a lone surrogate escape
        '{"utf16": "x"}'.encode("utf-16"),  # with a BOM
        '{"utf16": "x"}'.encode("utf-16-le"),
    ],
    ids=["plain", "unicode", "nan", "huge-int", "surrogate", "utf-16-bom", "utf-16-le"],
)
def test_reply_json_reads_what_json_reads(content: bytes) -> None:
    decoded = Reply(200, {}, content).json()
    expected = json.loads(content)
    assert repr(decoded) == repr(expected)  # repr: NaN != NaN


def test_reply_json_reads_an_integer_beyond_64_bits_as_its_float() -> None:
    # orjson's reading; every number the backends read goes through float() anyway
    content = b'{"n": 123456789012345678901234567890}'
    assert Reply(200, {}, content).json()["n"] == float(json.loads(content)["n"])


@pytest.mark.parametrize("content", [b"", b"not json", b'{"a": 1', b"\xff\xfe\xff"])
def test_reply_json_raises_value_error_for_what_is_not_json(content: bytes) -> None:
    try:
        json.loads(content)
    except ValueError as exc:
        expected = type(exc)  # JSONDecodeError, or UnicodeDecodeError: both ValueErrors
    with pytest.raises(expected):
        Reply(200, {}, content).json()


@pytest.mark.parametrize(
    "body",
    [
        {"model": "guard", "messages": [{"role": "user", "content": "caf\u00e9 \u2603"}]},
        {"temperature": 0, "max_tokens": 32, "logprobs": True, "top_logprobs": 5},
        {1: "a non-str key"},  # orjson refuses: encoded by json as before
        {"n": 2**70},
    ],
    ids=["messages", "numbers", "int-key", "big-int"],
)
def test_encode_sends_the_json_of_the_compact_encoder(body: dict[object, object]) -> None:
    sent = _encode(body)  # type: ignore[arg-type]
    assert isinstance(sent, bytes)
    assert json.loads(sent) == json.loads(_compact_json(body))
    assert b": " not in sent  # compact
    assert b", " not in sent


def test_encode_fails_as_before_on_what_json_cannot_send() -> None:
    with pytest.raises(TypeError):
        _encode({"value": object()})


# --------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (aiohttp.ServerDisconnectedError(), GuardConnectionError),
        (ConnectionResetError(), GuardConnectionError),
        (asyncio.TimeoutError(), RemoteGuardTimeoutError),
        (aiohttp.ServerTimeoutError(), RemoteGuardTimeoutError),  # both: a timeout
    ],
)
def test_mapped_transport_error(raised: Exception, expected: type[Exception]) -> None:
    mapped = mapped_transport_error(raised, "guard server", "http://g/v1", 2.0, AIOHTTP_ERRORS)
    assert type(mapped) is expected
    assert "guard server http://g/v1" in str(mapped)


def test_other_errors_are_not_mapped() -> None:
    assert mapped_transport_error(ValueError("x"), "s", "u", 1.0, AIOHTTP_ERRORS) is None


# --------------------------------------------------------------------- retries


def _no_wait(state: RetryCallState) -> float:
    return 0.0


def _failing(errors: list[Exception], seen: list[int]) -> Callable[[], Awaitable[str]]:
    """An attempt raising ``errors`` in turn, then answering ``"ok"``; counts its calls."""

    async def attempt() -> str:
        seen.append(1)
        if errors:
            raise errors.pop(0)
        return "ok"

    return attempt


def _http_error(status: int) -> GuardHTTPError:
    return GuardHTTPError(f"HTTP {status}", url="u", status_code=status)


async def test_a_first_success_makes_one_attempt() -> None:
    seen: list[int] = []
    assert await RetryPolicy(2, _no_wait).acall(_failing([], seen)) == "ok"
    assert len(seen) == 1


async def test_aretry_retries_after_the_failed_first_attempt() -> None:
    seen: list[int] = []
    policy = RetryPolicy(2, _no_wait)
    attempt = _failing([_http_error(503)], seen)
    result = await policy.aretry(attempt, _http_error(502), started=time.monotonic())
    assert result == "ok"
    assert len(seen) == 2  # the first attempt was the caller's: two more here


async def test_aretry_gives_up_after_max_retries_with_the_last_error() -> None:
    seen: list[int] = []
    last = _http_error(503)
    policy = RetryPolicy(2, _no_wait)
    with pytest.raises(GuardHTTPError) as info:
        await policy.aretry(
            _failing([_http_error(502), last], seen), _http_error(500), started=time.monotonic()
        )
    assert info.value is last
    assert len(seen) == 2  # 1 + max_retries attempts in all


async def test_acall_and_aretry_make_the_same_attempts() -> None:
    waits: list[int] = []

    def wait(state: RetryCallState) -> float:
        waits.append(state.attempt_number)
        return 0.0

    seen: list[int] = []
    errors: list[Exception] = [_http_error(502), _http_error(503), _http_error(504)]
    with pytest.raises(GuardHTTPError) as info:
        await RetryPolicy(2, wait).acall(_failing(errors, seen))
    assert info.value.status_code == 504
    assert len(seen) == 3
    assert waits == [1, 2, 3]  # each failure's wait, then the stop (as tenacity numbers them)


@pytest.mark.parametrize(
    "error",
    [_http_error(400), ValueError("not a transport failure")],
    ids=["final-status", "other"],
)
async def test_aretry_raises_a_final_error_at_once(error: Exception) -> None:
    seen: list[int] = []
    with pytest.raises(type(error)) as info:
        await RetryPolicy(2, _no_wait).aretry(_failing([], seen), error, started=time.monotonic())
    assert info.value is error
    assert seen == []


async def test_aretry_starts_nothing_past_the_deadline() -> None:
    seen: list[int] = []
    error = RemoteGuardTimeoutError("slow", url="u")
    with pytest.raises(RemoteGuardTimeoutError) as info:
        await RetryPolicy(2, _no_wait).aretry(
            _failing([], seen), error, started=time.monotonic(), deadline=time.monotonic() - 1
        )
    assert info.value is error
    assert seen == []
