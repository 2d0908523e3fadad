"""Echoed secrets: an API key a server echoes back lands nowhere.

Servers quote what they were sent: a proxy answering 401 repeats the bearer
token, a misconfigured guard server answers with its request. The keys of the
upstream (the wrapped client's ``api_key``) and of the guard server must then
appear in none of: the exception the caller gets (its ``str`` and ``repr``, and
those of the exceptions it chains), the decision, the audit file's bytes, or
the structlog events of a ``logger`` audit sink. Real ``openai`` clients, a
real remote guard, one loopback server playing both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from loopback import (
    JSONResponse,
    LoopbackServer,
    Request,
    SSEResponse,
    chat_completion,
    chat_completion_chunks,
)
from structlog.testing import capture_logs

import guardrail
from guardrail import Guard
from guardrail.classifiers.base import moderate
from guardrail.classifiers.remote import RemoteQwen3Guard
from guardrail.errors import GuardHTTPError, VerdictParseError
from guardrail.http import error_snippet
from guardrail.policy import load_policy_text
from guardrail.reward import RemoteRewardScorer
from guardrail.secrets import MASK, Masker, mask_exception, mask_secrets
from guardrail.testing import ScriptedClassifier

UPSTREAM_KEY = "sk-upstream-7f3a9c1e5b2d8f4a"
GUARD_KEY = "gk-guard-2b8e4d6f1a3c5e7b"
REWARD_KEY = "rk-reward-9d1f3b5a7c2e4f6a"
SECRETS = (UPSTREAM_KEY, GUARD_KEY, REWARD_KEY)
GUARD_PATH = "/guard/v1/chat/completions"
UPSTREAM_PATH = "/v1/chat/completions"

POLICY = """
version: 1
name: secrets-test
execution: {{timeout_s: 5}}
block: {{behavior: {behavior}}}
audit: {audit}
rules:
  - id: block-unsafe
    stage: prompt
    when: {{levels: [Unsafe]}}
    action: block
"""


# ----------------------------------------------------------------------- Masker


def test_masker_masks_known_keys_bearer_tokens_and_url_userinfo() -> None:
    mask = Masker([UPSTREAM_KEY, None, "short"])
    text = (
        f"Incorrect API key provided: {UPSTREAM_KEY}. "
        "Authorization: Bearer some.other-token_1 "
        "url https://alice:s3cret@example.com:8000/v1?x=1 and http://host/a@b"
    )
    assert mask(text) == (
        f"Incorrect API key provided: {MASK}. "
        f"Authorization: Bearer {MASK} "
        f"url https://{MASK}@example.com:8000/v1?x=1 and http://host/a@b"
    )
    assert mask("nothing secret here") == "nothing secret here"
    assert mask_secrets(f"x{UPSTREAM_KEY}x", [UPSTREAM_KEY]) == f"x{MASK}x"


def test_short_keys_are_not_masked_as_bare_text_but_their_bearer_form_is() -> None:
    mask = Masker(["EMPTY", "x"])
    assert mask.secrets == ()
    assert mask("EMPTY x Bearer EMPTY") == f"EMPTY x Bearer {MASK}"


def test_a_key_containing_another_is_masked_whole() -> None:
    inner, outer = "abcdefgh1234", "zz-abcdefgh1234-zz"
    assert Masker([inner, outer])(f"[{outer}] [{inner}]") == f"[{MASK}] [{MASK}]"


def test_masker_never_shows_its_secrets_and_extends_without_mutating() -> None:
    mask = Masker([GUARD_KEY])
    assert GUARD_KEY not in repr(mask)
    both = mask.with_secrets(UPSTREAM_KEY)
    assert mask(UPSTREAM_KEY) == UPSTREAM_KEY  # unchanged
    assert both(f"{GUARD_KEY} {UPSTREAM_KEY}") == f"{MASK} {MASK}"
    assert mask.with_secrets(GUARD_KEY, None) is mask


def test_mask_exception_keeps_type_and_identity_and_masks_the_chain() -> None:
    request = httpx.Request("POST", "http://upstream/v1/chat/completions")
    error = openai.AuthenticationError(
        f"Error code: 401 - {{'error': {{'message': 'bad key {UPSTREAM_KEY}'}}}}",
        response=httpx.Response(401, request=request),
        body={"error": {"message": f"bad key {UPSTREAM_KEY}"}},
    )
    error.__cause__ = ValueError(f"Bearer {UPSTREAM_KEY}")
    assert mask_exception(error, Masker([UPSTREAM_KEY])) is error
    assert isinstance(error, openai.AuthenticationError)
    for text in (str(error), repr(error), error.message, str(error.body), str(error.__cause__)):
        assert UPSTREAM_KEY not in text
    assert error.body == {"error": {"message": f"bad key {MASK}"}}


def test_guard_server_error_snippets_mask_echoed_credentials() -> None:
    body = {"error": {"message": f"denied: Bearer {GUARD_KEY}, key {GUARD_KEY}"}}
    response = httpx.Response(401, json=body)
    snippet = error_snippet(response, GUARD_KEY)
    assert GUARD_KEY not in snippet
    assert snippet == f"denied: Bearer {MASK}, key {MASK}"


# ------------------------------------------------------------ through the client


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


def echo(request: Request) -> str:
    """What a careless server says back: the header, and the key alone."""
    header = request.headers.get("authorization", "")
    return f"key {header.removeprefix('Bearer ')} (header: {header!r})"


def guard_answers(text: str | None = None, *, status: int = 200) -> Any:
    """The guard server's route: a verdict, chatter, or an error, echoing its key."""

    def handle(request: Request) -> JSONResponse:
        if status != 200:
            return JSONResponse({"error": {"message": f"rejected {echo(request)}"}}, status=status)
        return JSONResponse(chat_completion(text))

    return handle


