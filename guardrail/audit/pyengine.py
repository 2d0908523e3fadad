"""The Python engine of :func:`~guardrail.audit.stats.compute_stats` over the logs.

One streaming pass over the logs' record dicts (:mod:`~guardrail.audit.scan`), no
models built: :class:`PythonTally` counts each record by its facts
(:func:`~guardrail.audit.tally.record_facts`) and fills the same
:class:`~guardrail.audit.tally.Tallies` as the DuckDB and index engines, so
:func:`~guardrail.audit.stats.finish` derives every figure the same way.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from guardrail.audit.scan import iter_lines, parse_line
from guardrail.audit.tally import (
    LATENCY_NAMES,
    RecordKey,
    Tallies,
    histogram,
    nearest_rank,
    record_facts,
)

__all__ = ["CALL_LATENCIES", "PythonTally", "python_tallies"]

CALL_LATENCIES = ("guard", "upstream", "total")
"""The latencies of a whole call, in the order :func:`record_facts` gives them."""


class PythonTally:
    """Counts records one at a time by their facts (the Python engines' hot loop).

    Records are counted per ``(time bucket, key)`` and latencies per microsecond;
    :meth:`tallies` turns each distinct pair into counts once.
    """

    def __init__(self, bucket_ms: int) -> None:
        self.bucket_ms = bucket_ms
        self.groups: Counter[tuple[int, RecordKey]] = Counter()
        self.lat: dict[str, Counter[int]] = {name: Counter() for name in LATENCY_NAMES}
        self.first_ms: int | None = None
        self.last_ms: int | None = None

    def add(self, data: dict[str, Any]) -> None:
        """Count one record dict (errors as :func:`record_facts`)."""
        ms, key, times, checks = record_facts(data)
        self.groups[ms // self.bucket_ms, key] += 1
        if self.first_ms is None or ms < self.first_ms:
            self.first_ms = ms
        if self.last_ms is None or ms > self.last_ms:
            self.last_ms = ms
        lat = self.lat
        for stage, us in checks:
            lat.setdefault("guard." + str(stage), Counter())[us] += 1
        for name, value in zip(CALL_LATENCIES, times, strict=True):
            if value is not None:
                lat[name][value] += 1

    def tallies(self) -> Tallies:
        """The counts collected so far."""
        t = Tallies(bucket_ms=self.bucket_ms)
        for (index, key), n in self.groups.items():
            t.add_key(index, key, n)
        if self.first_ms is not None and self.last_ms is not None:
            t.see_time(self.first_ms, self.last_ms)
        t.latency = {name: nearest_rank(c) for name, c in self.lat.items() if c}
        t.latency_hist = {name: histogram(c) for name, c in self.lat.items() if c}
        return t


def python_tallies(paths: Sequence[str | os.PathLike[str]], bucket_ms: int) -> Tallies:
    """The Python engine: one streaming pass over the logs' record dicts."""
    tally = PythonTally(bucket_ms)
    for p in paths:
        path = os.fspath(p)
        for number, line in iter_lines(path):
            data = parse_line(path, number, line)
            if data is None:
                continue
            try:
                tally.add(data)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                from guardrail.audit.reader import AuditFileError

                raise AuditFileError(
                    path, f"not an audit record: {type(exc).__name__}: {exc}", line=number
                ) from None
    return tally.tallies()
