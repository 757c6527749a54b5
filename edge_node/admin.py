"""``POST /admin/model``: load another model (a new version, or another folder) in place of
the current one, without a restart and without failing a request.

The new model is loaded on a worker thread while the current one keeps serving; then new
requests go to the new model's runner, and the old runner is stopped once the requests it
holds have finished (bounded by ``DRAIN_S``). Answers name the model they came from, so the
router sees a new edge model and sends it back to shadow to earn its traffic again
(router/edge_release.py). Body: ``{"model": "default" | "<folder>", "name": "<optional name
to report, e.g. with a version>"}``. One load at a time (409 while one runs).

The edge node listens on the gateway's loopback by default; put it behind the gateway's own
access control if its port is reachable from elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from edge_node.handlers import STATE, EdgeState, model_info
from edge_node.model import load_configured
from edge_node.runner import Runner, make_runner
from edge_node.weights import WeightsError, resolve_model
from hotcold.http import read_document, respond
from hotcold.wire import Conflict, InvalidField

log = logging.getLogger("hotcold.edge.admin")
DRAIN_S = 60.0  # at most this long for the old model's requests to finish
LOADING = web.AppKey("model_loading", asyncio.Lock)


async def post_model(http: web.Request) -> web.Response:
    body = await read_document(http)
    spec, name = body.get("model"), body.get("name")
    if not isinstance(spec, str) or not spec:
        raise InvalidField("'model' must be 'default' or a model folder", param="model")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 200):
        raise InvalidField("'name' must be a string of 1-200 characters", param="name")
    lock = http.app[LOADING]
    if lock.locked():
        raise Conflict("a model is being loaded; try again when it is done", code="loading")
    async with lock:
        state = http.app[STATE]
        config = state.config
        try:
            path: Path = await asyncio.to_thread(resolve_model, spec)
        except WeightsError as exc:
            raise InvalidField(str(exc), param="model") from None
        loaded = await asyncio.to_thread(load_configured, path, config)
        if name:
            loaded = replace(loaded, name=name)
        runner = make_runner(config, loaded, state.metrics)
        runner.start()
        old = state.runner
        previous = state.loaded.name
        state.loaded, state.runner = loaded, runner
        state.metrics.model_bytes.set(loaded.footprint_bytes)
        log.warning("model %s replaced by %s", previous, loaded.name)
        http.app[DRAINING].add(asyncio.create_task(_drain(old), name="edge-drain"))
        return respond(http, {"loaded": True, "previous": previous, **model_info(state)})


async def _drain(runner: Runner) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            while runner.inflight:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.05)
    await runner.stop()


DRAINING: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("model_draining")


async def draining_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Old runners still draining are stopped on shutdown."""
    app[LOADING] = asyncio.Lock()
    app[DRAINING] = set()
    yield
    draining: set[asyncio.Task[None]] = app[DRAINING]
    for task in list(draining):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


__all__ = ["EdgeState", "draining_lifecycle", "post_model"]
