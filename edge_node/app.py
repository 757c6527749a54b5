"""Composition root of the edge node: the loaded model, its runner, the HTTP face."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from edge_node.admin import draining_lifecycle, post_model
from edge_node.config import EdgeNodeConfig
from edge_node.handlers import (
    STATE,
    EdgeState,
    chat_completions,
    completions,
    device_allocated,
    healthz,
    metrics,
    models,
)
from edge_node.metrics import EdgeMetrics
from edge_node.model import LoadedModel
from edge_node.runner import make_runner
from hotcold.http import MAX_BODY_BYTES, error_middleware, install_request_ids


def create_app(config: EdgeNodeConfig, loaded: LoadedModel) -> web.Application:
    """The model is loaded by the caller (slow, and shared by tests); the runner's batcher
    task lives with the application."""
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_body_bytes)
    app[MAX_BODY_BYTES] = config.max_body_bytes
    install_request_ids(app)
    edge_metrics = EdgeMetrics()
    edge_metrics.model_bytes.set(loaded.footprint_bytes)

    async def runner_lifecycle(app: web.Application) -> AsyncIterator[None]:
        runner = make_runner(config, loaded, edge_metrics)
        state = EdgeState(config, loaded, runner, edge_metrics)
        # The runner is read from the state: POST /admin/model replaces it.
        edge_metrics.watch(
            lambda: state.runner.waiting, lambda: state.runner.active, device_allocated
        )
        app[STATE] = state
        runner.start()
        try:
            yield
        finally:
            await state.runner.stop()

    app.cleanup_ctx.append(draining_lifecycle)
    app.cleanup_ctx.append(runner_lifecycle)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/admin/model", post_model)
    return app
