"""``guardrail policy test``: case files, their strict schema, and the shipped cases."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from guardrail.cli import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, main
from guardrail.errors import CaseFileError, PolicyError
from guardrail.policy import load_policy, load_policy_text
from guardrail.policy.cases import (
    Case,
    CaseFile,
    load_cases,
    load_cases_text,
    run_cases,
    unmatched_rules,
)
from guardrail.qwen3guard import parse_verdict
from guardrail.types import Action, Category, SafetyLevel, Stage

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
SHIPPED = ("default", "strict", "monitor", "reward")

# A small policy exercising every condition a case can feed.
POLICY = """\
version: 1
name: cases-test
failure: {prompt: closed, response: open}
reward:
  models:
    - {id: rm, kind: seqcls, model: org/rm}
rules:
  - id: block-jailbreak
    stage: prompt
    when: {categories: [Jailbreak]}
    action: block
    flag: jailbreak
  - id: doubtful
    stage: prompt
    when: {levels: [Safe], min_probability: {Unsafe: 0.5}}
    action: flag
  - id: block-unsafe
    stage: prompt
    when: {levels: [Unsafe]}
    action: block
  - id: refusal
    stage: response
    when: {prompt_levels: [Safe], refusal: true}
    action: flag
    flag: unnecessary_refusal
  - id: sure-refusal
    stage: response
    when: {min_probability: {Refusal: 0.9}}
    action: flag
  - id: low
    stage: response
    when: {reward_below: 0.0}
    action: flag
    flag: low_quality
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def cases_text(*cases: str) -> str:
    return "version: 1\ncases:\n" + "".join(cases)


