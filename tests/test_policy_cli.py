"""``guardrail policy validate`` and ``guardrail policy schema``."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
from pathlib import Path

import pytest

from guardrail.cli import policy_cmd
from guardrail.policy import Policy

POLICIES = Path(__file__).resolve().parent.parent / "policies"

BROKEN = """\
version: 1
name: broken
rules:
  - id: a
    stage: prompt
    when:
      levls: [Unsafe]
    action: block
"""


def run(*argv: str) -> int:
    """Parse like the real CLI (only the policy subcommand registered) and run."""
    parser = argparse.ArgumentParser(prog="guardrail")
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    policy_cmd.add_parser(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_validate_shipped_policies(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(POLICIES / f"{name}.yaml") for name in ("default", "strict", "monitor")]
    assert run("policy", "validate", *files) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 3
    digest = hashlib.sha256(Path(files[0]).read_bytes()).hexdigest()[:8]
    count = len(Policy.default().rules)
    assert lines[0] == f"OK  {files[0]}  (default v1, {count} rules, sha256:{digest})"
    assert re.fullmatch(
        rf"OK  {re.escape(files[1])}  \(strict v1, \d+ rules, sha256:[0-9a-f]{{8}}\)", lines[1]
    )
    assert lines[2].startswith(f"OK  {files[2]}  (monitor v1, ")


def test_validate_reports_each_invalid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN, encoding="utf-8")
    one_rule = tmp_path / "one.yaml"
    one_rule.write_text(BROKEN.replace("levls", "levels"), encoding="utf-8")
    missing = tmp_path / "missing.yaml"
    code = run("policy", "validate", str(broken), str(one_rule), str(missing))
    assert code == 2  # an unreadable file is an I/O error, which outranks findings
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"OK  {one_rule}  (broken v1, 1 rule, "
        f"sha256:{hashlib.sha256(one_rule.read_bytes()).hexdigest()[:8]})"
    ]
    assert err.splitlines() == [
        f"{broken}:7:7: rules[0].when.levls: unknown key 'levls'; did you mean 'levels'?",
        f"{missing}: cannot read the policy file: No such file or directory",
    ]


def test_validate_exit_status_says_findings_or_io_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN, encoding="utf-8")
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(BROKEN.replace("levls", "levels"), encoding="utf-8")
    assert run("policy", "validate", str(fixed)) == 0
    assert run("policy", "validate", str(fixed), str(broken)) == 1
    assert run("policy", "validate", str(fixed), str(tmp_path)) == 2  # a directory
    capsys.readouterr()


def test_validate_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(BROKEN.encode()))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert run("policy", "validate", "-") == 1
    assert capsys.readouterr().err.startswith("<stdin>:7:7: rules[0].when.levls: ")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (("policy",), ("policy", "validate"), ("policy", "frobnicate")):
        with pytest.raises(SystemExit) as info:
            run(*argv)
        assert info.value.code == 2
    capsys.readouterr()


def test_schema_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "schema") == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "guardrail policy"
    assert {"version", "name", "rules", "defaults", "failure"} <= set(schema["properties"])


def test_schema_to_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "policy.schema.json"
    assert run("policy", "schema", "--output", str(target)) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"wrote {target}\n"
    assert (
        json.loads(target.read_text(encoding="utf-8"))["$defs"]["Rule"]["additionalProperties"]
        is False
    )
    unwritable = tmp_path / "no-such-dir" / "schema.json"
    assert run("policy", "schema", "-o", str(unwritable)) == 2
    assert capsys.readouterr().err.startswith(f"guardrail: error: cannot write {unwritable}: ")


def test_through_the_real_cli(capsys: pytest.CaptureFixture[str]) -> None:
    # The dispatcher imports every subcommand; those are written elsewhere.
    pytest.importorskip("guardrail.cli.check_cmd")
    pytest.importorskip("guardrail.cli.audit_cmd")
    from guardrail.cli import main

    assert main(["policy", "validate", str(POLICIES / "default.yaml")]) == 0
    assert capsys.readouterr().out.startswith("OK  ")


def test_validate_json_gives_one_object_per_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN, encoding="utf-8")
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(BROKEN.replace("levls", "levels"), encoding="utf-8")
    assert run("policy", "validate", "--json", str(fixed), str(broken)) == 1
    out, err = capsys.readouterr()
    first, second = (json.loads(line) for line in out.splitlines())
    assert first == {
        "file": str(fixed),
        "ok": True,
        "error": None,
        "name": "broken",
        "version": 1,
        "rules": 1,
        "sha256": hashlib.sha256(fixed.read_bytes()).hexdigest(),
    }
    message = f"{broken}:7:7: rules[0].when.levls: unknown key 'levls'; did you mean 'levels'?"
    assert second == {"file": str(broken), "ok": False, "error": message}
    assert err.splitlines() == [message]  # the located message stays on stderr too
