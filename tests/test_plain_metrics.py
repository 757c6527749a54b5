"""The request path's lock-free series (router.metrics.PlainCounter, PlainHistogram) export
byte for byte what prometheus_client's Counter and Histogram export for the same counts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from router.metrics import (
    LATENCY_BUCKETS_S,
    TTFT_BUCKETS_S,
    PlainCounter,
    PlainHistogram,
    RouterMetrics,
)

LABELS = st.sampled_from(["hot", "cold", "a b", 'q"uote'])
VALUES = st.one_of(
    st.sampled_from([0.0, *LATENCY_BUCKETS_S, *TTFT_BUCKETS_S]),
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(LABELS, st.integers(min_value=0, max_value=10), VALUES), max_size=60),
    st.sampled_from([LATENCY_BUCKETS_S, TTFT_BUCKETS_S]),
)
def test_plain_series_export_what_the_library_exports(
    events: list[tuple[str, int, float]], buckets: tuple[float, ...]
) -> None:
    RouterMetrics()  # its switch: no *_created series, as in the router
    library, plain = CollectorRegistry(), CollectorRegistry()
    counter = Counter("t_requests", "Requests.", ["route", "status"], registry=library)
    histogram = Histogram("t_seconds", "Seconds.", ["route"], buckets=buckets, registry=library)
    plain_counter = PlainCounter("t_requests", "Requests.", ["route", "status"], registry=plain)
    plain_histogram = PlainHistogram("t_seconds", "Seconds.", ["route"], buckets, registry=plain)
    for label, amount, value in events:
        counter.labels(label, str(amount % 3)).inc(amount)
        plain_counter.labels(label, str(amount % 3)).inc(amount)
        histogram.labels(label).observe(value)
        plain_histogram.labels(label).observe(value)
    assert generate_latest(plain) == generate_latest(library)
