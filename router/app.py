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
import functools
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from hotcold.front import FRONT, FrontHandler, FrontRoutes
from hotcold.http import BODY_TIMEOUT_S, MAX_BODY_BYTES, HttpRequest
from hotcold.wire.schema import PATHS
from router.admin import admin_app
from router.bookkeeping import Bookkeeping
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
from router.http1 import Http1Client
from router.live_keys import FileTenantStore, MemoryTenantStore, TenantDirectory, TenantStore
from router.metrics import RouterMetrics
from router.middlewares import answer_inference, request_middleware
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
from router.tracing import NO_TRACING, OtelTracing, Tracing
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
    config: RouterConfig,
    layers: ConfigLayers,
    clock: Clock,
    handle_signals: bool,
    tracing: Tracing | None = None,
) -> AsyncIterator[RouterParts]:
    """Every part of the router, in dependency order, each closed in reverse on the way out.
    ``tracing``: spans go there (tests: an in-memory exporter); None: as tracing.* says."""
    async with contextlib.AsyncExitStack() as stack:
        if tracing is None:
            enabled = config.tracing.enabled
            tracing = OtelTracing.from_config(config.tracing) if enabled else NO_TRACING
        stack.push_async_callback(tracing.shutdown)  # the last spans flushed, at the very end
        connector = aiohttp.TCPConnector(
            limit=config.cloud.max_connections,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ttl_dns_cache=10,
        )
        # aiohttp's client carries the health probes and the dashboard's polls (requests go
        # through `client` below). No cookie jar: an upstream's cookies are never sent back.
        session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar()
        )
        stack.push_async_callback(session.close)
        # The request path's own client (router/http1.py).
        client = Http1Client(max_connections=config.cloud.max_connections, keepalive_s=30.0)
        stack.push_async_callback(client.close)
        metrics = RouterMetrics(config.metrics.tenant_labels)
        # Counters of what an answer did, counted while the router waits (router/bookkeeping.py).
        bookkeeping = Bookkeeping()
        attempts = functools.partial(bookkeeping.defer, metrics.observe_attempt)
        pools = Pools(session, client, clock, observer=attempts, tracing=tracing)
        stack.push_async_callback(pools.close)
        routes = ModelRoutes(pools, config)  # ConfigError: a pool's key cannot be read
        metrics.watch_pools(lambda: pools)
        edge = None
        if config.edge.endpoints:
            edge = UpstreamPool(
                "edge",
                config.edge,
                session,
                client,
                clock,
                observer=attempts,
                tracing=tracing,
            )
            metrics.watch_pools(lambda: [edge] if edge is not None else [])
            await _task(stack, edge.run_prober(), "edge-prober")
        classifier, cache = build_policy(config, clock)
        release = EdgeRelease(config.edge)
        limiter = TenantLimiter(config.tenants, config.edge.max_inflight)
        authenticator = Authenticator(config.tenants)
        directory = TenantDirectory(config.tenants, authenticator, limiter, clock)
        fleet = None
        if config.fleet.redis_url is not None:
            fleet = FleetSync(
                config.fleet,
                classifier.sketch,
                clock=clock,
                release=release,
                limiter=limiter,
                directory=directory,
                max_live_keys=config.tenants.max_live_keys,
            )

        def apply_reload(reloaded: RouterConfig) -> None:
            """A reloaded file's live sections: the catalog and pools, then the tenants."""
            routes.apply(reloaded)
            directory.set_file(reloaded.tenants)

        manager = PolicyManager(layers, config, classifier, clock, apply_reload, fleet)
        tenant_store: TenantStore
        if fleet is not None and fleet.tenants is not None:
            tenant_store = fleet.tenants
        elif layers.path is not None:
            tenant_store = FileTenantStore(Path(layers.path), directory, manager.reload_file)
        else:
            tenant_store = MemoryTenantStore(directory)
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
            authenticator,
            release,
            fleet.limits if fleet is not None else None,
            bookkeeping,
        )
        dispatcher.tracing = tracing
        stack.push_async_callback(dispatcher.close)
        started = time.monotonic()

        def cost() -> CostEstimate:
            edge_hours = (time.monotonic() - started) / 3600 if edge is not None else 0.0
            return estimate_cost(config.cost, metrics.token_totals, edge_hours)

        def dashboard_state() -> dict[str, Any]:
            cloud = [e for pool in routes.pools for e in pool.snapshot()]
            edge_state = edge.snapshot()[0]["state"] if edge is not None else None
            return {
                "threshold": round(classifier.controller.value, 3),
                "currency": config.cost.currency,
                "cloud_up": [sum(e["state"] == "closed" for e in cloud), len(cloud)],
                "edge": edge_state,
                "policy_version": manager.document.version,
            }

        recorder = DashboardRecorder(
            metrics, dashboard_state, cost, config.dashboard.history_points
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
            tenants=directory,
            tenant_store=tenant_store,
            tracing=tracing,
        )
        metrics.watch_policy(lambda: parts)
        metrics.watch_release(dispatcher.release.snapshot)
        metrics.watch_cost(cost, config.cost.currency)
        metrics.watch_fleet(lambda: fleet.status() if fleet is not None else None)
        if fleet is not None:
            fleet.membership.figures = recorder.figures  # the fleet page, through Redis
            fleet.start(manager)
            stack.push_async_callback(fleet.stop)
        # At shutdown, before the fleet stops: the last answers' counters and observations
        # are made while the fleet can still carry what they move (router/bookkeeping.py).
        stack.callback(bookkeeping.run)
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
    config: RouterConfig,
    layers: ConfigLayers,
    clock: Clock,
    handle_signals: bool,
    tracing: Tracing | None,
) -> Callable[[web.Application], Any]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with build_parts(config, layers, clock, handle_signals, tracing) as parts:
            app[PARTS] = parts
            yield

    return context


def _front(
    api: str, handler: Callable[[HttpRequest], Awaitable[web.StreamResponse]]
) -> FrontHandler:
    """A front-door handler: the inference request's whole treatment (the middleware's)
    around the route's handler (a partial: no coroutine of its own per request)."""
    return functools.partial(answer_inference, api=api, handler=handler)


def create_app(
    config: RouterConfig,
    *,
    clock: Clock | None = None,
    layers: ConfigLayers | None = None,
    handle_signals: bool = False,
    tracing: Tracing | None = None,
) -> web.Application:
    """The router. ``layers`` (from ``load_layers``) enables config reload and says where each
    value came from; ``handle_signals`` installs the SIGHUP reload (the main program only);
    ``tracing``: where spans go, instead of what ``tracing.*`` says (tests)."""
    app = web.Application(
        middlewares=[request_middleware],
        client_max_size=config.server.max_body_bytes,
    )
    app[MAX_BODY_BYTES] = config.server.max_body_bytes
    app[BODY_TIMEOUT_S] = config.server.body_timeout_s
    app.cleanup_ctx.append(
        _parts_context(
            config,
            layers or ConfigLayers.of(config),
            clock or MonotonicClock(),
            handle_signals,
            tracing,
        )
    )
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    # The same three served by the front door (hotcold/front.py) when the app runs on
    # hotcold.serving's Server; aiohttp's routes above serve them anywhere else.
    if config.server.front_door:
        app[FRONT] = FrontRoutes(
            {
                PATHS["chat"]: _front("chat", chat_completions),
                PATHS["completion"]: _front("completion", completions),
                PATHS["embeddings"]: _front("embeddings", embeddings),
            },
            max_body_bytes=config.server.max_body_bytes,
        )
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
