"""A circuit breaker per upstream endpoint: passive ejection and half-open probing back in.

States::

    CLOSED --(failure_threshold consecutive failures)--> OPEN
    OPEN   --(open period elapsed; checked lazily)-----> HALF_OPEN
    HALF_OPEN --(trial succeeds)--> CLOSED
    HALF_OPEN --(trial fails)-----> OPEN, for twice as long (capped at max_open_s)

Only one trial runs at a time in HALF_OPEN: a real request or an active health probe, which
ever comes first. Doubling the open period stops a flapping endpoint from taking a steady
share of failures; success resets it. Pure code: the clock is injected.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from router.clock import Clock


class BreakerState(Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class BreakerParams:
    failure_threshold: int = 3
    open_s: float = 2.0
    max_open_s: float = 30.0


class CircuitBreaker:
    def __init__(self, params: BreakerParams, clock: Clock) -> None:
        self._params = params
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._open_until = 0.0
        self._open_period = params.open_s
        self._trial_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock.now() >= self._open_until:
            self._state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        return self._state

    def seconds_until_trial(self) -> float:
        """0 when a request may be tried now."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self._open_until - self._clock.now())
        return 0.0

    def allows_request(self) -> bool:
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self._trial_in_flight

    def on_attempt(self) -> None:
        """Call when a request (or probe) is sent; in HALF_OPEN it becomes the one trial."""
        if self.state is BreakerState.HALF_OPEN:
            self._trial_in_flight = True

    def record_success(self) -> None:
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._open_period = self._params.open_s
        self._trial_in_flight = False

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._open(self._open_period * 2)
            return
        self._consecutive_failures += 1
        if state is BreakerState.CLOSED and (
            self._consecutive_failures >= self._params.failure_threshold
        ):
            self._open(self._params.open_s)

    def release_trial(self) -> None:
        """A trial ended with no verdict (e.g. the client went away): let another try."""
        self._trial_in_flight = False

    def _open(self, period: float) -> None:
        self._open_period = min(period, self._params.max_open_s)
        self._state = BreakerState.OPEN
        self._open_until = self._clock.now() + self._open_period
        self._trial_in_flight = False
        self.times_opened += 1
