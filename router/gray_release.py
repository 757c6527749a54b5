"""Gray release of the edge model, per catalog model: the edge earns its traffic.

The edge model is the candidate, the model's cloud pool the reference. Each edge-eligible
model moves through stages::

    shadow (0)  ->  share[0] of hot misses  ->  share[1]  ->  ...  ->  1.0 (all hot misses)

In every stage a sample of deterministic requests (``shadow_rate``; two samples of a sampled
request differ whoever computes them) is also computed by the other side
(the edge while the cloud serves, the cloud once the edge serves) and the two answers are
scored for agreement (router/agreement.py); edge attempts are counted as ok or failed, and
their latency is compared with the cloud's. Over the last ``window`` observations:

- **advance** one stage when there are at least ``min_samples`` comparisons since the last
  move, the mean agreement is at least ``min_agreement``, the edge's error rate at most
  ``max_error_rate`` and its median latency at most ``max_latency_ratio`` x the cloud's;
- **roll back at once to shadow** when, over at least ``min_rollback_samples`` observations
  since the last move, any of them is worse than its threshold by more than ``margin`` (a
  share of the threshold: 5% by default, as the seed documents ask).

After every move the window starts afresh, so a stage is judged on its own traffic. An
operator can pin a stage per model. Which hot misses go to the edge at a share ``s`` is
decided by the request key (``key_fraction < s``), so the same keys stay on the edge as the
share grows and a key never flaps between producers.

Pure: no I/O, the caller gives the time; memory is ``window`` floats per model and measure.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

SHADOW = 0


@dataclass(frozen=True, slots=True)
class ReleaseParams:
    shares: tuple[float, ...] = (0.05, 0.25, 1.0)  # stages after shadow
    shadow_rate: float = 0.1
    min_samples: int = 50
    min_rollback_samples: int = 20
    window: int = 200
    min_agreement: float = 0.8
    max_error_rate: float = 0.05
    max_latency_ratio: float = 3.0
    margin: float = 0.05


@dataclass(frozen=True, slots=True)
class Move:
    stage: int
    reason: str
    at: float


@dataclass
class ReleaseState:
    """One model's stage and the evidence since its last move."""

    params: ReleaseParams
    stage: int = SHADOW
    pinned: int | None = None
    last_move: Move = field(default_factory=lambda: Move(SHADOW, "starts in shadow", 0.0))
    agreements: deque[float] = field(default_factory=deque)
    edge_outcomes: deque[bool] = field(default_factory=deque)
    edge_latency_s: deque[float] = field(default_factory=deque)
    cloud_latency_s: deque[float] = field(default_factory=deque)
    moves: int = 0

    def __post_init__(self) -> None:
        bound = self.params.window
        self.agreements = deque(maxlen=bound)
        self.edge_outcomes = deque(maxlen=bound)
        self.edge_latency_s = deque(maxlen=bound)
        self.cloud_latency_s = deque(maxlen=bound)

    # ---- what it allows ----------------------------------------------------------------

    @property
    def effective_stage(self) -> int:
        return self.pinned if self.pinned is not None else self.stage

    @property
    def share(self) -> float:
        """The share of hot misses the edge answers now (0 in shadow)."""
        stage = self.effective_stage
        return 0.0 if stage == SHADOW else self.params.shares[stage - 1]

    def edge_answers(self, key_fraction: float) -> bool:
        return key_fraction < self.share

    # ---- evidence ----------------------------------------------------------------------

    def record_agreement(self, score: float, now: float) -> Move | None:
        self.agreements.append(score)
        return self.evaluate(now)

    def record_edge(self, ok: bool, latency_s: float | None, now: float) -> Move | None:
        self.edge_outcomes.append(ok)
        if ok and latency_s is not None:
            self.edge_latency_s.append(latency_s)
        return self.evaluate(now)

    def record_cloud(self, latency_s: float) -> None:
        self.cloud_latency_s.append(latency_s)

    # ---- measures ----------------------------------------------------------------------

    def agreement(self) -> float | None:
        return statistics.fmean(self.agreements) if self.agreements else None

    def error_rate(self) -> float | None:
        if not self.edge_outcomes:
            return None
        return sum(not ok for ok in self.edge_outcomes) / len(self.edge_outcomes)

    def latency_ratio(self) -> float | None:
        if not self.edge_latency_s or not self.cloud_latency_s:
            return None
        cloud = statistics.median(self.cloud_latency_s)
        return statistics.median(self.edge_latency_s) / cloud if cloud > 0 else None

    # ---- moves -------------------------------------------------------------------------

    def evaluate(self, now: float) -> Move | None:
        """Roll back or advance when the evidence says so; the move made, if any."""
        p = self.params
        agreement, errors, ratio = self.agreement(), self.error_rate(), self.latency_ratio()
        if self.stage != SHADOW:
            enough = p.min_rollback_samples
            worse = []
            if (
                len(self.agreements) >= enough
                and agreement is not None
                and agreement < p.min_agreement * (1 - p.margin)
            ):
                worse.append(f"agreement {agreement:.3f} < {p.min_agreement} - {p.margin:.0%}")
            if (
                len(self.edge_outcomes) >= enough
                and errors is not None
                and errors > p.max_error_rate + p.margin
            ):
                worse.append(f"edge error rate {errors:.3f} > {p.max_error_rate} + {p.margin}")
            if (
                len(self.edge_latency_s) >= enough
                and ratio is not None
                and ratio > p.max_latency_ratio * (1 + p.margin)
            ):
                worse.append(f"edge latency {ratio:.2f}x the cloud's > {p.max_latency_ratio}x")
            if worse:
                return self._move(SHADOW, "rolled back: " + "; ".join(worse), now)
        last = len(p.shares)
        if (
            self.stage < last
            and len(self.agreements) >= p.min_samples
            and (
                agreement is not None
                and agreement >= p.min_agreement
                and (errors is None or errors <= p.max_error_rate)
                and (ratio is None or ratio <= p.max_latency_ratio)
            )
        ):
            shown_errors = "n/a" if errors is None else f"{errors:.3f}"
            shown_ratio = "n/a" if ratio is None else f"{ratio:.2f}x"
            return self._move(
                self.stage + 1,
                f"advanced: agreement {agreement:.3f} over {len(self.agreements)} samples,"
                f" edge error rate {shown_errors}, latency {shown_ratio} the cloud's",
                now,
            )
        return None

    def _move(self, stage: int, reason: str, now: float) -> Move:
        self.stage = stage
        self.last_move = Move(stage, reason, now)
        self.moves += 1
        self.agreements.clear()
        self.edge_outcomes.clear()
        self.edge_latency_s.clear()
        return self.last_move

    def adopt(self, stage: int, reason: str, now: float) -> None:
        """Take a stage decided elsewhere (another router of the fleet)."""
        if stage != self.stage and 0 <= stage <= len(self.params.shares):
            self._move(stage, reason, now)

    def snapshot(self) -> dict[str, Any]:
        agreement, errors, ratio = self.agreement(), self.error_rate(), self.latency_ratio()
        return {
            "stage": self.effective_stage,
            "stage_name": stage_name(self.effective_stage, self.params.shares),
            "share": self.share,
            "pinned": self.pinned is not None,
            "agreement": None if agreement is None else round(agreement, 4),
            "samples": len(self.agreements),
            "edge_error_rate": None if errors is None else round(errors, 4),
            "edge_latency_ratio": None if ratio is None else round(ratio, 3),
            "last_move": {"stage": self.last_move.stage, "reason": self.last_move.reason},
            "moves": self.moves,
        }


def stage_name(stage: int, shares: tuple[float, ...]) -> str:
    return "shadow" if stage == SHADOW else f"{shares[stage - 1]:.0%} of hot misses"


class GrayRelease:
    """The release state of every edge-eligible model (bounded by the catalog)."""

    def __init__(self, params: ReleaseParams, pinned: dict[str, int] | None = None) -> None:
        self.params = params
        self._pinned = dict(pinned or {})
        self.models: dict[str, ReleaseState] = {}

    def state(self, model: str) -> ReleaseState:
        state = self.models.get(model)
        if state is None:
            state = ReleaseState(self.params, pinned=self._pinned.get(model))
            self.models[model] = state
        return state

    def snapshot(self) -> dict[str, Any]:
        return {name: state.snapshot() for name, state in sorted(self.models.items())}
