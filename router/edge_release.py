"""The edge's standing with the router: whether a hot miss of a model may go to the edge
now (its gray-release stage and its latency budget), whether to take a shadow sample, and
the evidence that moves both (answers compared, edge outcomes, latencies).

It joins the pure pieces (router/gray_release.py, router/agreement.py,
router/latency_model.py) to the router's config and clock; the dispatcher asks it and
reports to it, and the admin API, metrics and the demo read its snapshot. Bounded: one
release state and two latency fits per edge-eligible catalog model.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from router.agreement import SCORERS, Scorer
from router.config import EdgeConfig
from router.gray_release import GrayRelease, ReleaseParams, ReleaseState
from router.latency_model import LatencyBudget, LatencyFit

log = logging.getLogger("hotcold.edge_release")
PIN_SUFFIX = "\x1fpin"  # the fleet's entry for an operator's pin of a model's stage


@dataclass(frozen=True, slots=True)
class EdgeVerdict:
    earned: bool  # its stage gives this key to the edge
    fast_enough: bool  # within the latency budget
    reason: str
    edge_s: float | None  # predicted seconds at the edge for the tokens asked
    cloud_s: float | None


class EdgeRelease:
    def __init__(self, config: EdgeConfig, rng: random.Random | None = None) -> None:
        release = config.release
        self.enabled = release.enabled
        self.params = ReleaseParams(
            shares=release.shares,
            shadow_rate=release.shadow_rate,
            min_samples=release.min_samples,
            min_rollback_samples=release.min_rollback_samples,
            window=release.window,
            min_agreement=release.min_agreement,
            max_error_rate=release.max_error_rate,
            max_latency_ratio=release.max_latency_ratio,
            margin=release.margin,
        )
        self.release = GrayRelease(self.params, release.pinned)
        self.scorer: Scorer = SCORERS[release.scorer]
        self.budget = LatencyBudget(
            config.latency.factor, config.latency.ceiling_s, config.latency.cost_first
        )
        self.default_tokens = config.latency.default_tokens
        self.max_shadow_inflight = release.max_shadow_inflight
        self.shadow_inflight = 0
        self.shadows = {"started": 0, "shed": 0, "compared": 0, "failed": 0}
        self._edge_fit: dict[str, LatencyFit] = {}
        self._cloud_fit: dict[str, LatencyFit] = {}
        self._rng = rng or random.Random()
        # Moves made here on this router's evidence, for the fleet (router/fleet_release.py).
        self.pending_moves: deque[tuple[str, int, str]] = deque(maxlen=256)
        self.edge_model: str | None = None  # what the edge node says it runs

    def _fit(self, fits: dict[str, LatencyFit], model: str) -> LatencyFit:
        return fits.setdefault(model, LatencyFit())

    def state(self, model: str) -> ReleaseState:
        return self.release.state(model)

    # ---- asking ------------------------------------------------------------------------

    def verdict(self, model: str, key_fraction: float, tokens: int | None) -> EdgeVerdict:
        """May this hot miss go to the edge: its stage, then its latency budget."""
        asked = tokens or self.default_tokens
        edge_s = self._fit(self._edge_fit, model).predict(asked)
        cloud_s = self._fit(self._cloud_fit, model).predict(asked)
        fast, why = self.budget.allows_edge(edge_s, cloud_s)
        if not self.enabled:
            return EdgeVerdict(True, fast, why, edge_s, cloud_s)
        state = self.release.state(model)
        earned = state.edge_answers(key_fraction)
        reason = why if earned else f"stage {state.snapshot()['stage_name']}"
        return EdgeVerdict(earned, fast, reason, edge_s, cloud_s)

    def take_shadow(self, under_load: bool) -> bool:
        """Whether to sample this request for a comparison; shed first under load. Taken
        with the release off too: the edge's agreement is worth knowing either way."""
        if self._rng.random() >= self.params.shadow_rate:
            return False
        if under_load or self.shadow_inflight >= self.max_shadow_inflight:
            self.shadows["shed"] += 1
            return False
        self.shadow_inflight += 1
        self.shadows["started"] += 1
        return True

    def shadow_done(self) -> None:
        self.shadow_inflight -= 1

    # ---- evidence ----------------------------------------------------------------------

    def observe(
        self, model: str, producer: str, ok: bool, seconds: float, tokens: int | None, now: float
    ) -> None:
        """An answer (or a failure) from a producer, for the fits and the release."""
        if producer == "edge":
            if ok and tokens:
                self._fit(self._edge_fit, model).observe(tokens, seconds)
            self._log(model, self.release.state(model).record_edge(ok, seconds, now))
        elif producer == "cloud" and ok and tokens:
            self._fit(self._cloud_fit, model).observe(tokens, seconds)
            self.release.state(model).record_cloud(seconds)

    def observe_edge_model(self, name: object, now: float) -> None:
        """The model the edge node answered with: a new one (a new version loaded, or a
        restart with another --model) is a new candidate, back to shadow to earn its stages
        again, and its latency is measured afresh."""
        if not isinstance(name, str) or not name or name == self.edge_model:
            return
        previous, self.edge_model = self.edge_model, name
        if previous is None:
            return
        reason = f"new edge model {name} (was {previous}): back to shadow"
        for model, state in self.release.models.items():
            if state.stage != 0:
                state.adopt(0, reason, now)
                self.pending_moves.append((model, 0, reason))
        self._edge_fit.clear()
        log.warning("%s", reason)

    def compare(self, model: str, edge_text: str, cloud_text: str, now: float) -> float:
        score = self.scorer(edge_text, cloud_text)
        self.shadows["compared"] += 1
        self._log(model, self.release.state(model).record_agreement(score, now))
        return score

    def _log(self, model: str, move: Any) -> None:
        if move is not None:
            log.warning("edge release of %s: %s", model, move.reason)
            self.pending_moves.append((model, move.stage, move.reason))

    def pin(self, model: str, stage: int | None, reason: str, share: bool = True) -> None:
        """An operator's pin (None: the evidence decides again); ``share``: tell the fleet."""
        state = self.release.state(model)
        if stage is not None and not 0 <= stage <= len(self.params.shares):
            raise ValueError(f"stage must be 0-{len(self.params.shares)} or null")
        state.pinned = stage
        if share:
            self.pending_moves.append((model + PIN_SUFFIX, -1 if stage is None else stage, reason))
        log.warning("edge release of %s: %s", model, reason)

    def adopt(self, model: str, stage: int, reason: str, now: float) -> bool:
        """A stage decided elsewhere in the fleet (or before a restart); True when it moved."""
        state = self.release.state(model)
        if stage == state.stage:
            return False
        state.adopt(stage, reason, now)
        return True

    # ---- introspection -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for name, state in self.release.snapshot().items():
            edge = self._fit(self._edge_fit, name).coefficients()
            cloud = self._fit(self._cloud_fit, name).coefficients()
            tokens = self.default_tokens
            models[name] = {
                **state,
                "predicted_s": {
                    "tokens": tokens,
                    "edge": None if edge is None else round(edge[0] + edge[1] * tokens, 3),
                    "cloud": None if cloud is None else round(cloud[0] + cloud[1] * tokens, 3),
                },
            }
        return {
            "enabled": self.enabled,
            "edge_model": self.edge_model,
            "budget": {
                "factor": self.budget.factor,
                "ceiling_s": self.budget.ceiling_s,
                "cost_first": self.budget.cost_first,
            },
            "shadows": dict(self.shadows, inflight=self.shadow_inflight),
            "models": models,
        }
