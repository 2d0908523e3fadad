"""A wrapped client's Responses API call, run through the same guarded-call flow as chat.

The flow judges chat conversations, so a ``responses.create`` call is adapted to
it (never given a flow of its own): the request's instructions and input become
the chat messages of the prompt check (:func:`guardrail.responses.input_view`),
the upstream's ``Response`` becomes a one-choice completion view whose message
holds every text of its output (:func:`guardrail.responses.output_message`), and
its stream events become chunk views (:class:`guardrail.response_events.EventReader`).
What the flow returns is mapped back: the upstream's own ``Response`` when the
policy let it through, else a ``Response`` holding the block message (status
``incomplete``, ``incomplete_details.reason == "content_filter"``) or the
template rewrite; a stream yields the upstream's events, and a cut stream ends
with ``response.incomplete`` (reason ``content_filter``).

A rewritten prompt turn or an added instruction reaches the upstream as
Responses input (:meth:`guardrail.responses.InputView.input_for`). Best-of-n
does not apply (the Responses API has no ``n``); retries and regeneration do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.responses import (
    Response,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseIncompleteEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from guardrail.client.calls import OPENAI_SHAPES
from guardrail.client.streams import (
    AsyncGuardedEvents,
    AsyncGuardedStream,
    GuardedEvents,
    GuardedStream,
)
from guardrail.client.upstream import async_upstream, sync_upstream
from guardrail.errors import ConfigurationError, GuardrailError
from guardrail.flow import FlowSettings, Trace, completion_flow, refuse, stream_flow
from guardrail.report import attach_report, report
from guardrail.response_events import EventReader, EventView, StreamEnding
from guardrail.responses import (
    InputView,
    chat_usage,
    finish_reason,
    input_view,
    output_message,
    replaced_response,
)
from guardrail.secrets import Masker

if TYPE_CHECKING:
    from guardrail.guard import Guard

__all__ = ["acreate_response", "create_response"]

# Parameters the guard reads: setting them behind its back (extra_body) would change
# what the upstream gets without the guard knowing.
_CHECKED_PARAMS = ("input", "instructions", "prompt", "stream", "background")

_EVENTS: dict[str, type[Any]] = {
    "response.created": ResponseCreatedEvent,
    "response.output_item.added": ResponseOutputItemAddedEvent,
    "response.content_part.added": ResponseContentPartAddedEvent,
    "response.output_text.delta": ResponseTextDeltaEvent,
    "response.output_text.done": ResponseTextDoneEvent,
    "response.content_part.done": ResponseContentPartDoneEvent,
    "response.output_item.done": ResponseOutputItemDoneEvent,
    "response.incomplete": ResponseIncompleteEvent,
}
"""The events :class:`~guardrail.response_events.StreamEnding` builds, as ``openai``'s types."""


def check_params(params: dict[str, Any], *, streams: bool = True) -> InputView:
    """The request's input as the guard sees it; refuses what would bypass the guard.

    Raises :class:`~guardrail.errors.InputError` (located) for input that is not
    Responses input, :class:`~guardrail.errors.ConfigurationError` for parameters
    the guard cannot honour (``background``, ``stream`` for ``parse``).
    """
    if params.get("stream") and not streams:
        raise ConfigurationError(
            "responses.parse() does not stream; use responses.create(stream=True)"
        )
    if params.get("background"):
        raise ConfigurationError(
            "background responses are fetched later (responses.retrieve), where the guard "
            "cannot check them; call without background=True"
        )
    extra = params.get("extra_body")
    if isinstance(extra, dict):
        overlap = sorted(set(extra) & set(_CHECKED_PARAMS))
        if overlap:
            raise ConfigurationError(
                f"extra_body may not set {', '.join(overlap)}: pass them as parameters"
            )
    return input_view(params)


class _Exchange:
    """One guarded Responses call: its request, and the upstream's answers by view."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.view: InputView | None = None
        self.answers: dict[int, tuple[Any, Any]] = {}  # id(view message) -> (message, response)
        self.first: Any = None

    def request(self, flow_params: dict[str, Any]) -> dict[str, Any]:
        """The Responses request for the flow's (possibly rewritten) conversation."""
        if self.view is None:  # pragma: no cover - the flow starts after check_params
            raise ConfigurationError("the request was not checked")
        new_input = self.view.input_for(flow_params["messages"])
        return self.params if new_input is None else {**self.params, "input": new_input}

    def completion(self, response: Any) -> ChatCompletion:
        """The one-choice completion view of an upstream response."""
        message = ChatCompletionMessage.model_validate(output_message(response))
        self.answers[id(message)] = (message, response)
        if self.first is None:
            self.first = response
        reason = "tool_calls" if message.tool_calls else finish_reason(response)
        choice = Choice.model_construct(
            index=0, finish_reason=reason, message=message, logprobs=None
        )
        return ChatCompletion.model_construct(
            id=str(response.id),
            object="chat.completion",
            created=int(response.created_at),
            model=str(response.model),
            choices=[choice],
            usage=chat_usage(response),
        )

    def answer(self, result: Any, trace: Trace) -> Any:
        """The ``Response`` to hand the caller for the flow's completion view."""
        choice = result.choices[0]
        kept = self.answers.get(id(choice.message))
        if kept is not None:
            out = kept[1]
        else:  # blocked or rewritten: nothing of the upstream's output survives
            data = replaced_response(
                self.first,
                text=str(choice.message.content or ""),
                reason=str(choice.finish_reason),
                request_id=trace.request_id,
                model=trace.model,
            )
            out = Response.model_construct(**data)  # as openai builds answers: leniently
        found = report(result)
        if found is not None:
            attach_report(out, found)
        return out


