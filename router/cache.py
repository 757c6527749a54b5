"""The edge response cache: bounded by entries and bytes, with TTLs and tenant isolation, and
an eviction policy chosen for the traffic by measuring, not by guessing.

Why several policies: on the traces we benchmark, no single policy is best everywhere.
S3-FIFO wins most small caches, ARC wins when popularity shifts, W-TinyLFU wins large caches
under stable skew; each loses 1-3 points of hit ratio where another wins. So the cache runs
*miniature simulations* of every candidate (MiniSim: Waldspurger et al., "Cache Modeling and
Optimization using Miniature Simulations", USENIX ATC 2017; the idea of set dueling in CPU
caches): keys whose fingerprint falls in a 1/R sample are replayed through each candidate at
1/R of the capacity. Every epoch the candidates' hit ratios are compared (exponentially
decayed, so the choice follows the traffic) and, when another candidate beats the active one
by more than 0.75 points two epochs running, the winner takes over: small caches (simulated
in full) adopt the winning simulation's own state; larger ones rebuild the winner's
bookkeeping from the resident keys, oldest first. Values never move.

R is chosen so each shadow holds at least 1024 keys (spatial sampling stays accurate, and an
epoch passes in fewer real requests than with smaller shadows); caches below 2048 entries are
simulated in full, which lets them switch by adopting the winner's state at no cost. Shadows
hold keys only: memory is about ``candidates x capacity / R`` keys.

Bounds: ``max_entries`` entries, ``max_bytes`` bytes of values (the active policy is asked for
more victims until both hold), no value above ``max_entry_bytes``. Each entry has an expiry;
an expired one is never returned. Each entry records its tenant and a lookup by another
tenant misses, on top of the tenant being hashed into the key.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from router.config import EVICTION_POLICIES
from router.eviction import ARC, S3FIFO, EvictionPolicy, WTinyLFU
from router.sketch import FrequencySketch, ceil_power_of_two, width_for

SHADOW_MIN_KEYS = 1024
MAX_SAMPLE_RATE = 64
EPOCH_MIN_REQUESTS = 3000
# Measured on the benchmark's 24 cells: 1024-key shadows (against 256) and starting on
# S3-FIFO (against ARC) were each worth about half a point where they mattered.
# Scores remember about 6 epochs and a challenger must lead by 0.75 points, two epochs
# running. Faster settings (0.5 / 0.5 points) chased the phases of orm-night and lost 3 points
# to rebuilding state 16 times per million requests; slower ones never left a poor start on
# traces of 100k requests. Measured on orm-night, Zipf 1.2, scarab, web12 and shifting Zipf.
SCORE_DECAY = 0.85
SWITCH_MARGIN = 0.0075  # hit-ratio points a challenger must lead by


def _identity(key: Hashable) -> int:
    """Cache keys are the requests' fingerprints already."""
    assert isinstance(key, int)
    return key


# Sketch windows, in multiples of the capacity: Caffeine's 10x follows shifting popularity;
# 100x with 8-bit counters approaches LFU on stable popularity (measured: +1 to +2 points on
# Zipf workloads at 1-10% sizes, -2 to -5 points where popularity shifts).
SHORT_MEMORY = 10
LONG_MEMORY = 100
LONG_MAX_COUNT = 255
S3_PROMOTE_AT = {"s3-fifo": 1, "s3-fifo-2": 2}


def make_sketch(capacity: int, memory: int, max_count: int = 15) -> FrequencySketch:
    return FrequencySketch(width_for(capacity), memory * capacity, max_count=max_count)


@dataclass(frozen=True)
class Sketches:
    """The frequency sketches the candidate policies judge admission with."""

    short: FrequencySketch  # also the router's hot/cold estimate
    long: FrequencySketch


def make_policy(name: str, capacity: int, sketches: Sketches, rng: random.Random) -> EvictionPolicy:
    if name == "w-tinylfu":
        return WTinyLFU(capacity, sketches.short, _identity, rng)
    if name == "w-tinylfu-long":
        long_memory = WTinyLFU(capacity, sketches.long, _identity, rng)
        long_memory.name = name
        return long_memory
    if name in S3_PROMOTE_AT:
        s3 = S3FIFO(capacity, promote_at=S3_PROMOTE_AT[name])
        s3.name = name
        return s3
    if name == "arc":
        return ARC(capacity)
    raise ValueError(f"unknown eviction policy {name!r}")


