"""The frequency sketch: bounded memory, never under-counts within its window, and the
fleet view (other routers' published sketches) never under-counts fleet-wide."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.fleet_sketch import SketchSnapshot, SnapshotError, install_fleet_view
from router.keys import int_fingerprint
from router.sketch import FrequencySketch

keys = st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=400)


@settings(max_examples=200)
@given(keys, st.booleans(), st.sampled_from([16, 64, 1024]))
def test_estimate_never_below_true_count_in_window(
    sequence: list[int], doorkeeper: bool, width: int
) -> None:
    """Within one aging window, the estimate is at least the true count (up to the cap)."""
    sketch = FrequencySketch(width, sample_size=10**9, doorkeeper=doorkeeper)
    for key in sequence:
        sketch.increment(int_fingerprint(key))
    for key, count in Counter(sequence).items():
        assert sketch.estimate(int_fingerprint(key)) >= min(count, sketch.max_count)


@settings(max_examples=100)
@given(keys, st.integers(min_value=5, max_value=50))
def test_estimate_covers_increments_since_last_aging(sequence: list[int], window: int) -> None:
    """Aging halves old counts; what was counted since the last aging is never lost."""
    sketch = FrequencySketch(1024, sample_size=window)
    since_aging: Counter[int] = Counter()
    for key in sequence:
        resets = sketch.resets
        sketch.increment(int_fingerprint(key))
        if sketch.resets != resets:
            since_aging.clear()
        else:
            since_aging[key] += 1
    for key, count in since_aging.items():
        assert sketch.estimate(int_fingerprint(key)) >= min(count, sketch.max_count)


@given(st.lists(st.integers(), max_size=2000), st.sampled_from([16, 256, 4096]))
def test_memory_is_fixed_whatever_the_key_space(sequence: list[int], width: int) -> None:
    sketch = FrequencySketch(width, sample_size=100)
    before = sketch.memory_bytes
    for key in sequence:
        sketch.increment(int_fingerprint(key))
    assert sketch.memory_bytes == before
    assert before <= 4 * sketch.width + sketch.width  # counters + doorkeeper


def test_counts_saturate_at_the_cap_and_aging_halves() -> None:
    sketch = FrequencySketch(64, sample_size=10**9, doorkeeper=False)
    fingerprint = int_fingerprint(7)
    for _ in range(100):
        sketch.increment(fingerprint)
    assert sketch.estimate(fingerprint) == sketch.max_count
    sketch.age()
    assert sketch.estimate(fingerprint) == sketch.max_count // 2


def test_one_hit_wonders_stay_in_the_doorkeeper() -> None:
    sketch = FrequencySketch(1024, sample_size=10**9)
    for key in range(300):
        sketch.increment(int_fingerprint(key))
    counters, _ = sketch.snapshot()
    assert sum(counters) < 40  # almost nothing reached the counters
    assert sketch.estimate(int_fingerprint(3)) >= 1


@settings(max_examples=100)
@given(st.lists(keys, min_size=1, max_size=4), st.booleans())
def test_fleet_estimate_covers_every_router(routers: list[list[int]], doorkeeper: bool) -> None:
    """Router 0 with the others' published sketches installed: its fleet estimate is at least
    the fleet-wide true count (up to the cap), and its own estimate is unchanged."""
    sketches = [FrequencySketch(256, sample_size=10**9, doorkeeper=doorkeeper) for _ in routers]
    for sketch, sequence in zip(sketches, routers, strict=True):
        for key in sequence:
            sketch.increment(int_fingerprint(key))
    others = [
        SketchSnapshot.decode(SketchSnapshot.of(f"r{i}", s).encode())
        for i, s in enumerate(sketches[1:], start=1)
    ]
    local = sketches[0]
    before = {key: local.estimate(int_fingerprint(key)) for key in routers[0]}
    assert install_fleet_view(local, others) == len(others)
    total: Counter[int] = Counter()
    for sequence in routers:
        total.update(sequence)
    for key, count in total.items():
        assert local.fleet_estimate(int_fingerprint(key)) >= min(count, local.max_count)
    for key, estimate in before.items():
        assert local.estimate(int_fingerprint(key)) == estimate


def test_fleet_view_is_replaced_not_accumulated() -> None:
    """Installing the same snapshot twice counts it once: no feedback across syncs."""
    local, other = FrequencySketch(256, 10**9), FrequencySketch(256, 10**9)
    key = int_fingerprint(7)
    for _ in range(3):
        other.increment(key)
    snapshot = SketchSnapshot.of("other", other)
    install_fleet_view(local, [snapshot])
    install_fleet_view(local, [snapshot])
    assert local.fleet_estimate(key) == 3
    install_fleet_view(local, [])
    assert local.fleet_estimate(key) == 0


def test_snapshot_of_another_shape_is_skipped_and_garbage_refused() -> None:
    local = FrequencySketch(256, 10**9)
    assert install_fleet_view(local, [SketchSnapshot.of("wide", FrequencySketch(1024, 10))]) == 0
    with pytest.raises(SnapshotError):
        SketchSnapshot.decode(b"\x93not a snapshot")
