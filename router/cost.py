"""What the traffic cost, and what it would have cost all-cloud: the number the gateway exists
to improve.

An estimate from the operator's prices (``cost`` in the config):

- *actual* = tokens the cloud produced, at cloud prices, + the edge GPU's hourly price for as
  long as this router has had an edge node configured (the GPU costs the same busy or idle);
- *all-cloud* = every token answered (by the cloud, the edge node or the cache), at cloud
  prices: the same traffic with no edge at all;
- *saved* = all-cloud - actual (negative when the edge costs more than it takes off the cloud).

Tokens are the ``usage`` the answers report; a cache hit reports the usage of the answer it
replays, which is what the cloud would have billed for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from router.config import CostConfig


@dataclass(frozen=True, slots=True)
class CostEstimate:
    actual: float
    all_cloud: float

    @property
    def saved(self) -> float:
        return self.all_cloud - self.actual

    @property
    def saved_fraction(self) -> float:
        return self.saved / self.all_cloud if self.all_cloud > 0 else 0.0


def estimate_cost(
    prices: CostConfig, tokens: Mapping[tuple[str, str], int], edge_hours: float
) -> CostEstimate:
    """``tokens`` maps (direction "in"|"out", served_by) to a count."""
    per_in, per_out = (
        prices.cloud_input_per_1k_tokens / 1000,
        prices.cloud_output_per_1k_tokens / 1000,
    )

    def priced(served_by: set[str] | None) -> float:
        total = 0.0
        for (direction, producer), count in tokens.items():
            if served_by is None or producer in served_by:
                total += count * (per_in if direction == "in" else per_out)
        return total

    actual = priced({"cloud"}) + prices.edge_gpu_per_hour * edge_hours
    return CostEstimate(actual=actual, all_cloud=priced(None))