POLICY_NAMES = EVICTION_POLICIES


class Entry:
    __slots__ = ("expires_at", "size", "tenant", "value")

    def __init__(self, value: Any, size: int, tenant: str, expires_at: float) -> None:
        self.value = value
        self.size = size
        self.tenant = tenant
        self.expires_at = expires_at


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    admitted: int = 0
    rejected: int = 0
    evictions: int = 0
    expirations: int = 0
    too_large: int = 0
    policy_switches: int = 0

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class PolicySelector:
    """Miniature simulations of each candidate policy on a spatial sample of keys."""

    def __init__(
        self, capacity: int, names: tuple[str, ...], sketches: Sketches, rng: random.Random
    ) -> None:
        rate = 1
        if capacity >= 2 * SHADOW_MIN_KEYS:
            rate = min(MAX_SAMPLE_RATE, ceil_power_of_two(capacity // SHADOW_MIN_KEYS + 1) // 2)
        self.sample_rate = rate
        self._mask = rate - 1
        shadow_capacity = max(1, round(capacity / rate))
        self.shadows = {name: make_policy(name, shadow_capacity, sketches, rng) for name in names}
        self.scores = dict.fromkeys(names, 0.0)
        self._hits = dict.fromkeys(names, 0)
        self._requests = 0
        self._epoch = max(EPOCH_MIN_REQUESTS, 4 * shadow_capacity)
        self.epochs = 0
        self._challenger: str | None = None

    def observe(self, fingerprint: int) -> bool:
        """Feed one request; True when an epoch ended (time to compare)."""
        if fingerprint & self._mask:
            return False
        hits = self._hits
        for name, shadow in self.shadows.items():
            if shadow.request(fingerprint):
                hits[name] += 1
        self._requests += 1
        if self._requests < self._epoch:
            return False
        for name in self.scores:
            ratio = hits[name] / self._requests
            self.scores[name] = (
                ratio
                if self.epochs == 0
                else SCORE_DECAY * self.scores[name] + (1 - SCORE_DECAY) * ratio
            )
            hits[name] = 0
        self._requests = 0
        self.epochs += 1
        return True

    def leader(self, current: str) -> str:
        """The policy to run now: a challenger must lead by the margin two epochs running."""
        best = max(self.scores, key=self.scores.__getitem__)
        if best == current or self.scores[best] <= self.scores[current] + SWITCH_MARGIN:
            self._challenger = None
            return current
        if self._challenger != best:
            self._challenger = best
            return current
        self._challenger = None
        return best


class ResponseCache:
    def __init__(
        self,
        max_entries: int,
        sketch: FrequencySketch,
        *,
        max_bytes: int | None = None,
        max_entry_bytes: int | None = None,
        policies: tuple[str, ...] = POLICY_NAMES,
        initial_policy: str = "s3-fifo",
        rng: random.Random | None = None,
        on_switch: Callable[[str, str], None] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if initial_policy not in policies:
            raise ValueError(f"initial policy {initial_policy!r} is not among {policies}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._rng = rng or random.Random(0)
        self._entries: dict[Hashable, Entry] = {}
        self._long_sketch = (
            make_sketch(max_entries, LONG_MEMORY, LONG_MAX_COUNT)
            if "w-tinylfu-long" in policies
            else None
        )
        self._sketches = Sketches(sketch, self._long_sketch or sketch)
        self.policy: EvictionPolicy = make_policy(
            initial_policy, max_entries, self._sketches, self._rng
        )
        self._selector = (
            PolicySelector(max_entries, policies, self._sketches, self._rng)
            if len(policies) > 1
            else None
        )
        self._on_switch = on_switch
        self.bytes = 0
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: int) -> bool:
        return key in self._entries

    @property
    def policy_name(self) -> str:
        return self.policy.name

    # ---- lookups --------------------------------------------------------------------------

    def get(self, key: int, now: float = 0.0, tenant: str = "") -> Any | None:
        """The cached value, or None on a miss."""
        if self._long_sketch is not None:
            self._long_sketch.increment(key)
        selector = self._selector
        if selector is not None and selector.observe(key):
            self._maybe_switch()
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            self._drop(key, entry)
            self.stats.expirations += 1
            entry = None
        if entry is None or entry.tenant != tenant:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self.policy.hit(key)
        return entry.value

    def peek(self, key: int) -> Any | None:
        """The value without counting or reordering (admin API, tests)."""
        entry = self._entries.get(key)
        return entry.value if entry is not None else None

    # ---- insertion ------------------------------------------------------------------------

    def put(
        self,
        key: int,
        value: Any,
        *,
        size: int = 1,
        now: float = 0.0,
        ttl_s: float = float("inf"),
        tenant: str = "",
    ) -> bool:
        """Offer an answer; False when it was not kept (too large, or admission refused it)."""
        if self.max_entry_bytes is not None and size > self.max_entry_bytes:
            self.stats.too_large += 1
            return False
        existing = self._entries.get(key)
        if existing is not None:
            self.bytes += size - existing.size
            existing.value, existing.size = value, size
            existing.tenant, existing.expires_at = tenant, now + ttl_s
            self.policy.hit(key)
        else:
            self._entries[key] = Entry(value, size, tenant, now + ttl_s)
            self.bytes += size
            for victim in self.policy.insert(key):
                self._forget(victim)
        while self.max_bytes is not None and self.bytes > self.max_bytes:
            victim = self.policy.evict_one()
            if victim is None:
                break
            self._forget(victim)
        kept = key in self._entries
        if existing is None:
            if kept:
                self.stats.admitted += 1
            else:
                self.stats.rejected += 1
        return kept

    def _forget(self, key: Hashable) -> None:
        """The policy evicted this key: drop its value."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size
            self.stats.evictions += 1

    def _drop(self, key: int, entry: Entry) -> None:
        del self._entries[key]
        self.bytes -= entry.size
        self.policy.discard(key)

    # ---- policy selection -------------------------------------------------------------------

    def _maybe_switch(self) -> None:
        assert self._selector is not None
        current = self.policy.name
        leader = self._selector.leader(current)
        if leader == current:
            return
        selector = self._selector
        if selector.sample_rate == 1:
            self._adopt_shadow(leader)
        elif isinstance(self.policy, S3FIFO) and leader in S3_PROMOTE_AT:
            self.policy.retune(S3_PROMOTE_AT[leader])  # same structure: keep its state
            self.policy.name = leader
        else:
            successor = make_policy(leader, self.max_entries, self._sketches, self._rng)
            for key in self.policy.keys_oldest_first():
                for victim in successor.load(key):  # never expected: same capacity
                    self._forget(victim)
            self.policy = successor
        self.stats.policy_switches += 1
        if self._on_switch is not None:
            self._on_switch(current, leader)

    def _adopt_shadow(self, leader: str) -> None:
        """Small caches are simulated in full: take over a copy of the winner's own state (its
        ghosts, counters and list split), keep the values it holds, drop the others. Its
        shadow stays as it is, so the comparison goes on undisturbed."""
        assert self._selector is not None
        adopted = self._selector.shadows[leader].clone()
        for key in adopted.keys_oldest_first():
            if key not in self._entries:
                adopted.discard(key)  # resident in the simulation, but we hold no value
        kept = set(adopted.keys_oldest_first())
        for key in [key for key in self._entries if key not in kept]:
            self._forget(key)
        self.policy = adopted

    def snapshot(self) -> dict[str, Any]:
        selector = self._selector
        return {
            "policy": self.policy.name,
            "policy_scores": {k: round(v, 4) for k, v in selector.scores.items()}
            if selector
            else {},
            "policy_switches": self.stats.policy_switches,
            "entries": len(self._entries),
            "max_entries": self.max_entries,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "hit_ratio": round(self.stats.hit_ratio, 4),
            "hits": self.stats.hits,
            "misses": self.stats.misses,
            "evictions": self.stats.evictions,
            "rejected": self.stats.rejected,
            "expirations": self.stats.expirations,
        }
