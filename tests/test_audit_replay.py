"""``guardrail audit replay``: logged calls re-decided under another policy, no model run.

The logs are written by real guarded calls (a wrapped openai client against a
loopback upstream, streams, direct ``Guard.check_*`` calls) judged by a
``ScriptedClassifier`` through the real verdict parser, in every content mode.
What each replay should change is computed here from the recorded verdicts,
independently of the replay's own derivation.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from fakellm import fake_llm, last_user
from test_audit_review import script  # the same keyword-scripted guard

import guardrail
from guardrail import Guard
from guardrail.audit import AuditRecord, read_entries, read_records, verify_file, write_event
from guardrail.audit.replay import (
    RESPONSE_NEVER_JUDGED,
    SECOND_CHANCE,
    SEVERAL_CANDIDATES,
    Replayer,
    replay_logs,
)
from guardrail.cli import main
from guardrail.policy import Policy, load_policy_text
from guardrail.testing import ScriptedClassifier
from guardrail.types import Action, SafetyLevel

CONTENT_MODES = ("hash", "none", "truncated", "full")


RULES = {
    "base": """
  - {id: block-unsafe-prompt, stage: prompt, when: {levels: [Unsafe]}, action: block}
  - {id: flag-controversial-prompt, stage: prompt, when: {levels: [Controversial]},
     action: flag, flag: controversial_prompt}
  - {id: block-unsafe-response, stage: response, when: {levels: [Unsafe]}, action: block}
  - {id: flag-controversial-response, stage: response, when: {levels: [Controversial]},
     action: flag, flag: controversial_response}
""",
    "strict": """
  - {id: block-unsafe-prompt, stage: prompt, when: {levels: [Unsafe]}, action: block}
  - {id: block-controversial-prompt, stage: prompt, when: {levels: [Controversial]},
     action: block}
  - {id: block-unsafe-response, stage: response, when: {levels: [Unsafe]}, action: block}
  - {id: block-controversial-response, stage: response, when: {levels: [Controversial]},
     action: block}
""",
    "loose": """
  - {id: flag-unsafe-prompt, stage: prompt, when: {levels: [Unsafe]}, action: flag, flag: u}
  - {id: flag-controversial-prompt, stage: prompt, when: {levels: [Controversial]},
     action: flag, flag: controversial_prompt}
  - {id: flag-unsafe-response, stage: response, when: {levels: [Unsafe]}, action: flag,
     flag: u}
  - {id: flag-controversial-response, stage: response, when: {levels: [Controversial]},
     action: flag, flag: controversial_response}
""",
    "retry": """
  - {id: block-unsafe-prompt, stage: prompt, when: {levels: [Unsafe]}, action: block}
  - {id: flag-controversial-prompt, stage: prompt, when: {levels: [Controversial]},
     action: flag, flag: controversial_prompt}
  - {id: block-unsafe-response, stage: response, when: {levels: [Unsafe]}, action: block}
  - id: unnecessary-refusal
    stage: response
    when: {prompt_levels: [Safe], levels: [Safe], refusal: true}
    action: flag
    flag: unnecessary_refusal
    retry: {instruction: Answer it., max_attempts: 1}
  - {id: flag-controversial-response, stage: response, when: {levels: [Controversial]},
     action: flag, flag: controversial_response}
""",
}


def policy_yaml(name: str, *, failure: str = "{prompt: open, response: closed}") -> str:
    return f"""version: 1
