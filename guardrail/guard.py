"""``Guard``: a policy, a guard model and an audit sink, put together.

``Guard`` is what :func:`guardrail.wrap` puts in front of a client, and what
users of other LLM SDKs call directly (``check_prompt``, ``check_response`` and
their async twins). It owns no flow logic: the guarded call lives in
:mod:`guardrail.engine`, decisions in :mod:`guardrail.policy`, records in
:mod:`guardrail.audit`.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from guardrail.audit import (
    AuditRecord,
    AuditSink,
    NullSink,
    json_writer,
    record_dict,
    sink_from_settings,
    stage_dict,
)
from guardrail.audit.record import PolicyRef
from guardrail.classifiers.base import Classifier, Conversation, amoderate_many, moderate_many
from guardrail.effects import Audit, Flow
from guardrail.engine import Trace, check, completion_flow, stream_flow
from guardrail.errors import ConfigurationError
from guardrail.parts import build_classifier, build_reward_gate
from guardrail.policy import Policy, evaluate, load_policy
from guardrail.policy.schema import StreamingConfig
from guardrail.reward.base import RewardScore, RewardScorer
from guardrail.runners import AsyncRunner, CheckPace, SyncRunner
from guardrail.streams import AsyncGuardedStream, GuardedStream
from guardrail.types import Decision, Stage, Verdict


class Guard:
    """Checks prompts and responses against a policy, and audits every decision.

    ``policy``: a :class:`~guardrail.policy.Policy`, a path to a policy YAML file,
    or ``None`` for the balanced default. ``classifier`` overrides the guard the
    policy describes (e.g. a shared ``LocalQwen3Guard``, or a scripted fake in
    tests); ``sink`` overrides its audit sink; ``logger`` is the structlog logger
    used by a ``logger`` audit sink; ``scorers`` maps reward model ids of the
    policy's ``reward`` section to ready scorers (the others are built).
    """

    def __init__(
        self,
        policy: Policy | str | Path | None = None,
        *,
        classifier: Classifier | None = None,
        sink: AuditSink | None = None,
        logger: Any = None,
        scorers: Mapping[str, RewardScorer] | None = None,
        max_workers: int = 32,
    ) -> None:
        if policy is None:
            policy = Policy.default()
        elif not isinstance(policy, Policy):
            policy = load_policy(policy)
        self.policy = policy
        self.classifier = classifier if classifier is not None else build_classifier(policy.guard)
        self.rewards = (
            build_reward_gate(policy.reward, scorers) if policy.reward is not None else None
        )
        """The policy's reward models, or ``None`` when the policy has no reward section."""
        audit = policy.audit
        self.sink = (
            sink
            if sink is not None
            else sink_from_settings(audit.sink, audit.path, audit.fsync, logger)
        )
        self._policy_ref = PolicyRef(
            name=policy.name, version=str(policy.version), hash=policy.content_hash
        )
        # Two pools: upstream calls (which may be abandoned, still running) can never
        # starve guard checks of workers.
        self._check_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="guardrail-check"
        )
        self._io_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="guardrail-io"
        )
        self._pace = CheckPace()  # shared by this guard's sync calls

    # -- settings the engine reads ----------------------------------------------------

    @property
    def concurrent(self) -> bool:
        """Whether the upstream call starts together with the prompt check."""
        return self.policy.execution.mode == "concurrent"

    @property
    def best_of_n(self) -> int:
        """Candidates requested per single-answer call (the policy's ``reward.best_of_n``)."""
        return self.rewards.best_of_n if self.rewards is not None else 1

    @property
    def raises_on_block(self) -> bool:
        """Whether a block raises :class:`~guardrail.errors.BlockedError`."""
        return self.policy.block.behavior == "raise"

    @property
    def streaming(self) -> StreamingConfig:
        """The policy's streaming settings."""
        return self.policy.streaming

    def block_message(self, decision: Decision) -> str:
        """The text returned in place of a blocked prompt's or answer's content."""
        return decision.message or self.policy.block.message

    def decide(
        self,
        stage: Stage,
        verdict: Verdict | None,
        *,
        prompt_verdict: Verdict | None = None,
        error: BaseException | None = None,
        reward: float | None = None,
    ) -> Decision:
        """The policy's decision for one verdict (and its reward), or for a guard failure."""
        return evaluate(
            self.policy, stage, verdict, prompt_verdict=prompt_verdict, error=error, reward=reward
        )

    # -- classification ---------------------------------------------------------------

    def classify(self, stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        """Judge conversations with the policy's reasoning and system-message settings."""
        return moderate_many(
            self.classifier,
            conversations,
            reasoning=self.policy.reasoning,
            include_system=self.policy.include_system,
        )

    async def aclassify(self, stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        """Async twin of :meth:`classify`."""
        return await amoderate_many(
            self.classifier,
            conversations,
            reasoning=self.policy.reasoning,
            include_system=self.policy.include_system,
        )

    def score(self, conversations: Sequence[Conversation]) -> list[RewardScore | None]:
        """Score answers with the policy's reward models (``None`` where none applies)."""
        if self.rewards is None:
            return [None] * len(conversations)
        return self.rewards.score([_pair(c) for c in conversations])

    async def ascore(self, conversations: Sequence[Conversation]) -> list[RewardScore | None]:
        """Async twin of :meth:`score`."""
        if self.rewards is None:
            return [None] * len(conversations)
        return await self.rewards.ascore([_pair(c) for c in conversations])

    # -- audit ------------------------------------------------------------------------

    def audit(self, trace: Trace) -> None:
        """Write the audit record of one guarded call or check."""
        sink = self.sink
        if isinstance(sink, NullSink):  # nothing is kept: skip building the record
            return
        content = self.policy.audit.content
        # The record is built as its plain JSON dict, without pydantic models: sinks with
        # a write_json (the built-in ones) take the dict; others get it validated as a record.
        stages = [
            stage_dict(
                o.decision,
                latency_s=o.latency_s,
                error=trace.outcome_errors.get(i),
                attempt=o.attempt + 1,
                candidate=o.candidate,
                raw_text=content == "full",
            )
            for i, o in enumerate(trace.outcomes)
        ]
        # Guard failures are recorded with their stage; upstream and reward-model
        # failures (which no stage decision carries) are added here.
        errors = [
            {
                "stage": Stage.RESPONSE.value if where == "reward" else None,
                "type": type(exc).__name__,
                "message": f"reward model: {exc}" if where == "reward" else str(exc),
            }
            for where, exc in trace.errors
            if where in ("upstream", "reward")
        ]
        data = record_dict(
            policy=self._policy_ref,
            stages=stages,
            mode=trace.mode,
            model=trace.model,
            guard_model=self.classifier.model_id,
            final_action=trace.action,
            flags=trace.flags,
            blocked_stage=trace.blocked_stage,
            latency={
                "guard_s": trace.guard_s,
                "upstream_s": trace.upstream_s if trace.mode != "check" else None,
                "total_s": trace.elapsed(),
            },
            errors=errors,
            rewards=[
                {
                    "candidate": candidate or 0,
                    "model": score.model,
                    "score": score.score,
                    "normalized": score.normalized,
                    "hybrid": hybrid,
                }
                for candidate, score, hybrid in trace.rewards
            ],
            prompt=_last_user_text(trace.messages),
            response="\n\n".join(trace.responses) if trace.responses else None,
            content_mode=content,
            truncate_chars=self.policy.audit.truncate_chars,
            request_id=trace.request_id,
        )
        write_json = json_writer(sink)
        if write_json is not None:
            write_json(data)
        else:
            sink.write(AuditRecord.model_validate(data))

    # -- runners ----------------------------------------------------------------------

    def _sync_runner(self, upstream: Callable[[dict[str, Any]], Any]) -> SyncRunner:
        return SyncRunner(
            self.classify,
            upstream,
            self.audit,
            timeout_s=self.policy.execution.timeout_s,
            checks=self._check_pool,
            io=self._io_pool,
            score=self.score,
            pace=self._pace,
        )

    def _async_runner(self, upstream: Callable[[dict[str, Any]], Any]) -> AsyncRunner:
        return AsyncRunner(
            self.aclassify,
            upstream,
            self.audit,
            timeout_s=self.policy.execution.timeout_s,
            score=self.ascore,
        )

    def _trace(self, params: dict[str, Any], mode: str) -> Trace:
        return Trace(
            request_id=uuid.uuid4().hex,
            mode=mode,
            model=str(params.get("model", "")),
            messages=params.get("messages", ()),
        )

    def _complete(self, create: Callable[..., Any], params: dict[str, Any]) -> Any:
        params = _normalise_params(params)
        runner = self._sync_runner(lambda p: create(**p))
        if params.get("stream"):
            trace = self._trace(params, "streaming")
            return GuardedStream(runner.stream(stream_flow(self, trace, params)), trace).start()
        trace = self._trace(params, self.policy.execution.mode)
        return runner.run(completion_flow(self, trace, params))

    async def _acomplete(self, create: Callable[..., Any], params: dict[str, Any]) -> Any:
        params = _normalise_params(params)

        async def upstream(p: dict[str, Any]) -> Any:
            return await create(**p)

        runner = self._async_runner(upstream)
        if params.get("stream"):
            trace = self._trace(params, "streaming")
            stream = AsyncGuardedStream(runner.stream(stream_flow(self, trace, params)), trace)
            return await stream.start()
        trace = self._trace(params, self.policy.execution.mode)
        return await runner.run(completion_flow(self, trace, params))

    # -- direct checks ----------------------------------------------------------------

    def _check_flow(
        self,
        stage: Stage,
        messages: Iterable[Any],
        response: Any,
        prompt_verdict: Verdict | None,
    ) -> Flow[Decision]:
        items = list(messages)
        trace = Trace(request_id=uuid.uuid4().hex, mode="check", model="", messages=items)
        try:
            (decision,) = yield from check(
                self, trace, stage, [(items, response)], prompt_verdict=prompt_verdict
            )
            trace.took(decision.action, flags=decision.flags)
            if decision.blocked:
                trace.blocked_stage = stage
            if response is not None:
                trace.responses.append(response if isinstance(response, str) else _text(response))
            return decision
        finally:
            yield Audit(trace)

    def check_prompt(self, messages: Iterable[Any]) -> Decision:
        """Check a conversation's last user turn; the decision is audited, never raised."""
        return self._sync_runner(_no_upstream).run(
            self._check_flow(Stage.PROMPT, messages, None, None)
        )

    def check_response(
        self,
        messages: Iterable[Any],
        response: Any,
        *,
        prompt_verdict: Verdict | None = None,
    ) -> Decision:
        """Check an answer (a string or an assistant message) to ``messages``.

        Pass the prompt check's verdict as ``prompt_verdict`` so rules on the
        prompt's level (such as the unnecessary-refusal rule) can match.
        """
        return self._sync_runner(_no_upstream).run(
            self._check_flow(Stage.RESPONSE, messages, response, prompt_verdict)
        )

    async def acheck_prompt(self, messages: Iterable[Any]) -> Decision:
        """Async twin of :meth:`check_prompt`."""
        return await self._async_runner(_no_upstream).run(
            self._check_flow(Stage.PROMPT, messages, None, None)
        )

    async def acheck_response(
        self,
        messages: Iterable[Any],
        response: Any,
        *,
        prompt_verdict: Verdict | None = None,
    ) -> Decision:
        """Async twin of :meth:`check_response`."""
        return await self._async_runner(_no_upstream).run(
            self._check_flow(Stage.RESPONSE, messages, response, prompt_verdict)
        )

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close the audit sink and stop the worker threads."""
        self._check_pool.shutdown(wait=False, cancel_futures=True)
        self._io_pool.shutdown(wait=False, cancel_futures=True)
        self.sink.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _pair(conversation: Conversation) -> tuple[Sequence[Any], str]:
    messages, response = conversation
    text = response if isinstance(response, str) else _text(response)
    return list(messages), text


def _no_upstream(params: dict[str, Any]) -> Any:
    raise ConfigurationError("a direct check has no upstream call")


_CHECKED_PARAMS = ("messages", "n", "stream", "stream_options")


def _normalise_params(params: dict[str, Any]) -> dict[str, Any]:
    if "messages" not in params:
        raise ConfigurationError("chat.completions.create() needs messages=")
    extra = params.get("extra_body")
    if isinstance(extra, dict):
        overlap = sorted(set(extra) & set(_CHECKED_PARAMS))
        if overlap:  # they would change what the upstream gets behind the guard's back
            raise ConfigurationError(
                f"extra_body may not set {', '.join(overlap)}: pass them as parameters"
            )
    return {**params, "messages": list(params["messages"])}


def _text(message: Any) -> str:
    content = (
        message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
    )
    return content if isinstance(content, str) else ""


def _last_user_text(messages: Any) -> str | None:
    for message in reversed(list(messages or ())):
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role == "user":
            content = (
                message.get("content")
                if isinstance(message, dict)
                else getattr(message, "content", None)
            )
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(
                    str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
                )
            return ""
    return None