def upstream_answers(*, status: int = 200, midstream: bool = False) -> Any:
    """The upstream's route: an answer, or an error body echoing the client's bearer token."""

    def handle(request: Request) -> JSONResponse | SSEResponse:
        error = {"message": f"Incorrect API key: {echo(request)}", "type": "invalid_request"}
        if status != 200:
            return JSONResponse({"error": error}, status=status)
        if request.json.get("stream"):
            chunks: list[Any] = chat_completion_chunks(["Fine ", "answer."])
            if midstream:
                chunks = [*chunks[:2], {"error": error}]
            return SSEResponse(chunks)
        return JSONResponse(chat_completion("Fine answer."))

    return handle


def make_guard(server: LoopbackServer, tmp_path: Path, *, sink: str, behavior: str) -> Guard:
    audit = (
        f'{{sink: jsonl, path: "{tmp_path / "audit.jsonl"}", content: full}}'
        if sink == "jsonl"
        else "{sink: logger, content: full}"
    )
    text = POLICY.format(audit=audit, behavior=behavior)
    remote = RemoteQwen3Guard(f"{server.url}/guard/v1", api_key=GUARD_KEY, max_retries=0)
    return Guard(load_policy_text(text), classifier=remote)


def close_guard(guard: Guard) -> None:
    """Close the guard and the remote guard the test gave it (a Guard closes only what it built)."""
    guard.close()
    guard.classifier.close()  # type: ignore[attr-defined]


def call(client: Any, *, stream: bool, is_async: bool) -> Any:
    """Run one guarded call to the end (reading a stream whole); returns what it returned."""
    messages = [{"role": "user", "content": "Plan a picnic"}]

    async def arun() -> Any:
        result = await client.chat.completions.create(model="m", messages=messages, stream=stream)
        return [c async for c in result] if stream else result

    if is_async:
        return asyncio.run(arun())
    result = client.chat.completions.create(model="m", messages=messages, stream=stream)
    return list(result) if stream else result


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def assert_nowhere(
    tmp_path: Path, sink: str, events: list[dict[str, Any]], raised: BaseException | None
) -> None:
    if raised is not None:
        for exc in chain(raised):
            for text in (str(exc), repr(exc), repr(getattr(exc, "decision", None))):
                assert not any(key in text for key in SECRETS), text
    if sink == "jsonl":
        data = (tmp_path / "audit.jsonl").read_bytes()
        assert data.count(b"\n") == 1  # exactly the one record
        assert not any(key.encode() in data for key in SECRETS)
    else:
        records = [e for e in events if e["event"] == "guardrail.audit"]
        assert len(records) == 1
        assert not any(key in repr(records) for key in SECRETS)