def write_cases(tmp_path: Path, text: str, name: str = "cases.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def one(text: str) -> Case:
    return load_cases_text(cases_text(text)).cases[0]


def outcome(case_yaml: str) -> tuple[bool, tuple[str, ...]]:
    """(passed, problems) of one case run against POLICY."""
    policy = load_policy_text(POLICY)
    (result,) = run_cases(policy, load_cases_text(cases_text(case_yaml), "c.yaml"))
    return result.passed, result.problems


# ------------------------------------------------------------------ shipped cases


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_case_files_pass(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    policy = POLICIES / f"{name}.yaml"
    cases = POLICIES / "tests" / f"{name}.cases.yaml"
    assert main(["policy", "test", str(policy), str(cases)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert err == ""
    # No failing case and no rule left undecided: the summary is the only line.
    assert re.fullmatch(
        rf"OK  {re.escape(str(policy))}  \d+ passed, 0 failed \(1 case file\)\n", out
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_rule_has_a_match_and_a_near_miss(name: str) -> None:
    policy = load_policy(POLICIES / f"{name}.yaml")
    case_file = load_cases(POLICIES / "tests" / f"{name}.cases.yaml")
    matched = {case.expect.rule for case in case_file.cases}
    near_missed = {case.expect.not_rule for case in case_file.cases}
    for rule in policy.rules:
        assert rule.id in matched, f"{name}: no case expects rule {rule.id!r} to decide"
        assert rule.id in near_missed, f"{name}: no near miss (not_rule) for rule {rule.id!r}"
    assert unmatched_rules(policy, run_cases(policy, case_file)) == ()


# ----------------------------------------------------------------------- verdicts


def test_structured_verdict() -> None:
    case = one(
        "  - name: s\n    stage: response\n    level: Controversial\n"
        "    categories: [PII, Violent]\n    refusal: true\n"
        "    probabilities: {Controversial: 0.7, Safe: 0.3, PII: 0.6, Refusal: 0.8}\n"
        "    expect: {action: allow}\n"
    )
    v = case.verdict
    assert v is not None
    assert (v.stage, v.level, v.category) == (
        Stage.RESPONSE,
        SafetyLevel.CONTROVERSIAL,
        Category.PII,
    )
    assert v.categories == (Category.PII, Category.VIOLENT)
    assert v.refusal is True
    assert dict(v.level_probs or {}) == {"Controversial": 0.7, "Safe": 0.3}
    assert dict(v.category_probs or {}) == {"PII": 0.6}
    assert dict(v.refusal_probs or {}) == pytest.approx({"Yes": 0.8, "No": 0.2})


def test_structured_verdict_without_optional_fields() -> None:
    v = one("  - {name: s, stage: response, level: Safe, expect: {action: allow}}\n").verdict
    assert v is not None
    assert (v.category, v.categories, v.refusal) == (None, (), None)
    assert (v.level_probs, v.category_probs, v.refusal_probs) == (None, None, None)


def test_raw_verdict_is_read_by_the_protocol_parser() -> None:
    text = "**Safety**: Unsafe\n- Categories: Violent, PII\nRefusal: No\nextra words"
    case = one(
        f"  - name: r\n    stage: response\n    raw: {json.dumps(text)}\n"
        "    probabilities: {Unsafe: 0.9}\n    expect: {action: allow}\n"
    )
    expected = parse_verdict(text, stage="response", level_probs={"Unsafe": 0.9})
    assert case.verdict == expected
    assert case.verdict.categories == (Category.VIOLENT, Category.PII)


def test_raw_verdict_of_a_prompt_drops_a_refusal_line() -> None:
    case = one(
        '  - {name: r, stage: prompt, raw: "Safety: Safe\\nRefusal: Yes", '
        "expect: {action: allow}}\n"
    )
    assert case.verdict is not None
    assert (case.verdict.stage, case.verdict.refusal) == (Stage.PROMPT, None)


def test_prompt_verdict_structured_and_raw() -> None:
    structured = one(
        "  - name: p\n    stage: response\n    level: Safe\n"
        "    prompt: {level: Unsafe, categories: [Jailbreak]}\n    expect: {action: allow}\n"
    )
    raw = one(
        "  - name: p\n    stage: response\n    level: Safe\n"
        '    prompt: {raw: "Safety: Unsafe\\nCategories: Jailbreak"}\n    expect: {action: allow}\n'
    )
    for case in (structured, raw):
        pv = case.prompt_verdict
        assert pv is not None
        assert (pv.stage, pv.level, pv.categories) == (
            Stage.PROMPT,
            SafetyLevel.UNSAFE,
            (Category.JAILBREAK,),
        )


def test_prompt_verdict_and_reward_reach_the_rules() -> None:
    refusal = "  - name: c\n    stage: response\n    level: Safe\n    refusal: true\n"
    assert outcome(
        refusal + "    prompt: {level: Safe}\n    expect: {action: flag, rule: refusal}\n"
    )[0]
    # Without the prompt's verdict, prompt_levels cannot match.
    assert outcome(refusal + "    expect: {action: allow, rule: default}\n")[0]
    safe = "  - name: c\n    stage: response\n    level: Safe\n"
    assert outcome(safe + "    reward: -0.5\n    expect: {action: flag, rule: low}\n")[0]
    assert outcome(safe + "    reward: 0.5\n    expect: {action: allow, rule: default}\n")[0]


def test_probabilities_reach_the_rules() -> None:
    doubt = "  - name: c\n    stage: prompt\n    level: Safe\n"
    assert outcome(
        doubt + "    probabilities: {Unsafe: 0.6}\n    expect: {action: flag, rule: doubtful}\n"
    )[0]
    assert outcome(
        doubt + "    probabilities: {Unsafe: 0.4}\n    expect: {action: allow, rule: default}\n"
    )[0]
    assert outcome(doubt + "    expect: {action: allow, rule: default}\n")[0]
    sure = "  - name: c\n    stage: response\n    level: Safe\n"
    assert outcome(
        sure
        + "    probabilities: {Refusal: 0.95}\n    expect: {action: flag, rule: sure-refusal}\n"
    )[0]


@pytest.mark.parametrize(
    ("kind", "error_type"),
    [
        ("timeout", "GuardTimeoutError"),
        ("unparsable", "VerdictParseError"),
        ("connection", "GuardConnectionError"),
        ("http", "GuardHTTPError"),
        ("circuit_open", "CircuitOpenError"),
        ("error", "ClassifierError"),
    ],
)
def test_errors_are_decided_by_the_failure_mode(kind: str, error_type: str) -> None:
    policy = load_policy_text(POLICY)  # prompt: closed, response: open
    text = cases_text(
        f"  - {{name: p, stage: prompt, error: {kind}, "
        "expect: {action: block, rule: failure}}\n",
        f"  - {{name: r, stage: response, error: {kind}, expect: {{action: allow}}}}\n",
    )
    prompt, response = run_cases(policy, load_cases_text(text))
    assert prompt.passed
    assert response.passed
    assert prompt.decision.flags == ("guard_error",)
    assert prompt.decision.error is not None
    assert prompt.decision.error.startswith(error_type)
    assert prompt.case.verdict is None


# -------------------------------------------------------------------- expectations

JAILBREAK = "  - name: c\n    stage: prompt\n    level: Unsafe\n    categories: [Jailbreak]\n"


def test_expect_action() -> None:
    assert outcome(JAILBREAK + "    expect: {action: block}\n") == (True, ())
    assert outcome(JAILBREAK + "    expect: {action: flag}\n") == (
        False,
        ("action: expected flag, got block",),
    )


def test_expect_rule() -> None:
    assert outcome(JAILBREAK + "    expect: {action: block, rule: block-jailbreak}\n")[0]
    passed, problems = outcome(JAILBREAK + "    expect: {action: block, rule: block-unsafe}\n")
    assert not passed
    assert problems == ("rule: expected 'block-unsafe', got 'block-jailbreak'",)


def test_expect_rule_explains_a_missing_rule_or_another_stage() -> None:
    _, missing = outcome(JAILBREAK + "    expect: {action: block, rule: gone}\n")
    assert missing == (
        "rule: expected 'gone', got 'block-jailbreak' (the policy has no rule 'gone')",
    )
    _, other = outcome(JAILBREAK + "    expect: {action: block, rule: low}\n")
    assert "'low' is a response rule; this is a prompt case" in other[0]


def test_expect_not_rule() -> None:
    assert outcome(JAILBREAK + "    expect: {action: block, not_rule: block-unsafe}\n")[0]
    assert outcome(JAILBREAK + "    expect: {action: block, not_rule: block-jailbreak}\n") == (
        False,
        ("not_rule: the decision came from 'block-jailbreak'",),
    )
    # A near miss of a rule the policy no longer has would pass for nothing.
    assert outcome(JAILBREAK + "    expect: {action: block, not_rule: renamed}\n") == (
        False,
        ("not_rule: the policy has no rule 'renamed'",),
    )


def test_expect_flags_exact_set() -> None:
    assert outcome(JAILBREAK + "    expect: {action: block, flags: [jailbreak]}\n")[0]
    assert not outcome(JAILBREAK + "    expect: {action: block, flags: []}\n")[0]
    _, problems = outcome(JAILBREAK + "    expect: {action: block, flags: [jailbreak, extra]}\n")
    assert problems == ("flags: expected [extra, jailbreak], got [jailbreak]",)
    safe = "  - name: c\n    stage: prompt\n    level: Safe\n"
    assert outcome(safe + "    expect: {action: allow, flags: []}\n")[0]
    assert not outcome(safe + "    expect: {action: allow, flags: [jailbreak]}\n")[0]


def test_expect_flags_include() -> None:
    assert outcome(JAILBREAK + "    expect: {action: block, flags_include: [jailbreak]}\n")[0]
    _, problems = outcome(
        JAILBREAK + "    expect: {action: block, flags_include: [jailbreak, x]}\n"
    )
    assert problems == ("flags: missing [x]",)


# ------------------------------------------------------------------------- the CLI

FAILING = """\
version: 1
cases:
  - name: passes
    stage: prompt
    level: Unsafe
    expect: {action: block, rule: block-unsafe}

  - name: wrong rule
    stage: prompt
    level: Unsafe
    categories: [Jailbreak]
    expect: {action: block, rule: block-unsafe}
"""


def test_a_failing_case_reports_file_line_and_exits_1(
    tmp_path: Path, policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = write_cases(tmp_path, FAILING)
    assert main(["policy", "test", str(policy_file), str(cases)]) == EXIT_FINDINGS
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == (
        f"{cases}:8: wrong rule: rule: expected 'block-unsafe', got 'block-jailbreak' "
        "| got action=block rule=block-jailbreak flags=[jailbreak]"
    )
    assert lines[-1] == f"FAIL  {policy_file}  1 passed, 1 failed (1 case file)"
    # Rules no case was decided by are listed, so coverage gaps show.
    assert lines[1] == "note: no case is decided by rule(s): doubtful, refusal, sure-refusal, low"


def test_several_case_files_are_counted_together(
    tmp_path: Path, policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write_cases(tmp_path, FAILING, "a.yaml")
    second = write_cases(
        tmp_path,
        cases_text("  - {name: x, stage: response, level: Safe, expect: {action: allow}}\n"),
        "b.yaml",
    )
    assert main(["policy", "test", str(policy_file), str(first), str(second)]) == EXIT_FINDINGS
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"FAIL  {policy_file}  2 passed, 1 failed (2 case files)"
    )


def test_json_output(tmp_path: Path, policy_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = write_cases(tmp_path, FAILING)
    assert main(["policy", "test", str(policy_file), str(cases), "--json"]) == EXIT_FINDINGS
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False
    assert (result["passed"], result["failed"]) == (1, 1)
    assert result["policy"]["file"] == str(policy_file)
    assert result["policy"]["name"] == "cases-test"
    assert result["policy"]["sha256"] == load_policy(policy_file).content_hash
    assert result["case_files"] == [str(cases)]
    assert result["unmatched_rules"] == ["doubtful", "refusal", "sure-refusal", "low"]
    passing, failing = result["cases"]
    assert passing == {
        "file": str(cases),
        "line": 3,
        "name": "passes",
        "stage": "prompt",
        "passed": True,
        "expected": {"action": "block", "rule": "block-unsafe"},
        "got": {"action": "block", "rule": "block-unsafe", "flags": []},
        "problems": [],
    }
    assert failing["line"] == 8
    assert failing["passed"] is False
    assert failing["got"] == {"action": "block", "rule": "block-jailbreak", "flags": ["jailbreak"]}
    assert failing["problems"] == ["rule: expected 'block-unsafe', got 'block-jailbreak'"]


def test_json_output_when_all_pass(
    policy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = write_cases(tmp_path, FAILING.split("\n  - name: wrong rule")[0] + "\n")
    assert main(["policy", "test", str(policy_file), str(cases), "--json"]) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["passed"], result["failed"]) == (True, 1, 0)


# ------------------------------------------------------------- malformed case files

GOOD_CASE = "  - name: ok\n    stage: prompt\n    level: Safe\n    expect: {action: allow}\n"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param(
            GOOD_CASE.replace("level: Safe", "levl: Safe"),
            r":6:5: cases\[0\]\.levl: unknown key 'levl'; did you mean 'level'\?",
            id="unknown-field",
        ),
        pytest.param(
            GOOD_CASE.replace("level: Safe", "level: Unsafer"),
            r":6:12: cases\[0\]\.level: invalid value 'Unsafer'; did you mean 'Unsafe'\?",
            id="bad-level",
        ),
        pytest.param(
            GOOD_CASE.replace("{action: allow}", "{rule: default}"),
            r":7:13: cases\[0\]\.expect\.action: required key is missing",
            id="missing-action",
        ),
        pytest.param(
            GOOD_CASE.replace("{action: allow}", "{action: allow"),
            r":8:1: invalid YAML: expected",
            id="yaml-syntax",
        ),
        pytest.param(
            GOOD_CASE.replace("{action: allow}", "{action: alow}"),
            r":7:22: cases\[0\]\.expect\.action: invalid value 'alow'; did you mean 'allow'\?",
            id="bad-action",
        ),
    ],
)
def test_malformed_case_files_exit_2_located(
    tmp_path: Path,
    policy_file: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    where: str,
) -> None:
    cases = write_cases(tmp_path, "# cases\n" + cases_text(text))
    assert main(["policy", "test", str(policy_file), str(cases)]) == EXIT_ERROR
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(re.escape(str(cases)) + where + r".*\n", err)
    assert "Traceback" not in err


def test_a_malformed_case_file_never_prints_a_traceback(tmp_path: Path, policy_file: Path) -> None:
    cases = write_cases(tmp_path, cases_text(GOOD_CASE.replace("stage: prompt", "stage: promt")))
    done = subprocess.run(
        [sys.executable, "-m", "guardrail", "policy", "test", str(policy_file), str(cases)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == EXIT_ERROR
    assert done.stdout == ""
    assert done.stderr == (
        f"{cases}:4:12: cases[0].stage: invalid value 'promt'; did you mean 'prompt'? "
        "(expected one of: prompt, response)\n"
    )


@pytest.mark.parametrize(
    ("case", "field", "message"),
    [
        ("  - {name: a, stage: prompt, expect: {action: allow}}\n", "cases[0]", "give the verdict"),
        (
            "  - {name: a, stage: prompt, level: Safe, error: timeout, expect: {action: allow}}\n",
            "cases[0].error",
            "give only one of 'level', 'raw' and 'error'",
        ),
        (
            '  - {name: a, stage: prompt, raw: "Safety: Safe", categories: [PII], '
            "expect: {action: allow}}\n",
            "cases[0].categories",
            "not used with 'raw'",
        ),
        (
            "  - {name: a, stage: prompt, error: timeout, reward: 1.0, expect: {action: allow}}\n",
            "cases[0].reward",
            "not used with 'error'",
        ),
        (
            "  - {name: a, stage: prompt, level: Safe, refusal: true, expect: {action: allow}}\n",
            "cases[0].refusal",
            "only applies to response cases",
        ),
        (
            "  - {name: a, stage: prompt, level: Safe, prompt: {level: Safe}, "
            "expect: {action: allow}}\n",
            "cases[0].prompt",
            "only applies to response cases",
        ),
        (
            "  - {name: a, stage: prompt, level: Safe, probabilities: {Refusal: 0.5}, "
            "expect: {action: allow}}\n",
            "cases[0].probabilities.Refusal",
            "P(Refusal) is judged only on responses",
        ),
        (
            "  - {name: a, stage: response, level: Unsafe, categories: [PII, Jailbreak], "
            "expect: {action: allow}}\n",
            "cases[0].categories[1]",
            "Jailbreak is judged only on prompts",
        ),
        (
            "  - {name: a, stage: prompt, level: Safe, probabilities: {Safe: 0.8, Unsafe: 0.3}, "
            "expect: {action: allow}}\n",
            "cases[0].probabilities",
            "the level probabilities add up to 1.1",
        ),
        (
            "  - {name: a, stage: prompt, level: Safe, probabilities: {Unsafe: 1.5}, "
            "expect: {action: allow}}\n",
            "cases[0].probabilities.Unsafe",
            "must be <= 1.0",
        ),
        (
            '  - {name: a, stage: prompt, raw: "Safty: Unsafe", expect: {action: allow}}\n',
            "cases[0].raw",
            "the guard parser cannot read this text",
        ),
        (
            "  - {name: a, stage: response, level: Safe, prompt: {categories: [PII]}, "
            "expect: {action: allow}}\n",
            "cases[0].prompt",
            "give the prompt's 'level' or its 'raw' guard text",
        ),
        (
            "  - {name: a, stage: prompt, level: Safe, expect: {action: allow, flags: [], "
            "flags_include: [x]}}\n",
            "cases[0].expect.flags_include",
            "give either 'flags'",
        ),
        (
            "  - {name: a, stage: prompt, level: Safe, "
            "expect: {action: allow, rule: x, not_rule: x}}\n",
            "cases[0].expect.not_rule",
            "can never pass",
        ),
        (GOOD_CASE + GOOD_CASE, "cases[1].name", "duplicate case name 'ok'"),
        (
            "  - {name: a, stage: prompt, level: Safe, reward: '1', expect: {action: allow}}\n",
            "cases[0].reward",
            "expected a number, got the text '1'",
        ),
    ],
)
def test_invalid_cases_are_located(case: str, field: str, message: str) -> None:
    with pytest.raises(CaseFileError) as info:
        load_cases_text(cases_text(case), "c.yaml")
    assert info.value.source == "c.yaml"
    assert info.value.field == field
    assert info.value.line is not None
    assert info.value.line >= 3
    assert message in info.value.reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the case file is empty; it needs 'version: 1' and a list of 'cases'"),
        ("version: 1\ncases: []\n", "cases: a case file needs at least one case"),
        ("cases:\n" + GOOD_CASE, "version: required key is missing"),
        ("version: 2\ncases:\n" + GOOD_CASE, "version: invalid value 2"),
        ("- a\n", "expected a mapping (key: value), got a list"),
        ("version: 1\nversion: 1\n", "duplicate key 'version'"),
        ("version: 1\ncases:\n\t- a\n", "invalid YAML"),
    ],
)
def test_invalid_documents(text: str, message: str) -> None:
    with pytest.raises(CaseFileError, match=re.escape(message)):
        load_cases_text(text, "c.yaml")


def test_case_file_error_is_a_policy_error() -> None:
    with pytest.raises(PolicyError):
        load_cases_text("", "c.yaml")


def test_unreadable_or_invalid_inputs_exit_2_and_run_nothing(
    tmp_path: Path, policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_cases(tmp_path, FAILING)
    missing = tmp_path / "missing.yaml"
    assert main(["policy", "test", str(policy_file), str(good), str(missing)]) == EXIT_ERROR
    out, err = capsys.readouterr()
    assert out == ""  # the good file's failing case is not run either
    assert err == f"{missing}: cannot read the case file: No such file or directory\n"

    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text(POLICY.replace("levels: [Unsafe]", "levls: [Unsafe]"))
    assert main(["policy", "test", str(bad_policy), str(good)]) == EXIT_ERROR
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{bad_policy}:19:12:")
    assert "unknown key 'levls'" in err


def test_case_lines_point_at_each_case() -> None:
    case_file: CaseFile = load_cases_text(FAILING, "c.yaml")
    assert [case.line for case in case_file.cases] == [3, 8]
    assert case_file.source == "c.yaml"


def test_expectation_action_is_typed() -> None:
    case = one(GOOD_CASE)
    assert case.expect.action is Action.ALLOW


def test_the_readme_example_runs_against_the_default_policy() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("# policies/tests/my-policy.cases.yaml")
    example = readme[start : readme.index("```", start)]
    results = run_cases(load_policy(POLICIES / "default.yaml"), load_cases_text(example))
    assert len(results) == 4
    assert [r.problems for r in results if not r.passed] == []
