"""One JSONL audit log per worker process: its name, its slot, and finding a log's worker files.

A gateway served by several worker processes (``guardrail serve --workers N``)
gives each worker its own file, so each keeps its own hash chain and no worker
waits on another's file lock: the policy's ``audit.path`` ``audit.jsonl`` becomes
``audit.w0.jsonl``, ``audit.w1.jsonl``... (``.w<slot>`` before the last suffix;
an explicit ``checkpoint_path`` is renamed the same way, the default one follows
its log).

**Slots.** A worker claims the lowest slot that no live process holds: a POSIX
lock on byte ``slot`` of ``<path>.workers.lock``, held for the process's life and
released by the system when the process ends, however it ends. A restarted
gateway therefore appends to the same N files, each resuming its own chain; a
rolling restart (a new worker started before the old one stops) briefly uses
slot N. Within one process, every sink of one path shares the process's slot.
Where ``fcntl`` is missing (Windows), the slot is the process id.

**Reading.** :func:`expand_logs` turns a log's configured path into the file
itself (when it exists) and its worker files, and a directory into the JSONL logs
it holds, so ``guardrail audit verify audit.jsonl`` checks every worker's chain,
each on its own, and ``audit stats audit.jsonl`` adds them up.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

from guardrail.audit.keys import AuditKey
from guardrail.audit.reader import AuditFileError
from guardrail.audit.sinkbase import AuditSink
from guardrail.audit.sinks import AuditSettings, sink_from_settings
from guardrail.errors import AuditError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the process id is the slot
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_SUFFIX",
    "MAX_SLOTS",
    "claim_worker_slot",
    "expand_logs",
    "worker_log_path",
    "worker_logs",
    "worker_sink",
    "worker_slot",
]

LOCK_SUFFIX = ".workers.lock"
"""The slot lock file is the log's path with this appended."""

MAX_SLOTS = 4096
"""The most worker slots one log has (a claim past it fails)."""

_LOG_SUFFIXES = (".jsonl", ".jsonl.gz")

_claims: dict[str, tuple[int, int]] = {}  # lock file -> (its descriptor, the slot held)
_claims_lock = threading.Lock()


def worker_log_path(path: str | os.PathLike[str], slot: int) -> Path:
    """The file of worker ``slot``: ``audit.jsonl`` -> ``audit.w3.jsonl`` (``a`` -> ``a.w3``)."""
    base = Path(path)
    return base.with_name(f"{base.stem}.w{slot}{base.suffix}")


def _sibling_pattern(base: Path) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(base.stem)}\.w(\d+){re.escape(base.suffix)}$")


def worker_logs(path: str | os.PathLike[str]) -> list[Path]:
    """The worker files of the log configured as ``path``, by slot (none: ``[]``)."""
    base = Path(path)
    pattern = _sibling_pattern(base)
    try:
        names = os.listdir(base.parent)
    except OSError:
        return []
    found = [(int(m.group(1)), n) for n in names if (m := pattern.match(n)) is not None]
    return [base.with_name(name) for _, name in sorted(found)]


def worker_slot(log: str | os.PathLike[str], path: str | os.PathLike[str]) -> int | None:
    """The slot of ``log`` when it is a worker file of the log configured as ``path``."""
    base, file = Path(path), Path(log)
    match = _sibling_pattern(base).match(file.name)
    if match is None or file.parent != base.parent:
        return None
    return int(match.group(1))


def expand_logs(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The log files that paths name, in order, each once.

    A directory names its ``*.jsonl`` and ``*.jsonl.gz`` files (by name), and
    :class:`~guardrail.audit.reader.AuditFileError` is raised when it has none; a file
    names itself and its worker files (:func:`worker_logs`); a path that does not
    exist names its worker files, or, when it has none, itself (so reading it
    reports the missing file).
    """
    out: dict[str, None] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            try:
                logs = sorted(p for p in path.iterdir() if p.name.endswith(_LOG_SUFFIXES))
            except OSError as exc:
                raise AuditFileError(path, f"cannot list the directory: {exc.strerror}") from exc
            logs = [p for p in logs if p.is_file()]
            if not logs:
                raise AuditFileError(path, "a directory without audit logs (*.jsonl, *.jsonl.gz)")
            out.update((str(p), None) for p in logs)
            continue
        workers = worker_logs(path)
        if path.exists() or not workers:
            out[os.fspath(given)] = None
        out.update((str(p), None) for p in workers)
    return list(out)


def claim_worker_slot(path: str | os.PathLike[str]) -> int:
    """Claim this process's slot for the log at ``path``: the lowest no live process holds.

    Raises :class:`~guardrail.errors.AuditError` when the lock file cannot be
    opened or every slot is taken.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return os.getpid()
    lock = Path(path).with_name(Path(path).name + LOCK_SUFFIX)
    key = str(lock.resolve())
    with _claims_lock:
        held = _claims.get(key)
        if held is not None:
            return held[1]
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise AuditError(f"{lock}: cannot open the worker slot lock: {exc}") from exc
        for slot in range(MAX_SLOTS):
            try:
                # A byte-range lock, not flock: one file holds every slot, and the
                # system drops the process's locks when it exits.
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
            except OSError:
                continue
            _claims[key] = (fd, slot)
            return slot
        os.close(fd)
        raise AuditError(f"{lock}: all {MAX_SLOTS} worker slots are held by live processes")


def worker_sink(
    config: AuditSettings, *, key: AuditKey | None = None, logger: object = None
) -> AuditSink:
    """The sink of a policy's ``audit`` section in a worker process.

    A ``jsonl`` sink writes this process's worker file (its slot claimed with
    :func:`claim_worker_slot`), with its own checkpoints; other sinks are the
    policy's own (stdout and logger sinks chain per process already).
    """
    if config.sink != "jsonl":
        return sink_from_settings(config.sink, None, config.fsync, logger)
    slot = claim_worker_slot(config.path)
    checkpoints = config.checkpoint_path
    return sink_from_settings(
        "jsonl",
        worker_log_path(config.path, slot),
        config.fsync,
        logger,
        checkpoint_every=config.checkpoint_every,
        checkpoint_path=None if checkpoints is None else worker_log_path(checkpoints, slot),
        key=key,
    )