class _EventViews(Iterator[Any]):
    """An upstream event stream read as chunk views; closing it closes the upstream."""

    def __init__(self, events: Any) -> None:
        self._events = events
        self._reader = EventReader()

    def __next__(self) -> EventView:
        return self._reader.view(next(self._events))

    def close(self) -> None:
        """Close the upstream stream (a read blocked on it ends now)."""
        self._events.close()


class _AsyncEventViews(AsyncIterator[Any]):
    def __init__(self, events: Any) -> None:
        self._events = events
        self._reader = EventReader()

    async def __anext__(self) -> EventView:
        return self._reader.view(await self._events.__anext__())

    async def close(self) -> None:
        """Close the upstream stream."""
        await self._events.close()


def _expander(trace: Trace) -> Callable[[Any], list[Any]]:
    """Released items -> the caller's events: upstream events as they came, a cut as its end."""
    ending = StreamEnding(request_id=trace.request_id, model=trace.model)

    def expand(item: Any) -> list[Any]:
        if isinstance(item, EventView):
            ending.released(item.event)
            return [item.event]
        text = item.choices[0].delta.content if item.choices else None
        return [_EVENTS[e["type"]].model_construct(**e) for e in ending.events(text)]

    return expand


def _begin(guard: Guard, params: dict[str, Any], mask: Masker) -> tuple[Trace, FlowSettings]:
    mode = "streaming" if params.get("stream") else guard.policy.execution.mode
    trace = guard.begin(mode, model=str(params.get("model", "")), mask=mask)
    settings = guard.settings
    if settings.best_of_n != 1:  # the Responses API has no n: one answer per call
        settings = dataclasses.replace(settings, best_of_n=1)
    return trace, settings


def _flow_params(params: dict[str, Any], view: InputView) -> dict[str, Any]:
    return {
        "model": params.get("model"),
        "messages": view.messages,
        "stream": bool(params.get("stream")),
    }


def create_response(
    guard: Guard,
    create: Callable[..., Any],
    params: dict[str, Any],
    mask: Masker,
    *,
    streams: bool = True,
) -> Any:
    """A guarded sync ``responses.create(**params)``: a ``Response``, or a started event stream.

    Every call leaves one audit record, a refused one included.
    """
    trace, settings = _begin(guard, params, mask)
    exchange = _Exchange(params)
    call = sync_upstream(create, mask)

    def upstream(flow_params: dict[str, Any]) -> Any:
        result = call(exchange.request(flow_params))
        return _EventViews(result) if flow_params.get("stream") else exchange.completion(result)

    driver = guard.sync_driver(upstream)
    try:
        exchange.view = check_params(params, streams=streams)
    except GuardrailError as exc:
        return driver.run(refuse(trace, exc))
    trace.messages = exchange.view.messages
    flow_params = _flow_params(params, exchange.view)
    if flow_params["stream"]:
        steps = driver.stream(stream_flow(settings, trace, flow_params, OPENAI_SHAPES))
        return GuardedEvents(GuardedStream(steps, trace).start(), _expander(trace))
    result = driver.run(completion_flow(settings, trace, flow_params, OPENAI_SHAPES))
    return exchange.answer(result, trace)


async def acreate_response(
    guard: Guard,
    create: Callable[..., Awaitable[Any]],
    params: dict[str, Any],
    mask: Masker,
    *,
    streams: bool = True,
) -> Any:
    """A guarded async ``await responses.create(**params)``: a ``Response`` or an event stream."""
    trace, settings = _begin(guard, params, mask)
    exchange = _Exchange(params)
    call = async_upstream(create, mask)

    async def upstream(flow_params: dict[str, Any]) -> Any:
        result = await call(exchange.request(flow_params))
        if flow_params.get("stream"):
            return _AsyncEventViews(result)
        return exchange.completion(result)

    driver = guard.async_driver(upstream)
    try:
        exchange.view = check_params(params, streams=streams)
    except GuardrailError as exc:
        return await driver.run(refuse(trace, exc))
    trace.messages = exchange.view.messages
    flow_params = _flow_params(params, exchange.view)
    if flow_params["stream"]:
        steps = driver.stream(stream_flow(settings, trace, flow_params, OPENAI_SHAPES))
        started = await AsyncGuardedStream(steps, trace).start()
        return AsyncGuardedEvents(started, _expander(trace))
    result = await driver.run(completion_flow(settings, trace, flow_params, OPENAI_SHAPES))
    return exchange.answer(result, trace)
