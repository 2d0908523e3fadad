"""Every exception a guarded call raises names the audit record the call left.

A reviewer handed a failure from the application's logs finds its record by
``guardrail.request_id_of(error)``: a refused
call, a failed upstream, a block with ``behavior: raise``, sync and async,
streaming or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from loopback import JSONResponse, LoopbackServer

import guardrail
from guardrail import BlockedError, Guard, InputError
from guardrail.audit import read_records
from guardrail.policy import load_policy_text
from guardrail.report import name_record, request_id_of
from guardrail.testing import ScriptedClassifier

CHAT = "/v1/chat/completions"
SCRIPT = {"bomb": "Safety: Unsafe\nCategories: Violent"}


def policy(tmp_path: Path) -> Any:
    return load_policy_text(
        f"""
version: 1
name: ids
block: {{behavior: raise}}
audit: {{sink: jsonl, path: "{tmp_path / "audit.jsonl"}"}}
rules:
  - {{id: block-prompt, stage: prompt, when: {{levels: [Unsafe]}}, action: block}}
"""
    )


def only_record(tmp_path: Path) -> Any:
    (record,) = read_records(tmp_path / "audit.jsonl")
    return record


@pytest.fixture
def failing() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        body = {"error": {"message": "upstream down", "type": "server_error"}}
        srv.route("POST", CHAT, JSONResponse(body, 500))
        yield srv


def wrapped(srv: LoopbackServer, tmp_path: Path, *, aio: bool = False) -> Any:
    cls = openai.AsyncOpenAI if aio else openai.OpenAI
    raw = cls(base_url=srv.url + "/v1", api_key="k", max_retries=0)
    return guardrail.wrap(raw, guard=Guard(policy(tmp_path), classifier=ScriptedClassifier(SCRIPT)))


def assert_names_its_record(error: BaseException, tmp_path: Path) -> None:
    rid = request_id_of(error)
    assert rid is not None
    assert rid == only_record(tmp_path).request_id
    assert getattr(error, "guardrail_request_id", None) == rid
    # The message is the exception's own: no note is added (pytest.raises(match=) reads notes).
    assert not getattr(error, "__notes__", [])


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_failure_names_its_record(
    failing: LoopbackServer, tmp_path: Path, stream: bool
) -> None:
    client = wrapped(failing, tmp_path)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
    assert_names_its_record(caught.value, tmp_path)


def test_an_async_upstream_failure_names_its_record(
    failing: LoopbackServer, tmp_path: Path
) -> None:
    client = wrapped(failing, tmp_path, aio=True)

    async def call() -> None:
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )

    with pytest.raises(openai.InternalServerError) as caught:
        asyncio.run(call())
    assert_names_its_record(caught.value, tmp_path)


def test_a_refused_call_names_its_record(failing: LoopbackServer, tmp_path: Path) -> None:
    client = wrapped(failing, tmp_path)
    with pytest.raises(InputError) as caught:
        client.chat.completions.create(model="m", messages="not a list")
    assert_names_its_record(caught.value, tmp_path)
    assert failing.requests == []  # refused before the upstream


def test_a_raised_block_names_its_record_like_its_report(
    failing: LoopbackServer, tmp_path: Path
) -> None:
    client = wrapped(failing, tmp_path)
    with pytest.raises(BlockedError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "bomb"}])
    assert caught.value.report is not None
    assert request_id_of(caught.value) == caught.value.report.request_id
    assert_names_its_record(caught.value, tmp_path)


def test_a_direct_check_of_bad_input_names_its_record(tmp_path: Path) -> None:
    guard = Guard(policy(tmp_path), classifier=ScriptedClassifier(SCRIPT))
    with pytest.raises(InputError) as caught:
        guard.check_prompt(5)  # type: ignore[arg-type]
    assert_names_its_record(caught.value, tmp_path)


def test_the_first_name_wins_and_other_exceptions_have_none() -> None:
    error = ValueError("x")
    assert request_id_of(error) is None
    name_record(error, "a" * 32)
    name_record(error, "b" * 32)
    assert request_id_of(error) == "a" * 32


def test_an_exception_that_takes_no_attributes_is_left_alone() -> None:
    class SlottedError(Exception):
        __slots__ = ()

        def __setattr__(self, name: str, value: Any) -> None:
            raise AttributeError(name)

    error = SlottedError("x")
    name_record(error, "a" * 32)
    assert request_id_of(error) is None
    assert not getattr(error, "__notes__", [])
