"""The gateway's Prometheus metrics, kept in plain counters and written as text format 0.0.4.

One :class:`Metrics` per worker process (the event loop is its only writer, so
no lock is needed); a scrape reads the worker that answers it, as with any
multi-process server without a shared registry. Series:

- ``guardrail_gateway_requests_total{route,status}``: requests answered, by HTTP status;
- ``guardrail_gateway_actions_total{policy,action}``: the guard's final action per call;
- ``guardrail_gateway_flags_total{policy,flag}``: flags attached to calls;
- ``guardrail_gateway_guard_latency_seconds{stage}``: each guard check (histogram);
- ``guardrail_gateway_request_duration_seconds{route}``: whole requests (histogram);
- ``guardrail_gateway_in_flight``: requests being served now;
- ``guardrail_gateway_breaker_state{policy,state}``: 1 for the guard breaker's state.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping

from guardrail.report import GuardReport

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Histogram", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format's media type."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the latency histograms' buckets."""

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = [*labels, *extra]
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


class Histogram:
    """Cumulative buckets, a sum and a count, per label set."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self._series: dict[Labels, list[float]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        """Count one observation."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0] * (len(self.buckets) + 3)
        series[bisect.bisect_left(self.buckets, value)] += 1
        series[-2] += value
        series[-1] += 1

    def lines(self, name: str) -> Iterable[str]:
        """The series' sample lines."""
        for labels, series in sorted(self._series.items()):
            running = 0.0
            for bound, count in zip(self.buckets, series, strict=False):
                running += count
                yield f"{name}_bucket{_labels(labels, [('le', repr(bound))])} {running:g}"
            yield f"{name}_bucket{_labels(labels, [('le', '+Inf')])} {series[-1]:g}"
            yield f"{name}_sum{_labels(labels)} {series[-2]:.6f}"
            yield f"{name}_count{_labels(labels)} {series[-1]:g}"


class Metrics:
    """The counters of one gateway process."""

    def __init__(self) -> None:
        self.requests: defaultdict[Labels, int] = defaultdict(int)
        self.actions: defaultdict[Labels, int] = defaultdict(int)
        self.flags: defaultdict[Labels, int] = defaultdict(int)
        self.guard_latency = Histogram()
        self.duration = Histogram()
        self.in_flight = 0

    def answered(self, route: str, status: int, seconds: float) -> None:
        """A request was answered (for a stream: its headers were sent)."""
        self.requests[(("route", route), ("status", str(status)))] += 1
        self.duration.observe((("route", route),), seconds)

    def guarded(self, policy: str, report: GuardReport) -> None:
        """A guarded call ended: its action, flags and checks."""
        self.actions[(("policy", policy), ("action", report.action.value))] += 1
        for flag in report.flags:
            self.flags[(("policy", policy), ("flag", flag))] += 1
        for outcome in report.outcomes:
            self.guard_latency.observe((("stage", outcome.stage.value),), outcome.latency_s)

    def render(self, breakers: Mapping[str, str | None]) -> bytes:
        """The text exposition; ``breakers`` maps a policy to its guard breaker's state."""
        out: list[str] = []

        def counter(name: str, help_text: str, values: Mapping[Labels, int]) -> None:
            out.extend((f"# HELP {name} {help_text}", f"# TYPE {name} counter"))
            out.extend(f"{name}{_labels(k)} {v}" for k, v in sorted(values.items()))

        counter("guardrail_gateway_requests_total", "Requests answered.", self.requests)
        counter("guardrail_gateway_actions_total", "Final guard action per call.", self.actions)
        counter("guardrail_gateway_flags_total", "Flags attached to calls.", self.flags)
        for name, help_text, hist in (
            ("guardrail_gateway_guard_latency_seconds", "Guard check latency.", self.guard_latency),
            ("guardrail_gateway_request_duration_seconds", "Request duration.", self.duration),
        ):
            out.extend((f"# HELP {name} {help_text}", f"# TYPE {name} histogram"))
            out.extend(hist.lines(name))
        name = "guardrail_gateway_in_flight"
        out.extend((f"# HELP {name} Requests being served.", f"# TYPE {name} gauge"))
        out.append(f"{name} {self.in_flight}")
        name = "guardrail_gateway_breaker_state"
        out.append(f"# HELP {name} The guard circuit breaker's state (1 for the current one).")
        out.append(f"# TYPE {name} gauge")
        for policy, state in sorted(breakers.items()):
            if state is None:
                continue
            for each in ("closed", "half_open", "open"):
                labels = (("policy", policy), ("state", each))
                out.append(f"{name}{_labels(labels)} {int(each == state)}")
        return ("\n".join(out) + "\n").encode()
