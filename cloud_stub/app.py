"""Composition root of the cloud stub."""

from __future__ import annotations

import random

from aiohttp import web

from cloud_stub.admission import Admission
from cloud_stub.config import StubConfig
from cloud_stub.faults import FaultInjector, FaultRates
from cloud_stub.handlers import (
    STATE,
    StubState,
    chat_completions,
    completions,
    embeddings,
    get_faults,
    healthz,
    metrics,
    models,
    set_faults,
)
from cloud_stub.latency import LatencyModel
from cloud_stub.metrics import StubMetrics
from hotcold.http import MAX_BODY_BYTES, error_middleware, install_request_ids


def create_app(config: StubConfig) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_body_bytes)
    app[MAX_BODY_BYTES] = config.max_body_bytes
    install_request_ids(app)
    rates = FaultRates(config.error_rate, config.drop_rate, config.slow_rate, config.slow_ms)
    admission = Admission(config.max_concurrency, config.max_queue)
    app[STATE] = StubState(
        config=config,
        admission=admission,
        faults=FaultInjector(rates, config.seed),
        latency=LatencyModel(config.ttft_ms, config.tpot_ms, config.jitter),
        metrics=StubMetrics(admission),
        rng=random.Random(config.seed),
    )
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/health", healthz)  # the vLLM convention (vllm-router waits for it)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/faults", get_faults)
    app.router.add_post("/admin/faults", set_faults)
    return app
