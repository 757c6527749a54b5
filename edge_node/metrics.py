"""The edge node's Prometheus series: queue, batches, tokens and memory.

Throughput is a counter of tokens (``hotcold_edge_tokens_total{direction="out"}``): tokens/s
is its ``rate()`` over any window, where a gauge of the last batch's speed was one sample of
it. No ``*_created`` series; ``process_*`` as every service exports them."""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import (
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class EdgeMetrics:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.registry.register(PROCESS_COLLECTOR)
        self.requests = Counter(
            "hotcold_edge_requests",
            "Requests by path and status.",
            ["path", "status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "hotcold_edge_queue_depth", "Requests waiting for a batch.", registry=self.registry
        )
        self.active = Gauge(
            "hotcold_edge_batch_active", "Rows in the batch running now.", registry=self.registry
        )
        self.batch_size = Histogram(
            "hotcold_edge_batch_size",
            "Rows per generate call.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "hotcold_edge_tokens", "Tokens by direction.", ["direction"], registry=self.registry
        )
        self.generation_seconds = Counter(
            "hotcold_edge_generation_seconds", "Time spent in generate.", registry=self.registry
        )
        self.oom_splits = Counter(
            "hotcold_edge_oom_splits",
            "Batches halved after running out of memory.",
            registry=self.registry,
        )
        self.prefill_tokens = Counter(
            "hotcold_edge_prefill_tokens",
            "Prompt tokens computed by prefill (continuous batching; reused ones not counted).",
            registry=self.registry,
        )
        self.prefix_hits = Counter(
            "hotcold_edge_prefix_hits",
            "Requests whose prompt started with a cached prefix.",
            registry=self.registry,
        )
        self.prefix_saved_tokens = Counter(
            "hotcold_edge_prefix_saved_tokens",
            "Prompt tokens whose KV came from the prefix cache instead of prefill.",
            registry=self.registry,
        )
        self.model_bytes = Gauge(
            "hotcold_edge_model_footprint_bytes",
            "Measured memory of the loaded model.",
            registry=self.registry,
        )
        self.process_bytes = Gauge(
            "hotcold_edge_process_resident_bytes",
            "Resident memory of the edge node process.",
            registry=self.registry,
        )
        self.process_bytes.set_function(process_rss)
        self.device_bytes = Gauge(
            "hotcold_edge_device_allocated_bytes",
            "GPU memory allocated by torch (0 on CPU).",
            registry=self.registry,
        )

    def watch(
        self,
        waiting: Callable[[], int],
        active: Callable[[], int],
        device_allocated: Callable[[], int],
    ) -> None:
        self.queue_depth.set_function(waiting)
        self.active.set_function(active)
        self.device_bytes.set_function(device_allocated)

    def observe_batch(self, rows: int, tokens_out: int, tokens_in: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.tokens.labels("out").inc(tokens_out)
        self.tokens.labels("in").inc(tokens_in)
        self.generation_seconds.inc(seconds)

    def observe_step(
        self,
        rows: int,
        tokens_out: int,
        prefill_tokens: int,
        hits: int,
        saved_tokens: int,
        seconds: float,
    ) -> None:
        """One step of continuous batching: ``rows`` share its forward passes."""
        self.batch_size.observe(rows)
        self.tokens.labels("out").inc(tokens_out)
        self.tokens.labels("in").inc(prefill_tokens + saved_tokens)
        self.prefill_tokens.inc(prefill_tokens)
        self.prefix_hits.inc(hits)
        self.prefix_saved_tokens.inc(saved_tokens)
        self.generation_seconds.inc(seconds)


def process_rss() -> float:
    try:
        with open(f"/proc/{os.getpid()}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0.0
