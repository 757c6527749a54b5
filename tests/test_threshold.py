"""The adaptive threshold, on a fake clock: follows the traffic, keeps the edge in its SLO."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from router.classify import Classifier
from router.keys import int_fingerprint
from router.sketch import FrequencySketch
from router.threshold import ThresholdController, ThresholdParams

PARAMS = ThresholdParams(control_interval_s=1.0, queue_delay_slo_ms=200.0)


@given(
    st.lists(
        st.tuples(st.integers(0, 16), st.one_of(st.none(), st.floats(0, 5000)), st.floats(0, 3)),
        max_size=300,
    )
)
def test_threshold_always_within_bounds(events: list[tuple[int, float | None, float]]) -> None:
    controller = ThresholdController(PARAMS)
    now = 0.0
    for estimate, delay, step in events:
        controller.observe_request(estimate)
        if delay is not None:
            controller.observe_queue_delay(delay)
        now += step
        controller.maybe_tick(now)
        assert PARAMS.minimum <= controller.value <= PARAMS.maximum
        assert controller.reason


def test_raises_on_slow_edge_and_lowers_when_idle() -> None:
    controller = ThresholdController(PARAMS)
    start = controller.value
    for second in range(1, 6):
        controller.observe_request(4)
        controller.observe_queue_delay(900.0)
        controller.maybe_tick(float(second))
    assert controller.value > start
    assert "over its SLO" in controller.reason
    high = controller.value
    for second in range(6, 30):
        controller.observe_request(4)
        controller.maybe_tick(float(second))
    assert controller.value < high
    assert "lowered" in controller.reason


def _simulate(
    rate_per_s: float,
    seconds: int,
    controller: ThresholdController,
    sketch: FrequencySketch,
    capacity_per_s: float,
    rng: np.random.Generator,
    start: float,
) -> tuple[float, float, float]:
    """An edge that serves ``capacity_per_s`` requests/s FIFO, offered Zipf hot traffic.
    Returns (share sent to the edge, mean queue delay in ms, threshold) over the last 5 s."""
    classifier = Classifier(sketch, controller)
    weights = 1.0 / np.arange(1, 501) ** 1.0
    keys = rng.choice(500, size=int(rate_per_s * seconds), p=weights / weights.sum())
    backlog_s = 0.0
    last_time = start
    sent = total = 0
    delays = []
    for index, key in enumerate(keys.tolist()):
        now = start + index / rate_per_s
        backlog_s = max(0.0, backlog_s - (now - last_time))
        last_time = now
        hot = classifier.classify(int_fingerprint(key), "m", "", now).route == "hot"
        tail = now >= start + seconds - 5
        if hot:
            controller.observe_queue_delay(backlog_s * 1000)
            if tail:
                delays.append(backlog_s * 1000)
            backlog_s += 1.0 / capacity_per_s
        if tail:
            total += 1
            sent += hot
    return sent / max(1, total), float(np.mean(delays)) if delays else 0.0, controller.value


def test_capacity_loop_sheds_three_times_the_edge_capacity_and_recovers() -> None:
    """Offered 3K requests/s of hot traffic, an edge of capacity K: the threshold rises until
    the edge's queue delay is back under its SLO and the rest goes cold; when the load drops
    to K/2 it falls back and the edge takes everything again."""
    capacity = 100.0
    sketch = FrequencySketch(4096, sample_size=5000)
    controller = ThresholdController(PARAMS)
    rng = np.random.default_rng(3)
    share, delay_ms, overloaded = _simulate(
        3 * capacity, 60, controller, sketch, capacity, rng, 0.0
    )
    assert overloaded > PARAMS.initial
    assert delay_ms < PARAMS.queue_delay_slo_ms
    assert share < 0.6  # most of the 3x offer went cold
    share, delay_ms, relaxed = _simulate(
        0.5 * capacity, 90, controller, sketch, capacity, rng, 60.0
    )
    assert relaxed < overloaded
    assert relaxed == PARAMS.minimum
    assert delay_ms < PARAMS.queue_delay_slo_ms
    assert share > 0.85  # with the edge idle, everything recurring is hot again
