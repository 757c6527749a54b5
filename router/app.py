"""Composition root: ``create_app(config)`` wires every part of the router, once.

The parts are built in one place (:func:`build_parts`), frozen into
:class:`router.parts.RouterParts` and held under one application key; each resource has one
paired lifecycle on an exit stack (the HTTP session, the pools' probers, the fleet's loops,
the config watch, the dashboard's sampler), closed in reverse on shutdown. The admin API is a
sub-application behind one authentication middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from hotcold.http import BODY_TIMEOUT_S, MAX_BODY_BYTES, error_middleware
from router.admin import admin_app
from router.cache import ResponseCache
from router.classify import Classifier
from router.clock import Clock, MonotonicClock
from router.config import ConfigLayers, RouterConfig
from router.config_watch import watch_config
from router.cost import CostEstimate, estimate_cost
from router.dashboard import DashboardRecorder, favicon, moved_to_admin
from router.dispatch import Dispatcher
from router.edge_release import EdgeRelease
from router.fleet import FleetSync
from router.handlers import (
    chat_completions,
    completions,
    embeddings,
    healthz,
    metrics,
    model,
    models,
    readyz,
)
from router.metrics import RouterMetrics
from router.middlewares import context_middleware, shedding_middleware
from router.models import ModelRoutes
from router.openapi import openapi_json
from router.parts import PARTS, RouterParts
from router.policy import effective_values, values_from_config
from router.policy_manager import PolicyManager, pin_rules, threshold_params
from router.pools import Pools
from router.sessions import AdminSessions
from router.sketch import FrequencySketch, width_for
from router.tenants import Authenticator, TenantLimiter
from router.threshold import ThresholdController
from router.upstream import UpstreamPool


def build_policy(config: RouterConfig, clock: Clock) -> tuple[Classifier, ResponseCache]:
    """The hot/cold machinery: one sketch shared by classification and cache admission."""
    entries = config.cache.entries
    sketch_config = config.policy.sketch
    width = sketch_config.width or width_for(entries, minimum=1024)
    sketch = FrequencySketch(
        width, sketch_config.window_factor * entries, doorkeeper=sketch_config.doorkeeper
    )
    values = effective_values(values_from_config(config), {})
    controller = ThresholdController(
        threshold_params(values, config.policy.threshold.initial), clock.now()
    )
    pins = pin_rules(values)
    cache = ResponseCache(
        entries,
        sketch,
        max_bytes=config.cache.max_bytes,
        max_entry_bytes=config.cache.max_entry_bytes,
        policies=config.cache.policies,
        initial_policy=config.cache.initial_policy,
    )
    return Classifier(sketch, controller, pins), cache


async def _task(
    stack: contextlib.AsyncExitStack, coroutine: Coroutine[Any, Any, None], name: str
) -> None:
    """A background task cancelled and awaited when the stack closes."""
    task = asyncio.create_task(coroutine, name=name)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)


@contextlib.asynccontextmanager
async def build_parts(
    config: RouterConfig, layers: ConfigLayers, clock: Clock, handle_signals: bool
) -> AsyncIterator[RouterParts]:
    """Every part of the router, in dependency order, each closed in reverse on the way out."""
    async with contextlib.AsyncExitStack() as stack:
        connector = aiohttp.TCPConnector(
            limit=config.cloud.max_connections,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ttl_dns_cache=10,
        )
        session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        stack.push_async_callback(session.close)
        metrics = RouterMetrics()
        pools = Pools(session, clock, observer=metrics.observe_attempt)
        stack.push_async_callback(pools.close)
        routes = ModelRoutes(pools, config)  # ConfigError: a pool's key cannot be read
        metrics.watch_pools(lambda: pools)
        edge = None
        if config.edge.endpoints:
            edge = UpstreamPool(
                "edge", config.edge, session, clock, observer=metrics.observe_attempt
            )
            metrics.watch_pools(lambda: [edge] if edge is not None else [])
            await _task(stack, edge.run_prober(), "edge-prober")
        classifier, cache = build_policy(config, clock)
        release = EdgeRelease(config.edge)
        fleet = None
        if config.fleet.redis_url is not None:
            fleet = FleetSync(config.fleet, classifier.sketch, clock=clock, release=release)
        manager = PolicyManager(layers, config, classifier, clock, routes.apply, fleet)
        limiter = TenantLimiter(config.tenants, config.edge.max_inflight)
        dispatcher = Dispatcher(
            config,
            routes,
            edge,
            classifier,
            cache,
            metrics,
            clock,
            manager,
            limiter,
            Authenticator(config.tenants),
            release,
        )
        stack.push_async_callback(dispatcher.close)
        started = time.monotonic()

        def cost() -> CostEstimate:
            edge_hours = (time.monotonic() - started) / 3600 if edge is not None else 0.0
            return estimate_cost(config.cost, metrics.token_totals, edge_hours)

        recorder = DashboardRecorder(
            metrics,
            lambda: {"threshold": round(classifier.controller.value, 3)},
            cost,
            config.dashboard.history_points,
        )
        parts = RouterParts(
            config=config,
            layers=layers,
            clock=clock,
            metrics=metrics,
            session=session,
            routes=routes,
            edge=edge,
            classifier=classifier,
            cache=cache,
            manager=manager,
            limiter=limiter,
            dispatcher=dispatcher,
            fleet=fleet,
            dashboard=recorder,
            sessions=AdminSessions(),
        )
        metrics.watch_policy(lambda: parts)
        metrics.watch_release(dispatcher.release.snapshot)
        metrics.watch_cost(cost)
        metrics.watch_fleet(lambda: fleet.status() if fleet is not None else None)
        if fleet is not None:
            fleet.start(manager)
            stack.push_async_callback(fleet.stop)
        await _config_reload(stack, layers, config, manager, handle_signals)
        edge_url = config.edge.endpoints[0] if config.edge.endpoints else None
        sampler = recorder.run(config.dashboard.sample_interval_s, session, edge_url)
        await _task(stack, sampler, "dashboard-sampler")
        yield parts


async def _config_reload(
    stack: contextlib.AsyncExitStack,
    layers: ConfigLayers,
    config: RouterConfig,
    manager: PolicyManager,
    handle_signals: bool,
) -> None:
    """The config file watch and the SIGHUP reload (the main program only)."""
    if layers.path is None:
        return
    if config.admin.watch_config_s > 0:
        watcher = watch_config(layers.path, config.admin.watch_config_s, manager)
        await _task(stack, watcher, "config-watch")
    if handle_signals:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, manager.reload_file)
        stack.callback(loop.remove_signal_handler, signal.SIGHUP)


def _parts_context(
    config: RouterConfig, layers: ConfigLayers, clock: Clock, handle_signals: bool
) -> Callable[[web.Application], Any]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with build_parts(config, layers, clock, handle_signals) as parts:
            app[PARTS] = parts
            yield

    return context


def create_app(
    config: RouterConfig,
    *,
    clock: Clock | None = None,
    layers: ConfigLayers | None = None,
    handle_signals: bool = False,
) -> web.Application:
    """The router. ``layers`` (from ``load_layers``) enables config reload and says where each
    value came from; ``handle_signals`` installs the SIGHUP reload (the main program only)."""
    app = web.Application(
        middlewares=[context_middleware, error_middleware, shedding_middleware],
        client_max_size=config.server.max_body_bytes,
    )
    app[MAX_BODY_BYTES] = config.server.max_body_bytes
    app[BODY_TIMEOUT_S] = config.server.body_timeout_s
    app.cleanup_ctx.append(
        _parts_context(
            config, layers or ConfigLayers.of(config), clock or MonotonicClock(), handle_signals
        )
    )
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.add_subapp("/admin", admin_app())
    app.router.add_get("/dashboard", moved_to_admin)
    app.router.add_get("/dashboard/data", moved_to_admin)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/openapi.json", openapi_json)
    return app
