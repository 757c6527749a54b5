"""Hot or cold for one request: operator pins first, then frequency against the threshold.

Pins let an operator force a model or a prompt pattern to one side whatever its frequency:
a safety-critical prompt always to the big cloud model, a tiny model always to the edge.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import NamedTuple

from router.decision import Route
from router.sketch import FrequencySketch
from router.threshold import ThresholdController


@dataclass(frozen=True, slots=True)
class PinRule:
    route: Route
    model: str | None = None  # a glob on the model name
    pattern: re.Pattern[str] | None = None  # searched in the prompt text

    def matches(self, model: str, text: str) -> bool:
        if self.model is not None and not fnmatch.fnmatchcase(model, self.model):
            return False
        return self.pattern is None or self.pattern.search(text) is not None

    def describe(self) -> str:
        parts = []
        if self.model is not None:
            parts.append(f"model {self.model!r}")
        if self.pattern is not None:
            parts.append(f"pattern {self.pattern.pattern!r}")
        return " and ".join(parts) or "every request"


class Classification(NamedTuple):  # one per request: a tuple costs a third of a dataclass
    route: Route
    estimate: int  # the key's estimated frequency in the sketch window
    reason: str


class Classifier:
    def __init__(
        self,
        sketch: FrequencySketch,
        controller: ThresholdController,
        pins: tuple[PinRule, ...] = (),
    ) -> None:
        self.sketch = sketch
        self.controller = controller
        self.pins = pins

    def classify(self, fingerprint: int, model: str, text: str, now: float) -> Classification:
        """Count the request, then classify it. Every request is counted, cacheable or not.

        With a fleet, the estimate adds the other routers' counts (their last published
        sketches), so a key requested across the fleet is hot on every router."""
        self.sketch.increment(fingerprint)
        estimate = self.sketch.fleet_estimate(fingerprint)  # local alone without a fleet
        controller = self.controller
        controller.observe_request(estimate)
        controller.maybe_tick(now)
        for pin in self.pins:
            if pin.matches(model, text):
                return Classification(pin.route, estimate, f"pinned {pin.route}: {pin.describe()}")
        if estimate + tie_breaker(fingerprint) >= controller.value:
            return Classification("hot", estimate, "frequency at or above the threshold")
        return Classification("cold", estimate, "frequency below the threshold")


def tie_breaker(fingerprint: int) -> float:
    """A fixed fraction in [0, 1) per key.

    Estimates are small integers and popular keys saturate at the same value, so an integer
    threshold could only move in coarse steps. Comparing ``estimate + fraction`` with a real
    threshold splits keys of equal estimate in a stable way: the same keys stay hot, which
    keeps the edge's working set and the cache steady while the threshold moves smoothly.
    """
    return ((fingerprint >> 48) & 0xFFFF) / 65536.0
