"""The CLI's one exit-status rule, and never a traceback.

0 ok, 1 findings, 2 usage or I/O error: each command is run in a real
subprocess (as a user runs it) with bad input, and its stderr must hold one
``guardrail: error`` line or the command's own report, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from guardrail.cli import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, main

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str | bytes, cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": ""}
    return subprocess.run(
        [sys.executable, "-m", "guardrail", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-bad-input")
    (root / "garbage.bin").write_bytes(b"\x00\x01\xff\xfe garbage\n{not json\n")
    (root / "not-utf8.yaml").write_bytes(b"version: 1\nname: \xed\xb2\x80\n")
    (root / "control.yaml").write_bytes(b"version: 1\nname: a\x07b\n")
    (root / "deep.yaml").write_text("[" * 10_000 + "]" * 10_000)
    (root / "huge.yaml").write_text("k: v\n" * 20_000)
    (root / "a-directory").mkdir()
    (root / "record.jsonl").write_bytes(b'{"schema_version":1,"note":"\\udc80"}\n')
    return root


# (argv, expected exit status); every one is bad input of some kind.
CASES: list[tuple[tuple[str | bytes, ...], int]] = [
    (("bogus",), EXIT_ERROR),
    ((), EXIT_ERROR),
    (("check",), EXIT_ERROR),
    (("check", "hi", "--timeout", "soon"), EXIT_ERROR),
    (("check", "hi", "--model", "does-not-exist-dir/"), EXIT_ERROR),
    (("check", "hi", "--base-url", "ftp://guard"), EXIT_ERROR),
    (("check", b"hi \xff", "--base-url", "http://127.0.0.1:9/v1", "--timeout", "1"), EXIT_ERROR),
    (("policy",), EXIT_ERROR),
    (("policy", "validate"), EXIT_ERROR),
    (("policy", "validate", "missing.yaml"), EXIT_ERROR),
    (("policy", "validate", "a-directory"), EXIT_ERROR),
    (("policy", "validate", b"bad-\xff-name.yaml"), EXIT_ERROR),
    (("policy", "validate", "garbage.bin"), EXIT_FINDINGS),
    (("policy", "validate", "not-utf8.yaml"), EXIT_FINDINGS),
    (("policy", "validate", "control.yaml"), EXIT_FINDINGS),
    (("policy", "validate", "deep.yaml"), EXIT_FINDINGS),
    (("policy", "validate", "huge.yaml"), EXIT_FINDINGS),
    (("policy", "validate", "-"), EXIT_FINDINGS),  # stdin: garbage
    (("policy", "schema", "--output", "a-directory"), EXIT_ERROR),
    (("policy", "schema", "--output", "no/such/dir/schema.json"), EXIT_ERROR),
    (("eval",), EXIT_ERROR),
    (("eval", "missing.jsonl"), EXIT_ERROR),
    (("eval", "a-directory"), EXIT_ERROR),
    (("eval", "a-directory", "--format", "csv"), EXIT_ERROR),
    (("eval", "garbage.bin", "--format", "jsonl"), EXIT_ERROR),
    (("eval", "garbage.bin", "--format", "csv"), EXIT_ERROR),
    (("eval", "record.jsonl"), EXIT_ERROR),
    (("eval", "record.jsonl", "--batch-size", "many"), EXIT_ERROR),
    (("audit", "verify", "missing.jsonl"), EXIT_ERROR),
    (("audit", "verify", "a-directory"), EXIT_ERROR),
    (("audit", "verify", "garbage.bin"), EXIT_FINDINGS),
    (("audit", "verify", "record.jsonl"), EXIT_FINDINGS),
    (("audit", "search", "garbage.bin"), EXIT_ERROR),
    (("audit", "search", "record.jsonl", "--since", "yesterday"), EXIT_ERROR),
    (("audit", "search", "missing.jsonl"), EXIT_ERROR),
    (("audit", "summary", "garbage.bin"), EXIT_ERROR),
    (("audit", "summary", "record.jsonl"), EXIT_ERROR),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "status"),
    CASES,
    ids=[" ".join(a if isinstance(a, str) else "<bytes>" for a in argv) for argv, _ in CASES],
)
def test_bad_input_exits_by_the_rule_without_a_traceback(
    files: Path, argv: tuple[str | bytes, ...], status: int
) -> None:
    done = cli(*argv, cwd=files, stdin=b"\x00\xff not a policy")
    stderr = done.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr
    assert done.returncode == status, stderr
    assert (stderr + done.stdout.decode("utf-8", "replace")).strip()  # said what was wrong
    if status == EXIT_ERROR and argv and argv[0] != "bogus" and "usage:" not in stderr:
        assert len(stderr.strip().splitlines()) == 1  # one line


def test_a_full_disk_is_one_line(files: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "guardrail", "policy", "schema"],
            stdout=full,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=120,
            check=False,
        )
    assert done.returncode == EXIT_ERROR
    assert done.stderr.decode() == "guardrail: error: No space left on device\n"


def test_ok_is_zero_and_help_states_the_rule(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "validate", str(ROOT / "policies" / "default.yaml")]) == EXIT_OK
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == EXIT_OK
    out = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 ok; 1 findings" in out
    assert "2 usage or I/O error" in out


def test_an_unexpected_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from guardrail.cli import policy_cmd

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something nobody planned for")

    monkeypatch.setattr(policy_cmd, "policy_json_schema", broken)
    assert main(["policy", "schema"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err == "guardrail: error: unexpected RuntimeError: something nobody planned for\n"
