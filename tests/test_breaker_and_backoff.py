"""The circuit breaker and the backoff are pure: driven here by a fake clock."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from router.breaker import BreakerParams, BreakerState, CircuitBreaker
from router.clock import FakeClock
from router.retry import FullJitterBackoff

PARAMS = BreakerParams(failure_threshold=3, open_s=1.0, max_open_s=4.0)


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker(PARAMS, FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allows_request()


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(PARAMS, FakeClock())
    for _ in range(10):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_half_open_allows_one_trial_then_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(PARAMS, clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(0.99)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.02)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allows_request()
    breaker.on_attempt()
    assert not breaker.allows_request()  # one trial at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_failed_trial_reopens_for_twice_as_long_capped() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(PARAMS, clock)
    for _ in range(3):
        breaker.record_failure()
    periods = []
    for _ in range(4):
        waited = breaker.seconds_until_trial()
        periods.append(waited)
        clock.advance(waited)
        breaker.on_attempt()
        breaker.record_failure()
    assert periods == [1.0, 2.0, 4.0, 4.0]


def test_released_trial_lets_another_try() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(PARAMS, clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(1.0)
    breaker.on_attempt()
    breaker.release_trial()
    assert breaker.allows_request()


@given(st.lists(st.sampled_from(["ok", "fail", "tick", "attempt", "release"]), max_size=200))
def test_breaker_invariants(events: list[str]) -> None:
    """Whatever happens: the open period stays within bounds, and a closed breaker allows."""
    clock = FakeClock()
    breaker = CircuitBreaker(PARAMS, clock)
    for event in events:
        if event == "ok":
            breaker.record_success()
        elif event == "fail":
            breaker.record_failure()
        elif event == "tick":
            clock.advance(0.5)
        elif event == "attempt":
            breaker.on_attempt()
        else:
            breaker.release_trial()
        assert 0.0 <= breaker.seconds_until_trial() <= PARAMS.max_open_s
        if breaker.state is BreakerState.CLOSED:
            assert breaker.allows_request()
        if breaker.state is BreakerState.OPEN:
            assert not breaker.allows_request()


@given(st.integers(min_value=0, max_value=60), st.integers(min_value=0, max_value=2**32))
def test_full_jitter_backoff_stays_within_its_ceiling(failures: int, seed: int) -> None:
    backoff = FullJitterBackoff(base_s=0.01, cap_s=0.25, rng=random.Random(seed))
    delay = backoff.compute(failures)
    assert 0.0 <= delay <= min(0.25, 0.01 * 2 ** max(0, failures - 1))
