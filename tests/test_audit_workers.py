"""Audit logs of a multi-worker gateway: a file and a chain per worker, read together.

Slots are claimed with real locks across real processes; the CLI reads the
files a configured path names and verifies each chain on its own.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from guardrail.audit import AuditFileError, JsonlSink, write_event
from guardrail.audit.workers import (
    claim_worker_slot,
    expand_logs,
    worker_log_path,
    worker_logs,
    worker_sink,
    worker_slot,
)
from guardrail.cli import main
from guardrail.policy import load_policy_text

ROOT = Path(__file__).resolve().parent.parent


def write_log(path: Path, events: int) -> None:
    with JsonlSink(path) as sink:
        for i in range(events):
            write_event(sink, "test.event", {"n": i})


def test_worker_files_are_named_by_slot_before_the_suffix(tmp_path: Path) -> None:
    assert worker_log_path("logs/audit.jsonl", 3) == Path("logs/audit.w3.jsonl")
    assert worker_log_path("audit", 0) == Path("audit.w0")
    assert worker_slot(tmp_path / "audit.w12.jsonl", tmp_path / "audit.jsonl") == 12
    assert worker_slot(tmp_path / "audit.w1.jsonl", tmp_path / "other.jsonl") is None
    assert worker_slot(tmp_path / "audit.wx.jsonl", tmp_path / "audit.jsonl") is None


def test_a_configured_path_names_the_file_and_its_worker_files(tmp_path: Path) -> None:
    base = tmp_path / "audit.jsonl"
    for name in ("audit.w10.jsonl", "audit.w2.jsonl", "audit.w2.jsonl.checkpoint", "x.jsonl"):
        (tmp_path / name).write_text("")
    workers = [str(tmp_path / "audit.w2.jsonl"), str(tmp_path / "audit.w10.jsonl")]
    assert [str(p) for p in worker_logs(base)] == workers  # by slot, not by name
    assert expand_logs([base]) == workers  # the base file itself does not exist
    base.write_text("")
    assert expand_logs([str(base), str(base)]) == [str(base), *workers]
    assert expand_logs([tmp_path]) == sorted(
        str(tmp_path / n) for n in ("audit.jsonl", "audit.w10.jsonl", "audit.w2.jsonl", "x.jsonl")
    )
    missing = tmp_path / "none.jsonl"
    assert expand_logs([missing]) == [str(missing)]  # reading it reports the missing file
    (tmp_path / "empty").mkdir()
    with pytest.raises(AuditFileError, match="empty: a directory without audit logs"):
        expand_logs([tmp_path / "empty"])


HOLDER = textwrap.dedent(
    """
    import sys
    from guardrail.audit.workers import claim_worker_slot
    print(claim_worker_slot(sys.argv[1]), flush=True)
    sys.stdin.read()  # hold the slot until the parent closes our stdin
    """
)


def slot_of(proc: subprocess.Popen[str]) -> int:
    """The slot a holder printed (within 60 s)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready, "the holder did not claim a slot within 60 s"
    return int(proc.stdout.readline())


def test_each_live_process_claims_its_own_slot_and_a_dead_ones_slot_is_reused(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.jsonl"
    assert claim_worker_slot(log) == 0
    assert claim_worker_slot(str(log)) == 0  # this process keeps its slot

    def holder() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    first, second = holder(), holder()
    try:
        left = slot_of(first)
        assert {left, slot_of(second)} == {1, 2}
        first.communicate(timeout=60)  # it exits: the system drops its lock
        third = holder()
        freed = slot_of(third)
        third.communicate(timeout=60)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.communicate(timeout=60)
    assert freed == left  # the lowest free slot: the one the first holder left


def test_a_worker_sink_writes_its_own_file_and_checkpoints(tmp_path: Path) -> None:
    policy = load_policy_text(
        f"version: 1\nname: w\naudit: {{path: {tmp_path / 'audit.jsonl'}, checkpoint_every: 1,"
        f" checkpoint_path: {tmp_path / 'cp' / 'audit.checkpoint'}}}\n"
    )
    sink = worker_sink(policy.audit)
    slot = claim_worker_slot(tmp_path / "audit.jsonl")
    write_event(sink, "test.event", {})
    sink.close()
    assert isinstance(sink, JsonlSink)
    assert sink.path == tmp_path / f"audit.w{slot}.jsonl"
    assert (tmp_path / "cp" / f"audit.w{slot}.checkpoint").exists()
    assert not (tmp_path / "audit.jsonl").exists()


def test_audit_commands_read_every_worker_file_and_verify_each_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "audit.jsonl"
    w0, w1 = worker_log_path(base, 0), worker_log_path(base, 1)
    write_log(w0, 2)
    write_log(w1, 3)
    assert main(["audit", "verify", str(base)]) == 0
    out = capsys.readouterr().out
    assert f"OK  {w0}  2 records (0 calls, 2 events), chain intact" in out
    assert f"OK  {w1}  3 records (0 calls, 3 events), chain intact" in out
    assert main(["audit", "stats", str(base), "--json", "--engine", "python"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 5
    assert main(["audit", "list", str(tmp_path), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5

    lines = w1.read_text().splitlines()
    lines[1] = lines[1].replace('"n":1', '"n":7')
    w1.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(base), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert [(r["path"], r["chain_ok"]) for r in report["logs"]] == [
        (str(w0), True),
        (str(w1), False),
    ]
    assert main(["audit", "verify", str(base), "--min-count", "2"]) == 2
    assert "--min-count anchors one chain, and 2 logs are given" in capsys.readouterr().err


def test_verify_checks_each_worker_file_against_its_own_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, checkpoints = tmp_path / "audit.jsonl", tmp_path / "audit.checkpoint"
    for slot, events in ((0, 2), (1, 3)):
        sink = JsonlSink(
            worker_log_path(base, slot),
            checkpoint_every=1,
            checkpoint_path=worker_log_path(checkpoints, slot),
        )
        for i in range(events):
            write_event(sink, "test.event", {"n": i})
        sink.close()
    assert main(["audit", "verify", str(base), "--checkpoint", str(checkpoints)]) == 0
    out = capsys.readouterr().out
    assert f"anchor      {worker_log_path(checkpoints, 1)}:3: ok, record 3 matches" in out
    # Cut a record from the end of worker 1: its own checkpoints catch it.
    w1 = worker_log_path(base, 1)
    w1.write_text("".join(w1.read_text().splitlines(keepends=True)[:-1]))
    assert main(["audit", "verify", str(base), "--checkpoint", str(checkpoints)]) == 1
    assert "records cut from the end" in capsys.readouterr().out
