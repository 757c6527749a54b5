"""Predicted end-to-end time of a request at a producer (the edge node, a cloud pool), and
the latency budget that decides whether a hot miss may go to the edge.

A generation's time is close to linear in the tokens it produces: ``t = a + b x tokens``,
``a`` the queue wait plus prefill and first token, ``b`` the time per output token. Each
producer keeps an exponentially weighted least-squares fit of its observed answers (total
time against completion tokens), so the estimate follows the producer as its load changes;
with too little spread in the token counts to separate ``a`` from ``b`` it falls back to
time per token through the origin. Pure: the caller reports observations.

The budget (edge.latency): a hot miss goes to the edge only when the edge's predicted time
for the tokens asked is within ``factor`` x the cloud's and under ``ceiling_s``, unless the
operator puts cost first. The shadow comparisons keep measuring a slow edge, so it gets its
traffic back once it is fast again.
"""

from __future__ import annotations

from dataclasses import dataclass

HALF_LIFE = 50.0  # observations: the weight of one halves after this many newer ones
_DECAY = 0.5 ** (1.0 / HALF_LIFE)


class LatencyFit:
    """t = a + b x tokens, fit by exponentially weighted least squares."""

    def __init__(self) -> None:
        self.weight = 0.0
        self._x = self._y = self._xx = self._xy = 0.0
        self.observations = 0

    def observe(self, tokens: int, seconds: float) -> None:
        x, y = float(max(tokens, 1)), max(seconds, 0.0)
        self.weight = self.weight * _DECAY + 1.0
        self._x = self._x * _DECAY + x
        self._y = self._y * _DECAY + y
        self._xx = self._xx * _DECAY + x * x
        self._xy = self._xy * _DECAY + x * y
        self.observations += 1

    def coefficients(self) -> tuple[float, float] | None:
        if self.weight == 0:
            return None
        mean_x, mean_y = self._x / self.weight, self._y / self.weight
        variance = self._xx / self.weight - mean_x * mean_x
        if variance > 1e-6 * max(1.0, mean_x * mean_x):
            slope = (self._xy / self.weight - mean_x * mean_y) / variance
            intercept = mean_y - slope * mean_x
            if slope >= 0 and intercept >= 0:
                return intercept, slope
        return 0.0, mean_y / mean_x  # too little spread: time per token through the origin

    def predict(self, tokens: int) -> float | None:
        fit = self.coefficients()
        return None if fit is None else fit[0] + fit[1] * max(tokens, 1)


@dataclass(frozen=True, slots=True)
class LatencyBudget:
    factor: float = 2.0
    ceiling_s: float | None = None
    cost_first: bool = False

    def allows_edge(self, edge_s: float | None, cloud_s: float | None) -> tuple[bool, str]:
        """Whether a hot miss may go to the edge, and why (for metrics and the summary)."""
        if self.cost_first:
            return True, "cost first"
        if edge_s is None:
            return True, "edge not measured yet"
        if self.ceiling_s is not None and edge_s > self.ceiling_s:
            return False, f"edge predicted {edge_s:.2f}s > ceiling {self.ceiling_s:.2f}s"
        if cloud_s is not None and edge_s > self.factor * cloud_s:
            return (
                False,
                f"edge predicted {edge_s:.2f}s > {self.factor:g} x cloud {cloud_s:.2f}s",
            )
        return True, "within budget"
