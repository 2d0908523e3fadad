"""Crash recovery of JSONL audit logs: a torn last line is moved aside, the app carries on."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from test_audit import allow_record, mixed_records, write_log

from guardrail.audit import (
    GENESIS_HASH,
    QUARANTINE_INFIX,
    JsonlSink,
    read_entries,
    read_records,
    summarize,
    verify_file,
    verify_log,
)
from guardrail.cli import audit_cmd
from guardrail.errors import AuditError
from guardrail.guard import Guard
from guardrail.policy import Policy
from guardrail.testing import ScriptedClassifier
from guardrail.types import Action

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def torn_log(path: Path, n: int = 3, cut: int = 50) -> tuple[list[str], bytes]:
    """A log of ``n`` records whose last write was cut after ``cut`` bytes (a crash)."""
    lines = write_log(path, mixed_records(n + 1))
    torn = lines[-1].encode("utf-8")[:cut]
    path.write_bytes("".join(lines[:-1]).encode("utf-8") + torn)
    return lines[:-1], torn


def quarantine_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if QUARANTINE_INFIX in p.name)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------- unit


def test_a_torn_line_is_moved_aside_and_a_recovery_record_chained(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    kept, torn = torn_log(path)
    head = json.loads(kept[-1])["hash"]

    sink = JsonlSink(path)

    # The torn bytes are in exactly one quarantine file next to the log...
    (quarantine,) = quarantine_files(tmp_path)
    assert quarantine.name.startswith("audit.jsonl.quarantine-")
    assert quarantine.read_bytes() == torn
    # ...the records before them are untouched, and a recovery record names them.
    data = lines_of(path)
    assert [json.dumps(d) for d in data[:3]] == [json.dumps(json.loads(x)) for x in kept]
    recovery = data[3]
    assert recovery["kind"] == "recovery"
    assert recovery["type"] == "torn_line"
    assert recovery["prev_hash"] == head
    assert recovery["details"] == {
        "quarantine": quarantine.name,
        "offset": sum(len(x.encode()) for x in kept),
        "bytes": len(torn),
        "sha256": hashlib.sha256(torn).hexdigest(),
        "reason": "incomplete last line (no newline at its end): a write was interrupted",
    }
    assert sink.recoveries == (recovery["details"],)
    assert sink.head == recovery["hash"]

    # The app carries on: the next record chains after the recovery record.
    sink.write(allow_record(9))
    sink.close()
    report = verify_log(path)
    assert report.ok
    assert report.count == 5
    assert dict(report.kinds) == {"call": 4, "recovery": 1}
    (note,) = report.recoveries
    assert (note.record, note.quarantine, note.bytes, note.file) == (
        4,
        quarantine.name,
        len(torn),
        "matches",
    )


def test_a_log_that_is_only_a_torn_line_restarts_from_genesis(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"schema_version":1,"time":"2026-')
    with JsonlSink(path) as sink:
        sink.write(allow_record(0))
    first, second = lines_of(path)
    assert first["kind"] == "recovery"
    assert first["prev_hash"] == GENESIS_HASH
    assert first["details"]["offset"] == 0
    assert second["prev_hash"] == first["hash"]
    assert verify_file(path).count == 2


def test_a_long_torn_line_is_found_across_read_blocks(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    big = allow_record(1, prompt="x" * 30000, content_mode="full")
    lines = write_log(path, [allow_record(0), big])
    torn = lines[1].encode()[:20000]  # a long record cut mid-way, after a long one
    path.write_bytes("".join(lines).encode() + torn)
    with JsonlSink(path) as sink:
        assert sink.recoveries[0]["bytes"] == 20000
    assert quarantine_files(tmp_path)[0].read_bytes() == torn
    assert verify_file(path).count == 3


def test_a_writer_that_finds_a_torn_line_under_it_recovers_once(tmp_path: Path) -> None:
    # Two sinks on one file, as two worker processes: one "crashes" mid-write (the torn
    # bytes appear at the end), the other's next write recovers, then both carry on.
    path = tmp_path / "audit.jsonl"
    a, b = JsonlSink(path), JsonlSink(path)
    a.write(allow_record(0))
    b.write(allow_record(1))
    with path.open("ab") as fh:
        fh.write(b'{"schema_version":1,"time":"2026-11-03T')
    a.write(allow_record(2))
    b.write(allow_record(3))
    a.close()
    b.close()
    assert len(a.recoveries) == 1
    assert b.recoveries == ()
    assert len(quarantine_files(tmp_path)) == 1
    report = verify_log(path)
    assert report.ok
    assert dict(report.kinds) == {"call": 4, "recovery": 1}
    assert [r.request_id for r in read_records(path)] == [
        "req0000",
        "req0001",
        "req0002",
        "req0003",
    ]


def test_a_failed_rollback_is_recovered_by_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write that fails half-way and cannot even be truncated away leaves a torn line
    # in a live process: the next write moves it aside instead of refusing the log.
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path)
    sink.write(allow_record(0))
    real_write = os.write
    calls = {"n": 0}

    def half_then_fail(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "write", half_then_fail)
    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(AuditError, match="No space left"):
        sink.write(allow_record(1))
    monkeypatch.undo()
    sink.write(allow_record(2))
    sink.close()
    assert len(sink.recoveries) == 1
    report = verify_log(path)
    assert report.ok
    assert [r.request_id for r in read_records(path)] == ["req0000", "req0002"]


def test_readers_and_the_cli_report_the_recovery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    torn_log(path)
    with JsonlSink(path) as sink:
        sink.write(allow_record(7))
    entries = list(read_entries(path))
    assert [e.kind for e in entries] == ["call", "call", "call", "recovery", "call"]
    assert len(list(read_records(path))) == 4  # calls only
    summary = summarize(entries)
    assert summary.records == 4
    assert summary.by_kind == {"call": 4, "recovery": 1}
    assert summary.by_event == {"torn_line": 1}

    args = audit_cmd_args("verify", str(path))
    assert args.func(args) == 0  # a recovery is reported, not a failure
    out = capsys.readouterr().out
    assert out.startswith(f"OK  {path}  5 records (4 calls, 1 recovery), chain intact\n")
    assert "recovery    record 4 (" in out
    assert "file matches" in out

    quarantine_files(tmp_path)[0].write_bytes(b"something else")
    assert args.func(args) == 0
    assert "file differs" in capsys.readouterr().out
    quarantine_files(tmp_path)[0].unlink()
    assert args.func(args) == 0
    assert "file missing" in capsys.readouterr().out


def test_verify_reports_an_unrecovered_torn_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    torn_log(path)
    args = audit_cmd_args("verify", str(path))
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}:4: incomplete last line (not valid JSON, no newline")
    assert "moves it aside" in out


def audit_cmd_args(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="guardrail")
    audit_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["audit", *argv])


# ---------------------------------------------------------------------- with a Guard


def jsonl_policy(path: Path, **audit: Any) -> Policy:
    settings = {"sink": "jsonl", "path": str(path), **audit}
    return Policy.default().model_copy(update={"audit": settings})


def test_a_guard_reopened_on_a_torn_log_works_and_the_chain_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with Guard(jsonl_policy(path), classifier=ScriptedClassifier()) as guard:
        for i in range(3):
            guard.check_prompt([{"role": "user", "content": f"hello {i}"}])
    data = path.read_bytes()
    path.write_bytes(data + data[: len(data) // 5])  # a crash in the middle of a write

    with Guard(jsonl_policy(path), classifier=ScriptedClassifier()) as guard:
        decision = guard.check_prompt([{"role": "user", "content": "after the crash"}])
    assert decision.action is Action.ALLOW
    report = verify_log(path)
    assert report.ok
    assert dict(report.kinds) == {"call": 4, "recovery": 1}
    assert report.recoveries[0].file == "matches"


@pytest.mark.slow
def test_two_processes_racing_to_open_a_torn_log_recover_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    kept, _ = torn_log(path)
    record = tmp_path / "record.json"
    record.write_text(json.dumps(allow_record(100).to_json_dict()), encoding="utf-8")
    script = textwrap.dedent(
        f"""
        import json, sys
        from guardrail.audit.sinks import JsonlSink
        data = json.loads(open({str(record)!r}, encoding="utf-8").read())
        print("ready", flush=True)
        sys.stdin.readline()  # both processes start opening together
        with JsonlSink({str(path)!r}) as sink:
            sink.write_json(data)
            print(len(sink.recoveries), flush=True)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline() == "ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted(int(o) for o in outs) == [0, 1]  # exactly one process recovered
    assert len(quarantine_files(tmp_path)) == 1
    report = verify_log(path)
    assert report.ok
    assert dict(report.kinds) == {"call": len(kept) + 2, "recovery": 1}