CASES = [
    pytest.param(stream, is_async, sink, id=f"{sync}-{kind}-{sink}")
    for stream, kind in ((False, "create"), (True, "stream"))
    for is_async, sync in ((False, "sync"), (True, "async"))
    for sink in ("jsonl", "logger")
]


@pytest.mark.parametrize(("stream", "is_async", "sink"), CASES)
@pytest.mark.parametrize("status", [401, 500])
def test_upstream_error_echoing_the_bearer_token(
    server: LoopbackServer, tmp_path: Path, stream: bool, is_async: bool, sink: str, status: int
) -> None:
    server.route("POST", GUARD_PATH, guard_answers("Safety: Safe\nCategories: None"))
    server.route("POST", UPSTREAM_PATH, upstream_answers(status=status))
    guard = make_guard(server, tmp_path, sink=sink, behavior="raise")
    make = openai.AsyncOpenAI if is_async else openai.OpenAI
    client = guardrail.wrap(
        make(base_url=f"{server.url}/v1", api_key=UPSTREAM_KEY, max_retries=0), guard=guard
    )
    with capture_logs() as events, pytest.raises(openai.APIStatusError) as info:
        call(client, stream=stream, is_async=is_async)
    close_guard(guard)
    assert info.value.status_code == status
    assert MASK in str(info.value)  # the echo was there, masked
    assert_nowhere(tmp_path, sink, events, info.value)


@pytest.mark.parametrize(("is_async", "sink"), [(False, "jsonl"), (True, "logger")])
def test_upstream_error_mid_stream_echoing_the_bearer_token(
    server: LoopbackServer, tmp_path: Path, is_async: bool, sink: str
) -> None:
    server.route("POST", GUARD_PATH, guard_answers("Safety: Safe\nCategories: None"))
    server.route("POST", UPSTREAM_PATH, upstream_answers(midstream=True))
    guard = make_guard(server, tmp_path, sink=sink, behavior="raise")
    make = openai.AsyncOpenAI if is_async else openai.OpenAI
    client = guardrail.wrap(
        make(base_url=f"{server.url}/v1", api_key=UPSTREAM_KEY, max_retries=0), guard=guard
    )
    with capture_logs() as events, pytest.raises(openai.APIError) as info:
        call(client, stream=True, is_async=is_async)
    close_guard(guard)
    assert MASK in str(info.value)
    assert_nowhere(tmp_path, sink, events, info.value)


@pytest.mark.parametrize(("stream", "is_async", "sink"), CASES)
@pytest.mark.parametrize("status", [200, 401])
def test_guard_server_echoing_its_key(
    server: LoopbackServer, tmp_path: Path, stream: bool, is_async: bool, sink: str, status: int
) -> None:
    chatter = f"I was called with Authorization: Bearer {GUARD_KEY} (key {GUARD_KEY})."
    server.route("POST", GUARD_PATH, guard_answers(chatter, status=status))
    server.route("POST", UPSTREAM_PATH, upstream_answers())
    guard = make_guard(server, tmp_path, sink=sink, behavior="raise")
    make = openai.AsyncOpenAI if is_async else openai.OpenAI
    client = guardrail.wrap(
        make(base_url=f"{server.url}/v1", api_key=UPSTREAM_KEY, max_retries=0), guard=guard
    )
    with capture_logs() as events, pytest.raises(guardrail.BlockedError) as info:
        call(client, stream=stream, is_async=is_async)  # fails closed
    close_guard(guard)
    decision = info.value.decision
    assert decision.rule_id == "failure"
    expected = VerdictParseError if status == 200 else GuardHTTPError
    assert decision.error.startswith(expected.__name__)
    assert MASK in decision.reason
    assert_nowhere(tmp_path, sink, events, info.value)


