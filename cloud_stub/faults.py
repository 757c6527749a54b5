"""Fault injection: which requests fail, slow down or lose their connection.

Rates are changed at run time through ``POST /admin/faults``, so a test or a soak run can
break a running server and heal it again without restarting it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import Enum


class Fault(Enum):
    NONE = "none"
    ERROR = "error"  # answer 500
    DROP = "drop"  # close the connection without an answer
    SLOW = "slow"  # add slow_ms before the first token


@dataclass(frozen=True, slots=True)
class FaultRates:
    error_rate: float = 0.0
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_ms: float = 2000.0
    wrong_rate: float = 0.0  # answer something else than the request's own answer

    def updated(self, changes: dict[str, float]) -> FaultRates:
        unknown = set(changes) - {"error_rate", "drop_rate", "slow_rate", "slow_ms", "wrong_rate"}
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        for name, value in changes.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if name != "slow_ms" and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        return replace(self, **{name: float(value) for name, value in changes.items()})


class FaultInjector:
    def __init__(self, rates: FaultRates, seed: int | None = None) -> None:
        self.rates = rates
        self._rng = random.Random(seed)

    def draw(self) -> Fault:
        roll = self._rng.random()
        if roll < self.rates.error_rate:
            return Fault.ERROR
        roll -= self.rates.error_rate
        if roll < self.rates.drop_rate:
            return Fault.DROP
        roll -= self.rates.drop_rate
        if roll < self.rates.slow_rate:
            return Fault.SLOW
        return Fault.NONE

    def wrong(self) -> bool:
        """Whether this answer is a wrong one (an edge model that stopped agreeing)."""
        return self._rng.random() < self.rates.wrong_rate
