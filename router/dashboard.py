"""``/dashboard``: one page, no build step, that shows the gateway live; and
``/dashboard/fleet``: every router of the fleet side by side.

A recorder samples the router's state every ``dashboard.sample_interval_s`` into a bounded
history (``dashboard.history_points``, 600 = 10 minutes at 1 s), so the page shows the recent
past the moment it opens; the page polls ``/dashboard/data`` and draws with inline SVG. The
edge node's load and memory come from its ``/healthz``, read by the recorder (never by a
request), with a short timeout.

The fleet page reads the members' key figures through Redis: each router puts
:meth:`DashboardRecorder.figures` (a dozen numbers) into its membership heartbeat
(router/fleet_members.py), so one router's page shows them all without knowing their
addresses, and a member that stops beating leaves the page with the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from hotcold.http import respond
from router.cost import CostEstimate
from router.handlers import pool_snapshot
from router.metrics import RouterMetrics
from router.parts import parts_of

WINDOW_S = 10.0  # latency percentiles over the last 10 s


class DashboardRecorder:
    def __init__(
        self,
        metrics: RouterMetrics,
        state: Callable[[], dict[str, Any]],
        cost: Callable[[], CostEstimate],
        history_points: int,
    ) -> None:
        self.metrics = metrics
        self._state = state
        self.cost = cost
        self.history: deque[dict[str, Any]] = deque(maxlen=history_points)
        self.edge_node: dict[str, Any] | None = None
        self._previous: dict[tuple[str, str, str], int] = {}
        self._previous_at: float | None = None
        self._lookups: deque[tuple[float, int, int]] = deque()  # (at, hits, lookups) totals

    def figures(self) -> dict[str, Any]:
        """This router's key figures for the fleet page (small: they ride every heartbeat)."""
        last = self.history[-1] if self.history else {}
        state = self._state()
        hot = sum(v for (route, _, _), v in self.metrics.answer_totals.items() if route == "hot")
        total = sum(self.metrics.answer_totals.values())
        cost = self.cost()
        return {
            "at": last.get("t"),
            "requests": total,
            "rps": round(last.get("hot_rps", 0.0) + last.get("cold_rps", 0.0), 2),
            "hot_share": round(hot / total, 4) if total else None,
            "hit_ratio": last.get("hit_ratio"),
            "p99_hot_ms": last.get("p99_hot"),
            "p99_cold_ms": last.get("p99_cold"),
            "threshold": state["threshold"],
            "saved": round(cost.saved, 6),
            "currency": state.get("currency"),
            "cloud_up": state.get("cloud_up"),
            "edge": state.get("edge"),
            "policy_version": state.get("policy_version"),
        }

    def sample(self) -> dict[str, Any]:
        """One point: rates since the previous point, the current levels."""
        now = time.perf_counter()
        totals = dict(self.metrics.answer_totals)
        elapsed = now - self._previous_at if self._previous_at is not None else None
        delta = {key: count - self._previous.get(key, 0) for key, count in totals.items()}
        self._previous, self._previous_at = totals, now

        def rate(match: Callable[[tuple[str, str, str]], bool]) -> float:
            if not elapsed:
                return 0.0
            return round(sum(v for k, v in delta.items() if match(k)) / elapsed, 2)

        # Hit ratio over the last WINDOW_S: per-interval ratios are mostly gaps at low rates.
        hits_total = sum(v for (_, _, cache), v in totals.items() if cache == "hit")
        lookups_total = sum(v for (_, _, cache), v in totals.items() if cache in ("hit", "miss"))
        self._lookups.append((now, hits_total, lookups_total))
        while len(self._lookups) > 1 and self._lookups[0][0] < now - WINDOW_S:
            self._lookups.popleft()
        _, hits_then, lookups_then = self._lookups[0]
        hits, lookups = hits_total - hits_then, lookups_total - lookups_then
        state = self._state()
        latency = self.metrics.recent.percentiles(now - WINDOW_S)
        cost = self.cost()
        point = {
            "t": round(time.time(), 3),
            "hot_rps": rate(lambda key: key[0] == "hot"),
            "cold_rps": rate(lambda key: key[0] == "cold"),
            "cache_rps": rate(lambda key: key[1] == "cache"),
            "edge_rps": rate(lambda key: key[1] == "edge"),
            "cloud_rps": rate(lambda key: key[1] == "cloud"),
            "hit_ratio": round(hits / lookups, 4) if lookups else None,
            "threshold": state["threshold"],
            "p50_hot": latency.get("hot", {}).get("p50"),
            "p99_hot": latency.get("hot", {}).get("p99"),
            "p50_cold": latency.get("cold", {}).get("p50"),
            "p99_cold": latency.get("cold", {}).get("p99"),
            "saved": round(cost.saved, 6),
            "edge_queued": (self.edge_node or {}).get("queued"),
        }
        self.history.append(point)
        return point

    async def run(
        self, interval_s: float, session: aiohttp.ClientSession, edge_url: str | None
    ) -> None:
        while True:
            if edge_url is not None:
                self.edge_node = await _edge_health(session, edge_url)
            self.sample()
            await asyncio.sleep(interval_s)


