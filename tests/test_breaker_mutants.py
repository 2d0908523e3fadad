"""The breaker's state machine, pinned where mutation testing found it unpinned.

Each test names what it pins: the failure-rate window's tenths and their exact
boundaries, calls overdue while still running (noticed by the next acquire,
success or failure), stale outcomes after transitions, and the words and fields
of what the breaker reports. ``test_breaker.py`` covers the behaviour by topic;
these are the edge cases a changed comparison or constant would slip past.
"""

from __future__ import annotations

import pytest
from test_breaker import CLOSED, HALF, OPEN, Harness

from guardrail.breaker import BreakerSettings, CircuitBreaker
from guardrail.errors import CircuitOpenError, GuardConnectionError

OVERDUE = "no answer within its deadline"


def rate_harness(**settings: object) -> Harness:
    """A breaker opened by its failure rate only: 20 s window (2 s tenths), 2 calls, 50 %."""
    defaults: dict[str, object] = {
        "failures": None,
        "failure_rate": 0.5,
        "window_s": 20,
        "min_calls": 2,
    }
    return Harness(**{**defaults, **settings})


# ---------------------------------------------------------------- the rate window


def test_failures_anywhere_in_the_window_count_toward_the_rate() -> None:
    h = rate_harness(min_calls=3)
    h.fail()
    h.clock.advance(9)
    h.ok()
    h.clock.advance(9)  # 18 s after the first failure: still inside the 20 s window
    h.fail()
    assert h.breaker.state is OPEN
    assert (h.transitions[-1].window_calls, h.transitions[-1].window_failures) == (3, 2)


def play(h: Harness, now: float, *calls: str) -> None:
    """At clock time ``now``, make each call: ``"ok"`` succeeds, ``"fail"`` fails."""
    h.clock.now = now
    for call in calls:
        h.ok() if call == "ok" else h.fail()


def window(h: Harness) -> tuple[int, int]:
    """The window's calls and failures as the last transition reported them."""
    return h.transitions[-1].window_calls, h.transitions[-1].window_failures


def test_a_tenth_leaves_the_window_exactly_ten_tenths_later() -> None:
    h = rate_harness(min_calls=3)
    play(h, 200.0, "fail")  # the start of tenth 100 (2 s each)
    play(h, 202.0, "fail")  # exactly the start of tenth 101
    play(h, 220.0, "ok", "ok")  # tenth 110: tenth 100 has left the window, 101 has not
    assert h.breaker.state is CLOSED  # 3 calls in the window, 1 failed
    play(h, 220.0, "fail")
    assert (h.breaker.state, window(h)) == (OPEN, (4, 2))


def test_a_success_at_a_tenths_start_counts_in_that_tenth() -> None:
    h = rate_harness(min_calls=3)
    play(h, 200.0, "ok")  # tenth 100
    play(h, 202.0, "ok")  # tenth 101, exactly at its start
    play(h, 220.0, "fail")  # tenth 110: the first success has left the window
    assert h.breaker.state is CLOSED  # 2 calls in the window
    play(h, 220.0, "fail")
    assert (h.breaker.state, window(h)) == (OPEN, (3, 2))


def test_tenths_whose_width_is_no_exact_float_keep_their_boundaries() -> None:
    # 0.1 s tenths: 17 * 0.1 is just above 1.7, yet 1.7 is in tenth 17. A call at
    # 1.7 belongs there, not with the success of tenth 16 that leaves the window
    # at 2.6.
    h = rate_harness(window_s=1.0, failure_rate=0.6)
    play(h, 1.65, "ok")
    play(h, 1.7, "fail")
    play(h, 2.6, "fail")
    assert (h.breaker.state, window(h)) == (OPEN, (2, 2))


def test_calls_late_in_a_tenth_stay_in_it() -> None:
    h = rate_harness(min_calls=4)
    play(h, 200.0, "fail")
    play(h, 201.5, "fail")  # same tenth as the first
    play(h, 203.0, "ok")
    play(h, 220.5, "ok", "fail")  # the first two have left the window
    assert h.breaker.state is CLOSED  # 3 calls in the window, 1 failed
    play(h, 220.5, "fail")
    assert (h.breaker.state, window(h)) == (OPEN, (4, 2))


def test_closing_again_starts_an_empty_window() -> None:
    h = rate_harness(cooldown_s=5, successes=1)
    h.fail(2)
    assert h.breaker.state is OPEN
    h.clock.advance(5)
    h.ok()  # the trial call closes it
    assert h.breaker.state is CLOSED
    h.fail()  # one call in the new window: below min_calls, whatever came before
    assert h.breaker.state is CLOSED
    assert h.moves == [(CLOSED, OPEN), (OPEN, HALF), (HALF, CLOSED)]
    # Until it closes, transitions report the window as it was when it opened.
    assert [(t.window_calls, t.window_failures) for t in h.transitions] == [(2, 2)] * 3


def test_a_success_resets_the_consecutive_count() -> None:
    h = Harness(failures=2, failure_rate=None)
    h.fail()
    h.ok()
    h.fail()
    assert h.breaker.state is CLOSED
    h.fail()
    assert h.breaker.state is OPEN


# --------------------------------------------------------- calls overdue while running


