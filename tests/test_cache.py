"""The response cache: bounds, TTL, tenant isolation, admission against one-off requests,
and each eviction policy against a simple model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.cache import POLICY_NAMES, ResponseCache, make_sketch
from router.classify import Classifier
from router.eviction import ARC, S3FIFO
from router.keys import int_fingerprint
from router.threshold import ThresholdController, ThresholdParams

operation = st.tuples(
    st.sampled_from(["get", "put", "tick"]),
    st.integers(min_value=0, max_value=40),  # key
    st.sampled_from(["a", "b"]),  # tenant
    st.integers(min_value=1, max_value=300),  # size
)


def _cache(entries: int, policies: tuple[str, ...] = POLICY_NAMES, **kw: object) -> ResponseCache:
    return ResponseCache(
        entries,
        make_sketch(entries, 10),
        policies=policies,  # type: ignore[arg-type]
        initial_policy=policies[0],
        **kw,
    )


@settings(max_examples=200)
@given(
    st.lists(operation, max_size=300),
    st.integers(min_value=1, max_value=12),
    st.sampled_from(POLICY_NAMES),
)
def test_bounds_ttl_and_tenants_hold_for_any_sequence(
    operations: list[tuple[str, int, str, int]], entries: int, policy: str
) -> None:
    cache = _cache(entries, (policy,), max_bytes=1000, max_entry_bytes=400)
    now = 0.0
    stored: dict[int, tuple[str, float, str]] = {}  # key -> (tenant, expiry, value)
    for action, key, tenant, size in operations:
        fingerprint = int_fingerprint(key)
        if action == "tick":
            now += 7.0
        elif action == "put":
            value = f"{tenant}:{key}:{now}"
            if cache.put(fingerprint, value, size=size, now=now, ttl_s=10.0, tenant=tenant):
                stored[fingerprint] = (tenant, now + 10.0, value)
        else:
            value = cache.get(fingerprint, now, tenant)
            if value is not None:
                owner, expiry, expected = stored[fingerprint]
                assert owner == tenant, "a tenant read another tenant's answer"
                assert now < expiry, "an expired answer was served"
                assert value == expected
        assert len(cache) <= entries
        assert cache.bytes <= 1000
    assert cache.bytes == sum(  # byte accounting matches what is held
        size for size in [cache._entries[k].size for k in cache._entries]
    )


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_one_off_requests_never_evict_the_hot_set(policy: str) -> None:
    """Strict admission (cache.min_frequency 2): a hot set that keeps recurring while four
    times as many one-off keys stream past (each seen once, ever): once warm, every hot
    request hits, whatever the eviction policy."""
    entries = 50
    cache = _cache(entries, (policy,))
    classifier = Classifier(cache._sketches.short, ThresholdController(ThresholdParams()))
    hot = [int_fingerprint(k) for k in range(20)]
    one_off = iter(range(10_000, 10**9))
    hot_misses_after_warmup = 0

    def request(key: int, value: str) -> bool:
        """The router's path: classify, look up, offer hot answers to the cache."""
        verdict = classifier.classify(key, "m", "", 0.0)
        if cache.get(key) is not None:
            return True
        if verdict.estimate >= 2:
            cache.put(key, value)
        return False

    for round_ in range(100):
        for key in hot:
            if not request(key, "hot"):
                hot_misses_after_warmup += round_ >= 2
            for _ in range(4):
                assert not request(int_fingerprint(next(one_off)), "cold")
    assert hot_misses_after_warmup == 0
    assert all(cache.peek(key) == "hot" for key in hot)


def test_oversized_value_is_not_cached() -> None:
    cache = _cache(10, max_entry_bytes=100)
    assert not cache.put(1, "x", size=101)
    assert cache.get(1) is None and cache.stats.too_large == 1


def test_policy_selection_switches_to_the_better_policy_keeping_values() -> None:
    """On a stable skewed workload the selector leaves a poor start for a better policy,
    and the switch does not lose cached values."""
    entries = 200
    cache = ResponseCache(entries, make_sketch(entries, 10), initial_policy="arc")
    sketch = cache._sketches.short
    import numpy as np

    rng = np.random.default_rng(1)
    weights = 1.0 / np.arange(1, 20_001) ** 0.8
    keys = rng.choice(20_000, size=120_000, p=weights / weights.sum())
    for key in keys.tolist():
        fingerprint = int_fingerprint(key)
        sketch.increment(fingerprint)
        if cache.get(fingerprint) is None:
            cache.put(fingerprint, key)
    assert cache.stats.policy_switches >= 1
    assert cache.policy_name != "arc"
    assert all(cache.peek(k) is not None for k in list(cache._entries))


@given(
    st.lists(st.integers(min_value=0, max_value=30), max_size=500),
    st.integers(min_value=1, max_value=10),
)
def test_key_only_policies_respect_capacity(sequence: list[int], capacity: int) -> None:
    for policy in (ARC(capacity), S3FIFO(capacity), S3FIFO(capacity, promote_at=2)):
        for key in sequence:
            policy.request(key)
            assert len(policy) <= capacity
        assert len(set(policy.keys_oldest_first())) == len(policy)