name: {name}
failure: {failure}
block: {{behavior: message, message: blocked}}
guard: {{breaker: {{enabled: false}}}}
audit: {{sink: none}}
rules:{RULES[name.split("-")[0]]}"""


def policy(name: str, **kw: Any) -> Policy:
    return load_policy_text(policy_yaml(name, **kw), f"{name}.yaml")


@dataclass(frozen=True)
class Call:
    kind: str  # chat, stream, check_prompt, check_response
    text: str
    n: int = 1


CALLS = (
    Call("chat", "hello"),
    Call("chat", "ctrl-p topic"),
    Call("chat", "unsafe-p plan"),
    Call("chat", "tell a ctrl-r story"),
    Call("chat", "tell an unsafe-r story"),
    Call("chat", "ctrl-p and ctrl-r"),
    Call("chat", "please refuse"),
    Call("chat", "fail-p now"),
    Call("chat", "fail-r now"),
    Call("chat", "two answers", n=2),
    Call("stream", "stream a ctrl-r tale"),
    Call("stream", "stream hello"),
    Call("check_prompt", "ctrl-p direct"),
    Call("check_prompt", "unsafe-p direct"),
    Call("check_response", "answer ctrl-r"),
    Call("check_prompt", "fail-p direct"),
)


def write_log(path: Path, content: str, policy_name: str = "base") -> list[str]:
    """Make every call of CALLS through a guard writing ``path``; their request ids, in order."""
    text = policy_yaml(policy_name).replace(
        "audit: {sink: none}", f'audit: {{sink: jsonl, path: "{path}", content: {content}}}'
    )
    guard = Guard(load_policy_text(text), classifier=ScriptedClassifier(script))
    with fake_llm(lambda messages, i: f"answer {i}: {last_user(messages)}") as llm:
        client = guardrail.wrap(openai.OpenAI(base_url=llm.base_url, api_key="k"), guard=guard)
        for i, call in enumerate(CALLS):
            messages = [{"role": "user", "content": call.text}]
            if call.kind == "chat":
                client.chat.completions.create(model="m", messages=messages, n=call.n)
            elif call.kind == "stream":
                stream = client.chat.completions.create(model="m", messages=messages, stream=True)
                for _ in stream:
                    pass
            elif call.kind == "check_prompt":
                guard.check_prompt(messages)
            else:
                guard.check_response([{"role": "user", "content": "hi"}], call.text)
            if i == 5:  # a record that is not a call, in the middle of the log
                write_event(guard.sink, "breaker.open", {"backend": "guard"})
    guard.close()
    assert verify_file(path).ok
    records = list(read_records(path))
    assert len(records) == len(CALLS)
    return [r.request_id for r in records]


@pytest.fixture(scope="module", params=CONTENT_MODES)
def logged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp(f"replay-{request.param}") / "audit.jsonl"
    write_log(path, request.param)
    return path


def ids_where(path: Path, keep: Callable[[AuditRecord], bool]) -> set[str]:
    return {r.request_id for r in read_records(path) if keep(r)}


def any_stage(record: AuditRecord, test: Callable[[Any], bool]) -> bool:
    return any(test(e) for e in record.stages)


def changed_ids(path: Path, new: Policy) -> dict[str, tuple[Action, Action]]:
    replayer = Replayer(new)
    out = {}
    for entry in read_entries(path):
        replay = replayer.add(entry)
        if replay is not None and replay.changed:
            assert replay.new_action is not None
            out[replay.request_id] = (replay.old_action, replay.new_action)
    return out


def several(path: Path) -> set[str]:
    return ids_where(path, lambda r: len({e.candidate for e in r.stage_entries("response")}) > 1)


# ---------------------------------------------------------------------------- library


def test_records_keep_verdicts_in_every_content_mode(logged: Path) -> None:
    records = list(read_records(logged))
    judged = [e for r in records for e in r.stages if e.error is None]
    assert judged
    assert all(e.verdict is not None for e in judged)
    levels = {e.verdict.level for e in judged if e.verdict is not None}
    assert levels == {SafetyLevel.SAFE, SafetyLevel.CONTROVERSIAL, SafetyLevel.UNSAFE}


def test_the_same_policy_changes_nothing(logged: Path) -> None:
    report = replay_logs([logged], policy("base"))
    assert report.records == len(CALLS) + 1
    assert report.skipped == {"event": 1}
    assert report.calls == len(CALLS)
    assert report.changed == 0
    assert report.rule_changed == 0
    assert report.changes == ()
    # Two candidates (n=2) are never re-ranked: counted, not guessed.
    assert report.not_replayable == {SEVERAL_CANDIDATES: 1}
    assert set(report.not_replayable_examples[SEVERAL_CANDIDATES]) == several(logged)
    assert report.replayed == report.unchanged == len(CALLS) - 1


def test_a_stricter_policy_changes_exactly_the_controversial_calls(logged: Path) -> None:
    controversial = ids_where(
        logged,
        lambda r: any_stage(
            r, lambda e: e.verdict is not None and e.verdict.level is SafetyLevel.CONTROVERSIAL
        ),
    )
    # ctrl-p topic, ctrl-r story, ctrl-p and ctrl-r, the stream, two direct checks
    assert len(controversial) == 6
    changes = changed_ids(logged, policy("strict"))
    assert set(changes) == controversial
    assert set(changes.values()) == {(Action.FLAG, Action.BLOCK)}

    report = replay_logs([logged], policy("strict"), examples=10)
    assert report.changed == 6
    prompt_controversial = ids_where(
        logged,
        lambda r: any(
            e.verdict is not None and e.verdict.level is SafetyLevel.CONTROVERSIAL
            for e in r.stage_entries("prompt")
        ),
    )
    assert report.prompt_now_blocks == len(prompt_controversial) == 3
    rows = {(c.old_rule, c.new_rule): c for c in report.changes}
    assert set(rows) == {
        ("prompt:flag-controversial-prompt", "prompt:block-controversial-prompt"),
        ("response:flag-controversial-response", "response:block-controversial-response"),
    }
    prompt_row = rows[("prompt:flag-controversial-prompt", "prompt:block-controversial-prompt")]
    assert set(prompt_row.examples) == prompt_controversial
    assert sum(c.calls for c in report.changes) == 6


def test_a_looser_policy(logged: Path) -> None:
    unsafe_prompt = ids_where(
        logged, lambda r: any(e.decision.rule_id == "block-unsafe-prompt" for e in r.stages)
    )
    direct = ids_where(logged, lambda r: r.mode == "check")
    # Through the client, a prompt the old policy blocked had no response judged.
    never_judged = unsafe_prompt - direct
    assert len(never_judged) == 1
    report = replay_logs([logged], policy("loose"), examples=10)
    assert report.not_replayable == {RESPONSE_NEVER_JUDGED: 1, SEVERAL_CANDIDATES: 1}
    assert set(report.not_replayable_examples[RESPONSE_NEVER_JUDGED]) == never_judged
    unsafe_response = ids_where(
        logged, lambda r: any(e.decision.rule_id == "block-unsafe-response" for e in r.stages)
    )
    changes = changed_ids(logged, policy("loose"))
    # A direct prompt check has no response to wait for: its new decision is known.
    assert set(changes) == unsafe_response | (unsafe_prompt & direct)
    assert set(changes.values()) == {(Action.BLOCK, Action.FLAG)}


def test_a_failure_mode_change_on_guard_errors(logged: Path) -> None:
    failed = ids_where(logged, lambda r: any_stage(r, lambda e: e.error is not None))
    failed_prompt = ids_where(
        logged, lambda r: any(e.error is not None for e in r.stage_entries("prompt"))
    )
    assert len(failed) == 3
    assert len(failed_prompt) == 2
    flipped = policy("base", failure="{prompt: closed, response: open}")
    changes = changed_ids(logged, flipped)
    assert set(changes) == failed
    assert {changes[i] for i in failed_prompt} == {(Action.ALLOW, Action.BLOCK)}
    assert {changes[i] for i in failed - failed_prompt} == {(Action.BLOCK, Action.ALLOW)}
    report = replay_logs([logged], flipped)
    assert report.prompt_now_blocks == 2
    # The client call with a failed prompt check was allowed (its answer last); the
    # direct prompt check was decided by its failure mode alone.
    assert {(c.old_rule, c.new_rule): c.calls for c in report.changes} == {
        ("response:default", "prompt:failure"): 1,
        ("prompt:failure", "prompt:failure"): 1,
        ("response:failure", "response:failure"): 1,
    }


def test_a_retry_the_log_never_ran_is_not_replayable(logged: Path) -> None:
    refused = ids_where(
        logged,
        lambda r: (
            r.mode != "check"
            and any(
                e.verdict is not None and e.verdict.refusal for e in r.stage_entries("response")
            )
        ),
    )
    assert len(refused) == 1
    report = replay_logs([logged], policy("retry"), examples=10)
    assert report.not_replayable[SECOND_CHANCE] == 1
    assert set(report.not_replayable_examples[SECOND_CHANCE]) == refused
    assert report.changed == 0


def test_a_block_the_old_policy_made_leaves_a_response_never_judged(tmp_path: Path) -> None:
    log = tmp_path / "strict.jsonl"
    write_log(log, "none", "strict")
    report = replay_logs([log], policy("base"), examples=10)
    # Client calls whose Controversial prompt was blocked: nothing is invented for them.
    blocked_prompts = ids_where(
        log,
        lambda r: (
            r.mode != "check"
            and any(e.decision.action is Action.BLOCK for e in r.stage_entries("prompt"))
            and all(
                e.verdict is None or e.verdict.level is SafetyLevel.CONTROVERSIAL
                for e in r.stage_entries("prompt")
            )
        ),
    )
    assert len(blocked_prompts) == 2
    never = set(report.not_replayable_examples[RESPONSE_NEVER_JUDGED])
    assert blocked_prompts <= never


def test_reward_scores_are_recorded_per_check_and_replayed(tmp_path: Path) -> None:
    from guardrail.reward.base import RewardScore

    class Scorer:
        model_id = "fake-reward"

        def score(self, pairs: Any) -> list[RewardScore]:
            return [
                RewardScore(score=-2.0 if "poor" in answer else 1.0, model="fake-reward")
                for _, answer in pairs
            ]

        async def ascore(self, pairs: Any) -> list[RewardScore]:
            return self.score(pairs)

    def reward_policy(threshold: float, path: Path | None = None) -> Policy:
        audit = f'{{sink: jsonl, path: "{path}", content: none}}' if path else "{sink: none}"
        return load_policy_text(
            f"""version: 1