def _young_clock_harness(**settings: object) -> Harness:
    # Deadlines sit in a heap with a sequence number for ties; on a clock near
    # zero, sequence numbers exceed the time, so a comparison of the wrong item
    # shows.
    h = Harness(failures=1, failure_rate=None, **settings)
    h.clock.now = 0.0
    for _ in range(40):
        h.breaker.succeeded(h.breaker.acquire(deadline=100.0))
    return h


def test_an_overdue_call_is_counted_by_the_next_acquire() -> None:
    h = _young_clock_harness()
    h.breaker.acquire(deadline=1.0)  # never returns
    h.clock.now = 2.0
    with pytest.raises(CircuitOpenError):
        h.breaker.acquire()
    assert h.transitions[-1].reason == f"1 consecutive failures (last: {OVERDUE})"


def test_an_overdue_call_is_counted_by_the_next_success() -> None:
    h = _young_clock_harness()
    other = h.breaker.acquire(deadline=50.0)
    h.breaker.acquire(deadline=1.0)  # never returns
    h.clock.now = 1.0  # exactly its deadline: overdue
    h.breaker.succeeded(other)
    assert h.breaker.state is OPEN
    assert h.transitions[-1].reason == f"1 consecutive failures (last: {OVERDUE})"


def test_a_call_still_within_its_deadline_is_not_counted() -> None:
    h = Harness(failures=2, failure_rate=None)
    h.breaker.acquire(deadline=h.clock.now + 5)  # running, not overdue
    h.fail()  # settles and looks for overdue calls: there are none
    assert h.breaker.state is CLOSED
    h.clock.advance(5)
    h.rejected()  # now it is overdue: the next acquire counts it, the second failure
    assert h.transitions[-1].reason == f"2 consecutive failures (last: {OVERDUE})"


def test_an_overdue_trial_call_opens_it_again() -> None:
    h = Harness(failures=1, failure_rate=None, cooldown_s=10)
    h.fail()
    h.clock.advance(10)
    h.breaker.acquire(deadline=h.clock.now + 1)  # the trial call hangs
    assert h.breaker.state is HALF
    h.clock.advance(2)
    h.rejected()  # the next acquire counts the overdue trial: open again
    assert h.moves[-1] == (HALF, OPEN)
    assert h.transitions[-1].reason == f"a trial call failed ({OVERDUE})"


def test_a_trial_call_cancelled_past_its_deadline_opens_it_again() -> None:
    h = Harness(failures=1, failure_rate=None, cooldown_s=10)
    h.fail()
    h.clock.advance(10)
    trial = h.breaker.acquire(deadline=h.clock.now + 1)
    h.clock.advance(1)
    h.breaker.ended(trial, KeyboardInterrupt())  # cut short by its deadline
    assert h.moves[-1] == (HALF, OPEN)
    assert h.transitions[-1].reason == f"a trial call failed ({OVERDUE})"


def test_a_cancelled_call_past_its_deadline_is_overdue() -> None:
    h = Harness(failures=1, failure_rate=None)
    permit = h.breaker.acquire(deadline=h.clock.now + 1)
    h.clock.advance(1)
    h.breaker.ended(permit, KeyboardInterrupt())
    assert h.transitions[-1].reason == f"1 consecutive failures (last: {OVERDUE})"


# -------------------------------------------------------- stale outcomes, probes, words


def test_a_trial_call_answering_after_it_closed_is_ignored() -> None:
    h = Harness(failures=1, failure_rate=None, cooldown_s=10, probes=2, successes=1)
    h.fail()
    h.clock.advance(10)
    first, second = h.breaker.acquire(), h.breaker.acquire()
    h.breaker.succeeded(first)
    assert h.breaker.state is CLOSED
    h.breaker.failed(second, GuardConnectionError("late"))  # from the half-open state
    assert h.breaker.state is CLOSED


def test_a_released_trial_call_frees_exactly_its_place() -> None:
    h = Harness(failures=1, failure_rate=None, cooldown_s=10, probes=1)
    h.fail()
    h.clock.advance(10)
    trial = h.breaker.acquire()
    h.breaker.release(trial)
    h.breaker.release(trial)  # twice: the second frees nothing
    h.breaker.acquire()
    h.rejected()


def test_a_failure_names_its_error_or_says_an_error() -> None:
    h = Harness(failures=1, failure_rate=None, cooldown_s=10)
    h.breaker.failed(h.breaker.acquire())
    assert h.transitions[-1].reason == "1 consecutive failures (last: an error)"
    g = Harness(failures=1, failure_rate=None)
    g.breaker.ended(g.breaker.acquire(), GuardConnectionError("down"))
    assert g.transitions[-1].reason == "1 consecutive failures (last: GuardConnectionError)"


def test_a_half_open_rejection_says_why_and_names_the_backend() -> None:
    h = Harness(failures=1, failure_rate=None, cooldown_s=10, probes=1)
    h.fail()
    h.clock.advance(10)
    h.breaker.acquire()
    error = h.rejected()
    assert error.backend == "guard"
    assert str(error) == (
        "circuit breaker 'guard' is half-open: 1 trial call(s) under way, "
        "other calls fail fast until they succeed"
    )


def test_a_breaker_without_settings_uses_the_defaults() -> None:
    breaker = CircuitBreaker("guard")
    assert breaker.settings == BreakerSettings()
    breaker.succeeded(breaker.acquire())
    assert breaker.state is CLOSED
