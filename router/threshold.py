"""The adaptive hot/cold threshold: a baseline that follows the traffic, scaled by a capacity
loop that keeps the edge node inside its queue-delay SLO.

A request is hot when its key's estimated frequency (occurrences per sketch window, plus a
fixed per-key fraction that splits ties, see :func:`router.classify.tie_breaker`) reaches the
threshold ``T = clamp(baseline x multiplier, minimum, maximum)``. The default bounds are 2
(a key must recur within the window to be hot) and 17 (above any estimate: nothing is hot).

- Baseline (the seed article's idea): the mean estimated frequency of the requests seen in
  the last control interval, smoothed across intervals with ``history_weight`` (an EWMA).
  Keys requested more often than the typical request are the candidates for the edge; as the
  traffic's skew changes, so does the bar.
- Capacity loop: every ``control_interval_s`` the edge node's mean queue delay over the
  interval is compared with its SLO. Above ``target_fraction`` of the SLO the multiplier is
  raised by ``raise_factor`` (fewer keys qualify, the rest goes cold); below
  ``idle_fraction`` of it (or with no edge traffic at all) it is lowered by ``lower_factor``
  so spare edge capacity is used; in between it holds. Fast increase, slow decrease (x1.3 up,
  x0.97 down, like AIMD): a simulated edge offered three times its capacity settled with its
  mean queue delay at 60-90% of the SLO, where a symmetric loop (x1.5 / x0.8) swung between
  all-hot and nothing-hot and overshot the SLO. Aiming at half the SLO leaves room for the
  loop's one-interval lag. The multiplier is clamped so the product stays within the
  operator's bounds (no wind-up while pinned at a bound).

Every change is recorded with its reason (shown by ``GET /admin/policy`` and in metrics).
Pure code: time comes in as an argument.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

HISTORY_LENGTH = 120  # recent decisions kept for the admin API and dashboard


@dataclass(frozen=True, slots=True)
class ThresholdParams:
    initial: float = 2.0
    minimum: float = 2.0
    maximum: float = 17.0
    history_weight: float = 0.7
    control_interval_s: float = 1.0
    queue_delay_slo_ms: float = 250.0
    target_fraction: float = 0.5  # raise above this share of the SLO (headroom for the lag)
    idle_fraction: float = 0.25
    raise_factor: float = 1.3
    lower_factor: float = 0.97

    def __post_init__(self) -> None:
        if not 0 < self.minimum <= self.initial <= self.maximum:
            raise ValueError("threshold bounds need 0 < minimum <= initial <= maximum")
        if self.raise_factor <= 1 or not 0 < self.lower_factor < 1:
            raise ValueError("raise_factor must be > 1 and lower_factor within (0, 1)")


@dataclass(frozen=True, slots=True)
class Decision:
    at: float
    value: float
    baseline: float
    multiplier: float
    queue_delay_ms: float | None
    reason: str


class ThresholdController:
    def __init__(self, params: ThresholdParams, now: float = 0.0) -> None:
        self.params = params
        self.baseline = params.initial
        self.multiplier = 1.0
        self.value = params.initial
        self.reason = "initial value from config"
        self._estimates_sum = 0
        self._estimates_count = 0
        self._delay_sum_ms = 0.0
        self._delay_count = 0
        self._next_tick = now + params.control_interval_s
        self.history: deque[Decision] = deque(maxlen=HISTORY_LENGTH)

    def observe_request(self, estimate: int) -> None:
        self._estimates_sum += estimate
        self._estimates_count += 1

    def observe_queue_delay(self, delay_ms: float) -> None:
        self._delay_sum_ms += max(0.0, delay_ms)
        self._delay_count += 1

    def maybe_tick(self, now: float) -> bool:
        """Run the control step when an interval has passed; True when it ran."""
        if now < self._next_tick:
            return False
        self.tick(now)
        # Skip intervals that passed with no call at all rather than replaying them.
        interval = self.params.control_interval_s
        self._next_tick = max(self._next_tick + interval, now + interval / 2)
        return True

    def tick(self, now: float) -> None:
        params = self.params
        if self._estimates_count:
            window_mean = self._estimates_sum / self._estimates_count
            weight = params.history_weight
            self.baseline = weight * self.baseline + (1 - weight) * window_mean
        delay_ms = self._delay_sum_ms / self._delay_count if self._delay_count else None
        slo = params.queue_delay_slo_ms
        if delay_ms is not None and delay_ms > slo * params.target_fraction:
            self.multiplier *= params.raise_factor
            reason = f"edge queue delay {delay_ms:.0f} ms over its SLO of {slo:.0f} ms: raised"
        elif delay_ms is None or delay_ms < slo * params.idle_fraction:
            self.multiplier *= params.lower_factor
            why = "no edge traffic" if delay_ms is None else f"edge queue delay {delay_ms:.0f} ms"
            reason = f"{why}, under {params.idle_fraction:.0%} of its SLO: lowered"
        else:
            reason = f"edge queue delay {delay_ms:.0f} ms within its SLO: held"
        baseline = max(self.baseline, 1e-9)
        self.multiplier = min(
            max(self.multiplier, params.minimum / baseline), params.maximum / baseline
        )
        value = min(max(self.baseline * self.multiplier, params.minimum), params.maximum)
        if value == params.maximum and "raised" in reason:
            reason += " (at the configured maximum)"
        elif value == params.minimum and "lowered" in reason:
            reason += " (at the configured minimum)"
        self.value = value
        self.reason = reason
        self.history.append(
            Decision(
                now,
                round(value, 3),
                round(self.baseline, 3),
                round(self.multiplier, 3),
                None if delay_ms is None else round(delay_ms, 1),
                reason,
            )
        )
        self._estimates_sum = self._estimates_count = 0
        self._delay_sum_ms = 0.0
        self._delay_count = 0

    def reconfigure(self, params: ThresholdParams, now: float, why: str) -> None:
        """Take new bounds and loop settings at once, keeping what the loop has learnt (the
        baseline and multiplier); the value is clamped into the new bounds immediately."""
        if params == self.params:
            return
        self.params = params
        baseline = max(self.baseline, 1e-9)
        self.multiplier = min(
            max(self.multiplier, params.minimum / baseline), params.maximum / baseline
        )
        self.value = min(max(self.baseline * self.multiplier, params.minimum), params.maximum)
        self.reason = why
        self.history.append(
            Decision(
                now,
                round(self.value, 3),
                round(self.baseline, 3),
                round(self.multiplier, 3),
                None,
                why,
            )
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "value": round(self.value, 3),
            "baseline": round(self.baseline, 3),
            "multiplier": round(self.multiplier, 3),
            "reason": self.reason,
            "bounds": [self.params.minimum, self.params.maximum],
            "queue_delay_slo_ms": self.params.queue_delay_slo_ms,
            "recent": [asdict(decision) for decision in list(self.history)[-10:]],
        }