CHILD = """
import sys, threading, time
sys.path.insert(0, {tests!r})
from test_audit_recovery import jsonl_policy
from pathlib import Path
from guardrail.guard import Guard
from guardrail.testing import ScriptedClassifier

pad = "x" * 20000  # long records: a kill may land inside a write
guard = Guard(jsonl_policy(Path({path!r}), fsync=True, content="full"),
              classifier=ScriptedClassifier())
deadline = time.monotonic() + 30
out = threading.Lock()

def calls(t):
    for i in range(500):  # bounded in count and time, in case the kill never comes
        if time.monotonic() > deadline:
            return
        guard.check_prompt([{{"role": "user", "content": f"call {{t}}-{{i}} " + pad}}])
        with out:  # acknowledged: the record was written and synced
            sys.stdout.write(f"{{t}}-{{i}}\\n")
            sys.stdout.flush()

threads = [threading.Thread(target=calls, args=(t,)) for t in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


@pytest.mark.slow
def test_sigkill_under_load_with_fsync_loses_no_acknowledged_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tests=str(TESTS), path=str(path))],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged: list[str] = []
    start = time.monotonic()
    for line in child.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) >= 80 or time.monotonic() - start > 40:
            break
    child.send_signal(signal.SIGKILL)  # mid-run: four threads are still writing
    rest, _ = child.communicate(timeout=30)
    acknowledged += rest.split()  # printed before the kill landed
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 80

    # Every acknowledged record is in the log, in whole lines before any torn tail.
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    prompts = [json.loads(x)["content"]["prompt"] for x in complete.decode().splitlines()]
    written = [p.split()[1] for p in prompts]
    assert set(acknowledged) <= set(written)
    assert len(set(written)) == len(written)

    # The next start recovers by itself, whether or not the kill tore a line.
    with Guard(jsonl_policy(path, fsync=True), classifier=ScriptedClassifier()) as guard:
        assert guard.check_prompt([{"role": "user", "content": "restart"}]).action is Action.ALLOW
    report = verify_log(path)
    assert report.ok
    assert report.kinds.get("call") == len(written) + 1
    if raw == complete:
        assert report.recoveries == ()
    else:
        (note,) = report.recoveries
        assert note.bytes == len(raw) - len(complete)
        assert note.file == "matches"


CRASHING_CHILD = """
import resource, signal, sys
sys.path.insert(0, {tests!r})
from test_audit_recovery import jsonl_policy
from pathlib import Path
from guardrail.guard import Guard
from guardrail.testing import ScriptedClassifier

resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the kernel's default kills
path = Path({path!r})
guard = Guard(jsonl_policy(path, fsync=True, content="full"), classifier=ScriptedClassifier())
for i in range(5):
    guard.check_prompt([{{"role": "user", "content": f"call {{i}}"}}])
    print(i, flush=True)
# The kernel lets 300 more bytes into the file, then kills the process with SIGXFSZ
# on its next write: a real death in the middle of writing a record.
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 300, hard))
guard.check_prompt([{{"role": "user", "content": "never acknowledged " + "y" * 2000}}])
print("not reached", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics")
def test_a_process_killed_mid_write_leaves_a_torn_line_the_next_start_recovers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_CHILD.format(tests=str(TESTS), path=str(path))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGXFSZ, done.stderr
    assert done.stdout.split() == ["0", "1", "2", "3", "4"]
    raw = path.read_bytes()
    assert not raw.endswith(b"\n")  # torn

    with Guard(jsonl_policy(path), classifier=ScriptedClassifier()) as guard:
        assert guard.check_prompt([{"role": "user", "content": "restart"}]).action is Action.ALLOW
    report = verify_log(path)
    assert report.ok
    (note,) = report.recoveries
    assert (note.record, note.bytes, note.file) == (6, 300, "matches")
    prompts = [r.content.prompt for r in read_records(path)]
    restart = "sha256:" + hashlib.sha256(b"restart").hexdigest()  # content: hash on restart
    assert prompts == [f"call {i}" for i in range(5)] + [restart]
