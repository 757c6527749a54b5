"""The admin API: the effective policy (thresholds and why they moved, pins, cache), behind
the admin bearer token. With no token configured the router runs in open mode and says so."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hotcold.http import respond
from hotcold.wire import Unauthorized
from router.app_keys import CLOCK_KEY
from router.cache import ResponseCache
from router.classify import Classifier
from router.config import RouterConfig
from router.dispatch import Dispatcher
from router.sketch import FrequencySketch
from router.threshold import ThresholdController
from router.upstream import UpstreamPool


@dataclass
class PolicyState:
    """The live hot/cold machinery, for the admin API and the metrics collector."""

    config: RouterConfig
    classifier: Classifier
    cache: ResponseCache
    dispatcher: Dispatcher
    edge: UpstreamPool | None

    @property
    def controller(self) -> ThresholdController:
        return self.classifier.controller

    @property
    def sketch(self) -> FrequencySketch:
        return self.classifier.sketch

    @property
    def coalesced(self) -> int:
        return self.dispatcher.flights.coalesced


POLICY_STATE = web.AppKey("policy_state", PolicyState)
_BEARER = re.compile(r"^Bearer\s+(\S+)$", re.IGNORECASE)


def require_admin(request: web.Request, token: str | None) -> None:
    """Constant-time check of the admin bearer token (open mode when none is configured)."""
    if token is None:
        return
    match = _BEARER.match(request.headers.get("Authorization", ""))
    if match is None or not hmac.compare_digest(match.group(1).encode(), token.encode()):
        raise Unauthorized("the admin API needs 'Authorization: Bearer <admin token>'")


async def get_policy(request: web.Request) -> web.Response:
    state = request.app[POLICY_STATE]
    require_admin(request, state.config.admin.token)
    state.controller.maybe_tick(request.app[CLOCK_KEY].now())
    document: dict[str, Any] = {
        "threshold": state.controller.snapshot(),
        "capacity": state.config.policy.capacity.model_dump(),
        "pins": [pin.model_dump() for pin in state.config.policy.pins],
        "cache": state.cache.snapshot(),
        "sketch": {
            "width": state.sketch.width,
            "window_requests": state.sketch.sample_size,
            "memory_bytes": state.sketch.memory_bytes,
            "agings": state.sketch.resets,
        },
        "edge": {
            "endpoints": state.edge.snapshot() if state.edge else [],
            "outstanding": state.edge.outstanding if state.edge else 0,
            "max_inflight": state.config.edge.max_inflight,
            "takes_hot_traffic": state.dispatcher.edge_can_take(),
        },
        "mode": "open (no admin token configured)" if state.config.admin.token is None else "token",
    }
    return respond(request, document)
