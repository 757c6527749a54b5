"""The router's parts: built once by the composition root (router/app.py), frozen, held under
one application key. Handlers, middlewares, the admin API and the metrics read what they need
from here, typed, instead of from a dozen keys spread over the modules."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from hotcold.front import FrontRequest
from hotcold.http import HttpRequest
from router.cache import ResponseCache
from router.classify import Classifier
from router.clock import Clock
from router.config import ConfigLayers, RouterConfig
from router.dispatch import Dispatcher
from router.live_keys import TenantDirectory, TenantStore
from router.metrics import RouterMetrics
from router.models import ModelRoutes
from router.policy_manager import PolicyManager
from router.sessions import AdminSessions
from router.sketch import FrequencySketch
from router.tenants import TenantLimiter
from router.threshold import ThresholdController
from router.tracing import NO_TRACING, Tracing
from router.upstream import UpstreamPool

if TYPE_CHECKING:  # these modules read the parts themselves
    from router.dashboard import DashboardRecorder
    from router.fleet import FleetSync


@dataclass
class InFlight:
    """Inference requests being handled (load shedding past ``max_concurrent_requests``)."""

    count: int = 0


@dataclass(frozen=True, slots=True)
class RouterParts:
    config: RouterConfig  # the start-up configuration
    layers: ConfigLayers
    clock: Clock
    metrics: RouterMetrics
    session: aiohttp.ClientSession
    routes: ModelRoutes  # the live catalog and its cloud pools
    edge: UpstreamPool | None
    classifier: Classifier
    cache: ResponseCache
    manager: PolicyManager
    limiter: TenantLimiter
    dispatcher: Dispatcher
    fleet: FleetSync | None
    dashboard: DashboardRecorder
    sessions: AdminSessions  # the dashboard's login cookies
    tenants: TenantDirectory  # the keys and tenant limits in effect (file + live)
    tenant_store: TenantStore  # where the admin API's key and limit changes go
    tracing: Tracing = NO_TRACING  # OpenTelemetry spans (router/tracing.py); off: no-ops
    in_flight: InFlight = field(default_factory=InFlight)

    # What the metrics collector and the admin API read (router.metrics.PolicyView).
    @property
    def controller(self) -> ThresholdController:
        return self.classifier.controller

    @property
    def sketch(self) -> FrequencySketch:
        return self.classifier.sketch

    @property
    def coalesced(self) -> int:
        return self.dispatcher.flights.coalesced

    @property
    def policy_version(self) -> int:
        return self.manager.document.version

    @property
    def reloads(self) -> Mapping[str, int]:
        return self.manager.reloads

    def fleet_status(self) -> dict[str, Any]:
        """The fleet's state for /readyz, the admin API and the dashboard."""
        if self.fleet is None:
            return {"configured": False, "state": "standalone"}
        return self.fleet.status()


PARTS = web.AppKey("parts", RouterParts)


def parts_of(request: HttpRequest) -> RouterParts:
    """The parts, from any handler of the router or of its sub-applications: they live on the
    root application, first of the matched apps (``config_dict`` would build a chain of the
    apps on every call, a few times per request); a front-door request names its app."""
    if isinstance(request, FrontRequest):
        return request.app[PARTS]
    return request.match_info.apps[0][PARTS]
