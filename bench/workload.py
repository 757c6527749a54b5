"""A realistic IoT request mix for the demo and the end-to-end benchmarks.

Devices ask a small set of questions over and over (status checks, unit conversions, alert
explanations) and a long tail of one-off ones. Popularity follows a Zipf law over the
question catalogue, as request popularity does in the traces we measured. Most requests are
deterministic (temperature 0) and cacheable; a fifth are sampled (summaries worded afresh
each time), which the cache cannot answer and the edge node computes when they are hot; some
are streamed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

DEVICES = ("thermostat", "door-sensor", "camera", "meter", "tracker", "pump", "hvac", "beacon")
TEMPLATES = (
    "What does error code {n} on the {d} mean?",
    "Convert {n} degrees Fahrenheit to Celsius.",
    "Is a reading of {n} normal for a {d}?",
    "Summarise the last alert from {d} #{n}.",
    "How do I reset the {d} after fault {n}?",
    "What is the battery life of a {d} reporting every {n} seconds?",
)


@dataclass(frozen=True, slots=True)
class WorkItem:
    path: str
    body: dict[str, Any]
    tenant: str


def question(rank: int) -> str:
    template = TEMPLATES[rank % len(TEMPLATES)]
    return template.format(n=rank, d=DEVICES[(rank // len(TEMPLATES)) % len(DEVICES)])


def iot_picks(requests: int, catalogue: int, zipf_s: float, seed: int) -> np.ndarray:
    """Which question of the catalogue each request asks: Zipf ``zipf_s`` popularity."""
    ranks = np.arange(1, catalogue + 1, dtype=float)
    weights = ranks**-zipf_s
    weights /= weights.sum()
    picks: np.ndarray = np.random.default_rng(seed).choice(catalogue, size=requests, p=weights)
    return picks


def iot_workload(
    requests: int,
    catalogue: int = 400,
    zipf_s: float = 1.1,
    sampled_share: float = 0.2,
    stream_share: float = 0.1,
    tenants: tuple[str, ...] = ("acme",),
    model: str = "default",
    max_tokens: int = 24,
    seed: int = 7,
) -> list[WorkItem]:
    rng = random.Random(seed)
    picks = iot_picks(requests, catalogue, zipf_s, seed)
    items = []
    for rank in picks:
        sampled = rng.random() < sampled_share
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a concise assistant for IoT devices."},
                {"role": "user", "content": question(int(rank))},
            ],
            "max_tokens": max_tokens,
            "temperature": 0.8 if sampled else 0.0,
        }
        if rng.random() < stream_share:
            body["stream"] = True
        items.append(WorkItem("/v1/chat/completions", body, rng.choice(tenants)))
    return items