@pytest.mark.parametrize("is_async", [False, True])
def test_direct_checks_mask_the_guard_key(
    server: LoopbackServer, tmp_path: Path, is_async: bool
) -> None:
    server.route("POST", GUARD_PATH, guard_answers(f"Safety: maybe {GUARD_KEY}"))
    guard = make_guard(server, tmp_path, sink="jsonl", behavior="raise")
    messages = [{"role": "user", "content": "hi"}]
    if is_async:
        decision = asyncio.run(guard.acheck_prompt(messages))
    else:
        decision = guard.check_prompt(messages)
    close_guard(guard)
    assert decision.blocked
    assert GUARD_KEY not in decision.reason
    assert GUARD_KEY not in (decision.error or "")
    assert_nowhere(tmp_path, "jsonl", [], None)


def test_verdict_raw_text_from_the_server_is_masked(server: LoopbackServer, tmp_path: Path) -> None:
    # A valid verdict followed by an echo: the verdict counts, the echo is masked.
    server.route("POST", GUARD_PATH, guard_answers(f"Safety: Safe\nCategories: None\n{GUARD_KEY}"))
    with RemoteQwen3Guard(f"{server.url}/guard/v1", api_key=GUARD_KEY) as remote:
        verdict = moderate(remote, [{"role": "user", "content": "hi"}])
    assert verdict.level.value == "Safe"
    assert GUARD_KEY not in verdict.raw_text
    assert verdict.raw_text.endswith(MASK)


def test_a_guard_shared_by_two_clients_masks_each_clients_key(
    server: LoopbackServer, tmp_path: Path
) -> None:
    other_key = "sk-other-client-0a1b2c3d4e5f"
    server.route("POST", GUARD_PATH, guard_answers("Safety: Safe\nCategories: None"))
    server.route("POST", UPSTREAM_PATH, upstream_answers(status=401))
    guard = make_guard(server, tmp_path, sink="jsonl", behavior="raise")
    for key in (UPSTREAM_KEY, other_key):
        raw = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        client = guardrail.wrap(raw, guard=guard)
        with pytest.raises(openai.AuthenticationError) as info:
            call(client, stream=False, is_async=False)
        assert key not in str(info.value)
        # with_options() keeps masking with the copy's own key
        copy = client.with_options(api_key=f"{key}-copy")
        with pytest.raises(openai.AuthenticationError) as info:
            call(copy, stream=False, is_async=False)
        assert key not in str(info.value)
    close_guard(guard)
    data = (tmp_path / "audit.jsonl").read_bytes()
    assert data.count(b"\n") == 4
    assert UPSTREAM_KEY.encode() not in data
    assert other_key.encode() not in data


@pytest.mark.parametrize("is_async", [False, True])
def test_reward_server_echoing_its_key(
    server: LoopbackServer, tmp_path: Path, is_async: bool
) -> None:
    def handle(request: Request) -> JSONResponse:
        return JSONResponse({"error": {"message": f"no access: {echo(request)}"}}, status=401)

    server.route("POST", "/pooling", handle)
    text = f"""
version: 1
name: reward-secrets
audit: {{sink: jsonl, path: "{tmp_path / "audit.jsonl"}", content: full}}
reward:
  models:
    - {{id: remote-rm, kind: remote, model: rm, base_url: "{server.url}"}}
rules: []
"""
    scorer = RemoteRewardScorer(server.url, model="rm", api_key=REWARD_KEY, max_retries=0)
    guard = Guard(
        load_policy_text(text), classifier=ScriptedClassifier(), scorers={"remote-rm": scorer}
    )
    messages = [{"role": "user", "content": "hi"}]
    if is_async:
        decision = asyncio.run(guard.acheck_response(messages, "an answer"))
    else:
        decision = guard.check_response(messages, "an answer")
    guard.close()
    scorer.close()  # passed in: the test's to close
    assert decision.action.value == "allow"  # a reward failure leaves the answer unscored
    data = (tmp_path / "audit.jsonl").read_bytes()
    assert b"reward model: " in data  # the failure is recorded...
    assert MASK.encode() in data
    assert REWARD_KEY.encode() not in data  # ...without the key
