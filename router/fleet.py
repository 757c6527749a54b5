"""Fleet sync over Redis: one policy and one view of what is hot, shared by every router.

Keys (all with the ``{fleet}`` hash tag, so a Redis Cluster keeps them in one slot)::

    hotcold:{fleet}:policy          hash: version (integer), doc (msgpack FleetDocument)
    hotcold:{fleet}:policy-changed  pub/sub channel: the new version, after every change
    hotcold:{fleet}:members         sorted set: router id -> last heartbeat (Redis time, ms)
    hotcold:{fleet}:member-info     hash: router id -> msgpack (started, policy version, ...)
    hotcold:{fleet}:sketches        hash: router id -> its frequency sketch (all_to_all view)
    hotcold:{fleet}:hot-keys        sorted set: key -> decayed fleet count (shared view)

Six background loops, each bounded by ``redis_timeout_s`` per call; nothing in the request
path waits on any of them:

- *subscribe*: a change published on the channel is fetched at once (about a millisecond);
- *poll*: every ``poll_interval_s`` the stored version is compared, so a lost message or a
  restarted Redis heals. The newer version wins: a router whose policy is newer than Redis's
  (Redis restarted empty, or failed over to a replica that missed a write) writes its own back,
  with the same compare-and-set. On equal versions with different content, Redis's wins.
- *heartbeat*: membership in the sorted set, scored with Redis's clock (router clocks may
  skew); members silent for ``member_ttl_s`` are removed by whoever beats next;
- *sketch*: the fleet's hot-key view: this router's most counted keys pushed into one shared
  decaying sorted set and its top read back (router/fleet_hotkeys.py; linear in the fleet),
  or, with ``hot_key_view: all_to_all``, its sketch published and the others' summed;
- *tenants*: the live API keys and tenant limits, fetched when their version changes (also
  at once on the channel's ``tenants`` message: router/fleet_keys.py);
- *limits*: the fleet-wide tenant limits' token debits are flushed, and while Redis is away
  it is PINGed to go back from local buckets to fleet-wide limits (router/fleet_limits.py).

Changes are committed with a Lua compare-and-set on the version: of two concurrent edits based
on the same version exactly one is stored, the other gets :class:`VersionConflict`.

This module composes the parts, each in its own module: the Redis link and its key names
(router/fleet_link.py), the policy (router/fleet_policy.py), membership and the sketch
exchange (router/fleet_members.py).

When Redis is unreachable the router keeps its last policy, falls back to local frequencies
after ``member_ttl_s`` and reports ``unreachable`` on ``/readyz`` and in metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from router.clock import Clock, MonotonicClock
from router.config import FleetConfig
from router.edge_release import EdgeRelease
from router.fleet_hotkeys import SharedHotKeys
from router.fleet_keys import RedisTenantStore
from router.fleet_limits import FleetLimits
from router.fleet_link import REDIS_FAILURES, RedisLink
from router.fleet_members import Member, Membership, SketchExchange
from router.fleet_policy import PolicySync
from router.fleet_release import ReleaseSync
from router.live_keys import TenantDirectory
from router.policy import FleetDocument
from router.policy_manager import PolicyManager
from router.sketch import FrequencySketch
from router.tenants import TenantLimiter

__all__ = ["REDIS_FAILURES", "FleetSync", "Member", "default_router_id"]


def default_router_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class FleetSync:
    """The Redis side of a router's policy: a :class:`router.policy_manager.PolicyStore`."""

    def __init__(
        self,
        config: FleetConfig,
        sketch: FrequencySketch,
        router_id: str | None = None,
        clock: Clock | None = None,
        release: EdgeRelease | None = None,
        limiter: TenantLimiter | None = None,
        directory: TenantDirectory | None = None,
        max_live_keys: int = 100_000,
    ) -> None:
        """The policy manager that adopts the fleet's documents is given to :meth:`start`:
        it is built with this object as its store, so one of the two comes second."""
        self.config = config
        self.sketch = sketch
        self.router_id = router_id or config.router_id or default_router_id()
        self.clock = clock or MonotonicClock()
        self.link = RedisLink(config, self.clock, self._local_state)
        self.url = self.link.url
        self.membership = Membership(self.link, self.router_id, self._policy_version)
        # The fleet's hot-key view: the shared decaying set (linear in the fleet), or the
        # all-to-all sketch exchange (quadratic; kept as the benchmark's reference).
        self.hot_keys: SharedHotKeys | None = None
        self.sketches: SketchExchange | None = None
        if config.hot_key_view == "shared":
            test_clock = None if isinstance(self.clock, MonotonicClock) else self.clock
            self.hot_keys = SharedHotKeys(self.link, sketch, test_clock)
        else:
            self.sketches = SketchExchange(self.link, self.membership, sketch)
        self.release = ReleaseSync(self.link, release, self.router_id) if release else None
        # Fleet-wide tenant limits; the local limiter is their fallback. A router on an
        # injected clock (tests) times them with it, else Redis's clock does.
        self.limits = (
            None
            if limiter is None
            else FleetLimits(
                self.link,
                limiter,
                limiter.limits_of,
                test_clock=None if isinstance(self.clock, MonotonicClock) else self.clock,
            )
        )
        # The live API keys and tenant limits (router/fleet_keys.py).
        self.tenants = RedisTenantStore(self.link, directory, max_live_keys) if directory else None
        self.policy: PolicySync | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _policy_version(self) -> int:
        return self.policy.manager.document.version if self.policy is not None else 0

    def _local_state(self) -> str:
        return f"policy version {self._policy_version()} and local frequencies"

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self, manager: PolicyManager) -> None:
        on_release = self.release.sync if self.release is not None else None
        on_tenants = self.tenants.sync if self.tenants is not None else None
        self.policy = PolicySync(self.link, manager, on_release, on_tenants)
        every = self.link.every
        loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "subscribe": self.policy.subscribe_loop,
            "poll": every(self.config.poll_interval_s, self.policy.sync_policy),
            "heartbeat": every(self.config.heartbeat_interval_s, self.membership.beat),
        }
        exchange = self.hot_keys.exchange if self.hot_keys else None
        if self.sketches is not None:
            exchange = self.sketches.exchange_sketches
        if exchange is not None:
            loops["sketch"] = every(self.config.sketch_interval_s, exchange)
        if self.limits is not None:
            loops["limits"] = self.limits.loop
        if self.tenants is not None:
            loops["tenants"] = every(self.config.poll_interval_s, self.tenants.sync)
        if self.release is not None:
            loops["release"] = every(self.config.poll_interval_s, self.release.sync)
        self._tasks = [
            asyncio.create_task(loop(), name=f"fleet-{name}") for name, loop in loops.items()
        ]

    async def stop(self) -> None:
        """Leave the fleet (best effort) and close; bounded, whatever state Redis is in."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.config.redis_timeout_s)
        with contextlib.suppress(*REDIS_FAILURES):
            await self.membership.leave()
        await self.link.close()

    # ---- the store ---------------------------------------------------------------------------

    async def commit(self, document: FleetDocument, expected_version: int) -> None:
        if self.policy is None:
            raise RuntimeError("FleetSync.start(manager) has not been called")
        await self.policy.commit(document, expected_version)

    # ---- introspection -----------------------------------------------------------------------

    @property
    def members(self) -> list[Member]:
        return self.membership.members

    def _view_syncs(self) -> int:
        if self.sketches is not None:
            return self.sketches.syncs
        return self.hot_keys.syncs if self.hot_keys is not None else 0

    def status(self) -> dict[str, Any]:
        link = self.link
        reachable = link.reachable
        return {
            "configured": True,
            "fleet": self.config.name,
            "router_id": self.router_id,
            "redis": self.url,
            "state": {None: "connecting", True: "connected", False: "unreachable"}[reachable],
            "last_ok_age_s": None
            if link.last_ok_at is None
            else round(self.clock.now() - link.last_ok_at, 3),
            "last_error": link.last_error,
            "policy_version": self._policy_version(),
            "members": [member.describe() for member in self.members],
            "hot_key_view": self.config.hot_key_view,
            "sketches_merged": self.sketches.fleet_sketches if self.sketches else 0,
            "fleet_hot_keys": self.hot_keys.fleet_keys if self.hot_keys else None,
            "sketch_syncs": self._view_syncs(),
            "refused_documents": dict(self.policy.refused) if self.policy else {},
            "release_stages_adopted": self.release.adopted if self.release else 0,
            "errors": link.errors,
            "limits": self.limits.status() if self.limits is not None else None,
            "tenants": self.tenants.status() if self.tenants is not None else None,
        }