async def _edge_health(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
        async with session.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=1.0)) as r:
            if r.status == 200:
                document = orjson.loads(await r.read())
                return document if isinstance(document, dict) else None
    return None


def _page(name: str) -> web.Response:
    page = resources.files("router").joinpath(f"static/{name}").read_bytes()
    return web.Response(
        body=page,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP},
    )


async def dashboard_page(request: web.Request) -> web.StreamResponse:
    """The page, under /admin (its login: router/admin.py's middleware)."""
    return _page("dashboard.html")


async def common_script(request: web.Request) -> web.StreamResponse:
    """The script both pages share (static/common.js)."""
    script = resources.files("router").joinpath("static/common.js").read_bytes()
    return web.Response(
        body=script, content_type="text/javascript", headers={"Cache-Control": "no-store"}
    )


async def fleet_page(request: web.Request) -> web.StreamResponse:
    """The fleet's routers side by side (``/admin/dashboard/fleet``)."""
    return _page("fleet.html")


async def fleet_data(request: web.Request) -> web.Response:
    """Every live member's key figures as its last heartbeat carried them (standalone: this
    router's own)."""
    parts = parts_of(request)
    fleet = parts.fleet
    if fleet is None:
        members = [
            {"router_id": "this router", "host": None, "last_seen_ms": 0, "policy_version":
             parts.manager.document.version, "figures": parts.dashboard.figures()}
        ]  # fmt: skip
        name, router_id, state = None, "this router", "standalone"
    else:
        members = [member.describe() for member in fleet.members]
        name, router_id = parts.config.fleet.name, fleet.router_id
        state = parts.fleet_status()["state"]
    document = {
        "now": time.time(),
        "fleet": name,
        "state": state,
        "router_id": router_id,
        "members": sorted(members, key=lambda m: str(m["router_id"])),
    }
    return respond(request, document, headers={"Cache-Control": "no-store"})


_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:"
)


async def moved_to_admin(request: web.Request) -> web.StreamResponse:
    """``/dashboard`` (and its data) live under ``/admin`` now, behind the admin middleware;
    the old address, ``?token=`` included, still works."""
    raise web.HTTPTemporaryRedirect("/admin" + request.path_qs)


async def favicon(request: web.Request) -> web.Response:
    """Browsers ask for it on every page of this origin (the API's error pages too)."""
    return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})


async def dashboard_data(request: web.Request) -> web.Response:
    state = parts_of(request)
    recorder = state.dashboard
    metrics = recorder.metrics
    cost = recorder.cost()
    answers: dict[str, dict[str, int]] = {}
    for (route, served_by, _), count in metrics.answer_totals.items():
        by_producer = answers.setdefault(route, {})
        by_producer[served_by] = by_producer.get(served_by, 0) + count
    controller = state.controller
    document = {
        "now": time.time(),
        "history": list(recorder.history),
        "answers": answers,
        "cache": state.cache.snapshot(),
        "threshold": {
            "value": round(controller.value, 3),
            "min": controller.params.minimum,
            "max": controller.params.maximum,
            "reason": controller.reason,
        },
        "latency_ms": metrics.recent.percentiles(time.perf_counter() - WINDOW_S),
        "edge": {
            "configured": state.edge is not None,
            "endpoints": state.edge.snapshot() if state.edge else [],
            "outstanding": state.edge.outstanding if state.edge else 0,
            "max_inflight": state.config.edge.max_inflight,
            "node": recorder.edge_node,
            "release": state.dispatcher.release.snapshot(),
        },
        "cloud": [e for pool in state.routes.pools for e in pool_snapshot(pool)],
        "cost": {
            "currency": state.config.cost.currency,
            "actual": round(cost.actual, 6),
            "all_cloud": round(cost.all_cloud, 6),
            "saved": round(cost.saved, 6),
            "saved_fraction": round(cost.saved_fraction, 4),
        },
        "fleet": state.fleet_status(),
        "policy_version": state.manager.document.version,
    }
    return respond(request, document, headers={"Cache-Control": "no-store"})
