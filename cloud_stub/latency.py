"""How long a generation takes: a time to first token plus a time per further token."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LatencyModel:
    ttft_ms: float
    tpot_ms: float
    jitter: float = 0.0

    def _jittered(self, ms: float, rng: random.Random) -> float:
        if self.jitter <= 0 or ms <= 0:
            return ms / 1000.0
        return max(0.0, ms * (1.0 + rng.uniform(-self.jitter, self.jitter))) / 1000.0

    def first_token_s(self, rng: random.Random) -> float:
        return self._jittered(self.ttft_ms, rng)

    def next_token_s(self, rng: random.Random) -> float:
        return self._jittered(self.tpot_ms, rng)

    def total_s(self, tokens: int, rng: random.Random) -> float:
        if tokens <= 0:
            return self.first_token_s(rng)
        return self.first_token_s(rng) + self._jittered(self.tpot_ms * (tokens - 1), rng)