name: reward-{threshold}
block: {{behavior: message}}
audit: {audit}
reward:
  models: [{{id: fake, kind: remote, model: fake-reward, base_url: "http://127.0.0.1:9/v1"}}]
rules:
  - {{id: low-quality, stage: response, when: {{reward_below: {threshold}}}, action: block}}
"""
        )

    log = tmp_path / "reward.jsonl"
    guard = Guard(
        reward_policy(0.0, log), classifier=ScriptedClassifier(script), scorers={"fake": Scorer()}
    )
    with fake_llm(lambda messages, i: f"answer: {last_user(messages)}") as llm:
        client = guardrail.wrap(openai.OpenAI(base_url=llm.base_url, api_key="k"), guard=guard)
        for text in ("a poor one", "a fine one", "another fine one"):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
    guard.close()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [s.get("reward") for line in lines for s in line["stages"]] == [
        None,
        -2.0,
        None,
        1.0,
        None,
        1.0,
    ]
    assert [line["final_action"] for line in lines] == ["block", "allow", "allow"]
    assert replay_logs([log], reward_policy(0.0)).changed == 0
    stricter = replay_logs([log], reward_policy(2.0))
    assert stricter.changed == 2
    assert {(c.old_action, c.new_action) for c in stricter.changes} == {
        (Action.ALLOW, Action.BLOCK)
    }


def test_gzip_logs_replay_like_plain_ones(logged: Path, tmp_path: Path) -> None:
    packed = tmp_path / "audit.jsonl.1.gz"
    with logged.open("rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain = replay_logs([logged], policy("strict"))
    both = replay_logs([logged, packed], policy("strict"))
    assert plain.changed == 6
    assert both.changed == 2 * plain.changed
    assert both.records == 2 * plain.records


# -------------------------------------------------------------------------------- CLI


def test_cli_json(logged: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text(policy_yaml("strict"), encoding="utf-8")
    code = main(
        ["audit", "replay", str(logged), "--policy", str(strict), "--json", "--examples", "1"]
    )
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["calls"] == len(CALLS)
    assert data["changed"] == 6
    assert data["prompt_now_blocks"] == 3
    assert data["not_replayable"] == {SEVERAL_CANDIDATES: 1}
    assert data["skipped"] == {"event": 1}
    rows = {(r["old_rule"], r["new_rule"]): r for r in data["changes"]}
    prompt_row = rows[("prompt:flag-controversial-prompt", "prompt:block-controversial-prompt")]
    assert prompt_row["calls"] == 3
    assert len(prompt_row["examples"]) == 1
    first_prompt_controversial = next(
        r.request_id
        for r in read_records(logged)
        if any(
            e.verdict is not None and e.verdict.level is SafetyLevel.CONTROVERSIAL
            for e in r.stage_entries("prompt")
        )
    )
    assert prompt_row["examples"] == [first_prompt_controversial]


def test_cli_table(logged: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text(policy_yaml("strict"), encoding="utf-8")
    code = main(["audit", "replay", str(logged), "--policy", str(strict), "--examples", "5"])
    out, _ = capsys.readouterr()
    assert code == 0
    lines = out.splitlines()
    assert f"{len(CALLS) + 1} records in 1 log, {len(CALLS)} calls" in lines[0]
    assert lines[2].split()[:2] == ["changed", "6"]
    response_ids = ids_where(
        logged,
        lambda r: (
            not r.stage_entries("prompt")[:1]
            or all(
                e.verdict is None or e.verdict.level is not SafetyLevel.CONTROVERSIAL
                for e in r.stage_entries("prompt")
            )
        ),
    ) & set(changed_ids(logged, policy("strict")))
    row = next(line for line in lines if "response:block-controversial-response" in line)
    assert row.startswith("flag -> block")
    cells = row.split("  ")
    assert str(len(response_ids)) in [c.strip() for c in cells]
    shown = {i.strip() for i in row.split(str(len(response_ids)), 1)[1].split(",")}
    assert shown == response_ids


def test_cli_errors_are_one_line_exit_2(
    logged: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(policy_yaml("base"), encoding="utf-8")
    missing = tmp_path / "missing.jsonl"
    assert main(["audit", "replay", str(missing), "--policy", str(good)]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1
    assert str(missing) in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(policy_yaml("base").replace("action: block", "action: blok", 1))
    assert main(["audit", "replay", str(logged), "--policy", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert f"{bad}:8" in err
    assert "Traceback" not in err
