"""Backoff between attempts, as a small object passed in (redis-py's ``backoff.py`` style).

Full jitter (AWS architecture blog, "Exponential Backoff and Jitter"): the delay before retry
``n`` is uniform in ``[0, min(cap, base * 2**n)]``. It spreads a herd of retries that failed
together, which is exactly what happens when one pool member dies under load.
"""

from __future__ import annotations

import random
from typing import Protocol


class Backoff(Protocol):
    def compute(self, failures: int) -> float:
        """Seconds to wait before the next attempt, after ``failures`` failed ones."""
        ...


class FullJitterBackoff:
    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()

    def compute(self, failures: int) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** max(0, failures - 1)))
        return self._rng.uniform(0.0, ceiling)


class NoBackoff:
    """For tests: retry at once, and count how often we were asked."""

    def __init__(self) -> None:
        self.calls = 0

    def compute(self, failures: int) -> float:
        self.calls += 1
        return 0.0
