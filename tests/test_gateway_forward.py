"""The gateway's upstream client against a real loopback server: bodies, answers, failures."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from loopback import (
    Drop,
    JSONResponse,
    LoopbackServer,
    RawResponse,
    SSEResponse,
    Truncated,
    chat_completion,
    chat_completion_chunks,
    closed_port_url,
)
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage

from guardrail.gateway.forward import (
    ChatForwarder,
    ChunkStream,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    request_body,
)
from guardrail.gateway.shapes import error_for

PATH = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
WAIT_S = 10.0


def forwarder(url: str, **options: Any) -> ChatForwarder:
    options.setdefault("api_key", "sk-upstream")
    options.setdefault("timeout_s", WAIT_S)
    return ChatForwarder(url + "/v1", **options)


async def call(forward: ChatForwarder, **params: Any) -> Any:
    try:
        return await asyncio.wait_for(forward.create(**params), WAIT_S)
    finally:
        await forward.close()


def test_the_body_is_the_parameters_with_extra_body_merged() -> None:
    message = ChatCompletionMessage(role="assistant", content="Earlier answer.")
    body = request_body(
        {"model": "m", "messages": [*HI, message], "extra_body": {"top_k": 5}, "n": 2}
    )
    assert json.loads(body) == {
        "model": "m",
        "messages": [*HI, {"role": "assistant", "content": "Earlier answer."}],
        "top_k": 5,
        "n": 2,
    }


async def test_a_completion_is_posted_with_the_key_and_comes_back_typed() -> None:
    with LoopbackServer() as server:
        server.route("POST", PATH, JSONResponse(chat_completion("Hello there.")))
        result = await call(forwarder(server.url), model="m", messages=HI, temperature=0.5)
        (request,) = server.requests_to("POST", PATH)
    assert isinstance(result, ChatCompletion)
    assert result.choices[0].message.content == "Hello there."
    assert request.headers["authorization"] == "Bearer sk-upstream"
    assert request.json == {"model": "m", "messages": HI, "temperature": 0.5}


async def test_an_answer_that_does_not_validate_is_built_leniently() -> None:
    odd = chat_completion("Hi.")
    del odd["object"]  # servers omit fields the schema requires
    odd["choices"][0]["finish_reason"] = "eos"  # and use values it does not list
    with LoopbackServer() as server:
        server.route("POST", PATH, JSONResponse(odd))
        result = await call(forwarder(server.url), model="m", messages=HI)
    assert result.choices[0].message.content == "Hi."
    assert result.choices[0].finish_reason == "eos"


async def test_a_stream_yields_typed_chunks_until_done() -> None:
    with LoopbackServer() as server:
        server.route("POST", PATH, SSEResponse(chat_completion_chunks(["Hel", "lo"])))
        forward = forwarder(server.url)
        stream = await forward.create(model="m", messages=HI, stream=True)
        assert isinstance(stream, ChunkStream)
        chunks = [chunk async for chunk in stream]
        await forward.close()
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "Hello"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_an_error_event_mid_stream_raises() -> None:
    events = [*chat_completion_chunks(["Hel"])[:2], {"error": {"message": "overloaded"}}]
    with LoopbackServer() as server:
        server.route("POST", PATH, SSEResponse(events, done=False))
        forward = forwarder(server.url)
        stream = await forward.create(model="m", messages=HI, stream=True)
        got = [await stream.__anext__(), await stream.__anext__()]
        with pytest.raises(UpstreamStatusError, match="overloaded"):
            await stream.__anext__()
        await forward.close()
    assert len(got) == 2


async def test_closing_a_stream_early_stops_reading() -> None:
    with LoopbackServer() as server:
        pieces = chat_completion_chunks(["a"] * 50)
        server.route("POST", PATH, SSEResponse(pieces, chunk_delay=0.01))
        forward = forwarder(server.url)
        stream = await forward.create(model="m", messages=HI, stream=True)
        first = await stream.__anext__()
        await stream.close()
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        await forward.close()
    assert first.choices[0].delta.role == "assistant"


@pytest.mark.parametrize(
    ("status", "caller_status"), [(400, 400), (401, 401), (404, 404), (500, 502), (503, 502)]
)
async def test_an_error_status_keeps_the_upstreams_message(status: int, caller_status: int) -> None:
    body = {"error": {"message": "no such thing", "type": "invalid_request_error", "code": "x"}}
    with LoopbackServer() as server:
        server.route("POST", PATH, JSONResponse(body, status=status))
        with pytest.raises(UpstreamStatusError) as caught:
            await call(forwarder(server.url), model="m", messages=HI)
    assert caught.value.status_code == status
    error = error_for(caught.value)
    assert error.status == caller_status
    assert error.message == "upstream: no such thing"
    assert error.code == "x"


async def test_a_429_passes_its_retry_after_on() -> None:
    with LoopbackServer() as server:
        busy = JSONResponse({"error": {"message": "slow down"}}, 429, {"Retry-After": "7"})
        server.route("POST", PATH, busy)
        with pytest.raises(UpstreamStatusError) as caught:
            await call(forwarder(server.url), model="m", messages=HI)
    error = error_for(caught.value)
    assert (error.status, error.headers) == (429, (("retry-after", "7"),))


async def test_a_non_json_error_body_is_still_an_upstream_error() -> None:
    with LoopbackServer() as server:
        server.route("POST", PATH, RawResponse(b"<html>bad gateway</html>", status=502))
        with pytest.raises(UpstreamStatusError) as caught:
            await call(forwarder(server.url), model="m", messages=HI)
    assert error_for(caught.value).message == "upstream: <html>bad gateway</html>"


async def test_an_unreachable_upstream_is_a_connection_error() -> None:
    with pytest.raises(UpstreamConnectionError):
        await call(forwarder(closed_port_url()), model="m", messages=HI)
    assert error_for(UpstreamConnectionError("x")).status == 502


@pytest.mark.parametrize("answer", [Drop(), Truncated(b'{"id": "c', length=500)])
async def test_a_dropped_or_cut_answer_is_a_connection_error(answer: Any) -> None:
    with LoopbackServer() as server:
        server.route("POST", PATH, answer)
        with pytest.raises(UpstreamConnectionError):
            await call(forwarder(server.url), model="m", messages=HI)


async def test_a_slow_upstream_times_out() -> None:
    with LoopbackServer() as server:
        server.route("POST", PATH, JSONResponse(chat_completion("late"), delay=2.0))
        with pytest.raises(UpstreamTimeoutError):
            await call(forwarder(server.url, timeout_s=0.2), model="m", messages=HI)
    error = error_for(UpstreamTimeoutError("x"))
    assert (error.status, error.code) == (504, "timeout")


async def test_retryable_failures_are_retried_up_to_max_retries() -> None:
    busy = JSONResponse({"error": {"message": "busy"}}, status=503)
    with LoopbackServer() as server:
        server.route("POST", PATH, [busy, busy, JSONResponse(chat_completion("Done."))])
        result = await call(forwarder(server.url, max_retries=2), model="m", messages=HI)
        assert len(server.requests_to("POST", PATH)) == 3
    assert result.choices[0].message.content == "Done."


async def test_final_failures_and_exhausted_retries_are_not_retried_further() -> None:
    with LoopbackServer() as server:
        server.route("POST", PATH, JSONResponse({"error": {"message": "bad"}}, status=400))
        with pytest.raises(UpstreamStatusError):
            await call(forwarder(server.url, max_retries=3), model="m", messages=HI)
        assert len(server.requests_to("POST", PATH)) == 1
    with LoopbackServer() as server:
        server.route("POST", PATH, JSONResponse({"error": {"message": "busy"}}, status=503))
        with pytest.raises(UpstreamStatusError):
            await call(forwarder(server.url, max_retries=1), model="m", messages=HI)
        assert len(server.requests_to("POST", PATH)) == 2


async def test_no_key_sends_no_authorization() -> None:
    with LoopbackServer() as server:
        server.route("POST", PATH, JSONResponse(chat_completion("Hi.")))
        await call(forwarder(server.url, api_key=None), model="m", messages=HI)
        (request,) = server.requests_to("POST", PATH)
    assert "authorization" not in request.headers


def test_an_unmapped_failure_is_a_plain_500_logged_without_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "sk-" + "secret-123"  # a runtime value: source lines are logged, values not

    def fail() -> None:
        raise RuntimeError(f"Bearer {secret} leaked")

    try:
        fail()
    except RuntimeError as exc:
        with caplog.at_level("ERROR", logger="guardrail.gateway"):
            error = error_for(exc)
    assert (error.status, error.message, error.type) == (
        500,
        "internal gateway error",
        "server_error",
    )
    (logged,) = caplog.records
    text = logged.getMessage()
    assert "RuntimeError" in text
    assert "in fail" in text  # where it was raised
    assert "sk-secret" not in text
