"""Composition root: ``create_app(config)`` wires every part of the router.

Each resource has one paired lifecycle in ``app.cleanup_ctx`` (aiohttp runs them in order on
start-up and in reverse on shutdown, and only for those that started).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from hotcold.http import BODY_TIMEOUT_S, MAX_BODY_BYTES, error_middleware
from router.admin import (
    FLEET,
    POLICY_STATE,
    PolicyState,
    get_fleet,
    get_policy,
    memory,
    put_policy,
    reload_config,
)
from router.app_keys import CLOCK_KEY, CONFIG_KEY
from router.cache import ResponseCache
from router.classify import Classifier
from router.clock import Clock, MonotonicClock
from router.config import ConfigLayers, RouterConfig
from router.config_watch import watch_config
from router.cost import CostEstimate, estimate_cost
from router.dashboard import DASHBOARD, DashboardRecorder, dashboard_data, dashboard_page, favicon
from router.dispatch import Dispatcher
from router.fleet import FleetSync
from router.handlers import (
    DISPATCHER,
    EDGE,
    SESSION,
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
from router.middlewares import IN_FLIGHT, METRICS, context_middleware, shedding_middleware
from router.models import ModelRoutes
from router.openapi import openapi_json
from router.policy import effective_values, values_from_config
from router.policy_manager import PolicyManager, pin_rules, threshold_params
from router.pools import Pools
from router.sketch import FrequencySketch, ceil_power_of_two
from router.tenants import Authenticator, TenantLimiter
from router.threshold import ThresholdController
from router.upstream import UpstreamPool

CONFIG = CONFIG_KEY
CLOCK = CLOCK_KEY
LAYERS = web.AppKey("config_layers", ConfigLayers)
HANDLE_SIGNALS = web.AppKey("handle_signals", bool)


def build_policy(config: RouterConfig, clock: Clock) -> tuple[Classifier, ResponseCache]:
    """The hot/cold machinery: one sketch shared by classification and cache admission."""
    entries = config.cache.entries
    sketch_config = config.policy.sketch
    width = sketch_config.width or max(1024, 4 * ceil_power_of_two(entries))
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


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client session (keep-alive pool), the model catalog with its pools and their
    probers, the edge pool, the dispatcher."""
    config = app[CONFIG]
    connector = aiohttp.TCPConnector(
        limit=config.cloud.max_connections,
        limit_per_host=0,
        keepalive_timeout=30.0,
        ttl_dns_cache=10,
    )
    session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
    metrics = app[METRICS]
    pools = Pools(session, app[CLOCK], observer=metrics.observe_attempt)
    try:
        routes = ModelRoutes(pools, config)
    except BaseException:
        await session.close()
        raise
    metrics.watch_pools(lambda: pools)
    edge = None
    if config.edge.endpoints:
        edge = UpstreamPool(
            "edge", config.edge, session, app[CLOCK], observer=metrics.observe_attempt
        )
        metrics.watch_pools(lambda: [edge] if edge is not None else [])
    classifier, cache = build_policy(config, app[CLOCK])
    manager = PolicyManager(app[LAYERS], config, classifier, app[CLOCK], routes.apply)
    limiter = TenantLimiter(config.tenants, config.edge.max_inflight)
    dispatcher = Dispatcher(
        config,
        routes,
        edge,
        classifier,
        cache,
        metrics,
        app[CLOCK],
        manager,
        limiter,
        Authenticator(config.tenants),
    )
    state = PolicyState(config, classifier, cache, dispatcher, edge, manager)
    metrics.watch_policy(lambda: state)
    app[SESSION] = session
    app[EDGE] = edge
    app[DISPATCHER] = dispatcher
    app[POLICY_STATE] = state
    probers = [asyncio.create_task(edge.run_prober(), name="edge-prober")] if edge else []
    try:
        yield
    finally:
        for prober in probers:
            prober.cancel()
        for prober in probers:
            with contextlib.suppress(asyncio.CancelledError):
                await prober
        await pools.close()
        await session.close()


async def _dashboard(app: web.Application) -> AsyncIterator[None]:
    """The cost estimate (metrics) and the dashboard's sampler."""
    config = app[CONFIG]
    metrics = app[METRICS]
    started = time.monotonic()
    has_edge = bool(config.edge.endpoints)

    def cost() -> CostEstimate:
        edge_hours = (time.monotonic() - started) / 3600 if has_edge else 0.0
        return estimate_cost(config.cost, metrics.token_totals, edge_hours)

    metrics.watch_cost(cost)
    state = app[POLICY_STATE]
    recorder = DashboardRecorder(
        metrics,
        lambda: {"threshold": round(state.controller.value, 3)},
        cost,
        config.dashboard.history_points,
    )
    app[DASHBOARD] = recorder
    edge_url = config.edge.endpoints[0] if config.edge.endpoints else None
    sampler = asyncio.create_task(
        recorder.run(config.dashboard.sample_interval_s, app[SESSION], edge_url),
        name="dashboard-sampler",
    )
    try:
        yield
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


async def _fleet(app: web.Application) -> AsyncIterator[None]:
    """Fleet sync when Redis is configured; the config file watch and SIGHUP reload always."""
    config = app[CONFIG]
    state = app[POLICY_STATE]
    fleet = None
    if config.fleet.redis_url is not None:
        fleet = FleetSync(config.fleet, state.manager, state.sketch)
        state.manager.store = fleet
        fleet.start()
    app[FLEET] = fleet
    app[METRICS].watch_fleet(lambda: fleet.status() if fleet is not None else None)
    loop = asyncio.get_running_loop()
    watcher = None
    config_path = app[LAYERS].path
    if config_path is not None:
        if config.admin.watch_config_s > 0:
            watcher = asyncio.create_task(
                watch_config(config_path, config.admin.watch_config_s, state.manager),
                name="config-watch",
            )
        if app[HANDLE_SIGNALS]:
            loop.add_signal_handler(signal.SIGHUP, state.manager.reload_file)
    try:
        yield
    finally:
        if app[HANDLE_SIGNALS] and app[LAYERS].path is not None:
            loop.remove_signal_handler(signal.SIGHUP)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if fleet is not None:
            await fleet.stop()


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
    app[CONFIG] = config
    app[CLOCK] = clock or MonotonicClock()
    app[METRICS] = RouterMetrics()
    app[MAX_BODY_BYTES] = config.server.max_body_bytes
    app[BODY_TIMEOUT_S] = config.server.body_timeout_s
    app[IN_FLIGHT] = [0]
    app[LAYERS] = layers or ConfigLayers.of(config)
    app[HANDLE_SIGNALS] = handle_signals
    app.cleanup_ctx.append(_upstreams)
    app.cleanup_ctx.append(_fleet)
    app.cleanup_ctx.append(_dashboard)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/policy", get_policy)
    app.router.add_put("/admin/policy", put_policy)
    app.router.add_get("/admin/fleet", get_fleet)
    app.router.add_post("/admin/reload", reload_config)
    app.router.add_get("/admin/memory", memory)
    app.router.add_get("/dashboard", dashboard_page)
    app.router.add_get("/dashboard/data", dashboard_data)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/openapi.json", openapi_json)
    return app
