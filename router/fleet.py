"""Fleet sync over Redis: one policy and one view of what is hot, shared by every router.

Keys (all with the ``{fleet}`` hash tag, so a Redis Cluster keeps them in one slot)::

    hotcold:{fleet}:policy          hash: version (integer), doc (msgpack FleetDocument)
    hotcold:{fleet}:policy-changed  pub/sub channel: the new version, after every change
    hotcold:{fleet}:members         sorted set: router id -> last heartbeat (Redis time, ms)
    hotcold:{fleet}:member-info     hash: router id -> msgpack (started, policy version, ...)
    hotcold:{fleet}:sketches        hash: router id -> its frequency sketch (router.fleet_sketch)

Four background loops, each bounded by ``redis_timeout_s`` per call; nothing in the request
path waits on any of them:

- *subscribe*: a change published on the channel is fetched at once (about a millisecond);
- *poll*: every ``poll_interval_s`` the stored version is compared, so a lost message or a
  restarted Redis heals. The newer version wins: a router whose policy is newer than Redis's
  (Redis restarted empty, or failed over to a replica that missed a write) writes its own back,
  with the same compare-and-set. On equal versions with different content, Redis's wins.
- *heartbeat*: membership in the sorted set, scored with Redis's clock (router clocks may
  skew); members silent for ``member_ttl_s`` are removed by whoever beats next;
- *sketch*: this router's own sketch is published, the others' are summed into its fleet view.

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
from router.fleet_link import REDIS_FAILURES, RedisLink
from router.fleet_members import Member, Membership, SketchExchange
from router.fleet_policy import PolicySync
from router.fleet_release import ReleaseSync
from router.policy import FleetDocument
from router.policy_manager import PolicyManager
from router.sketch import FrequencySketch

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
        self.sketches = SketchExchange(self.link, self.membership, sketch)
        self.release = ReleaseSync(self.link, release, self.router_id) if release else None
        self.policy: PolicySync | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _policy_version(self) -> int:
        return self.policy.manager.document.version if self.policy is not None else 0

    def _local_state(self) -> str:
        return f"policy version {self._policy_version()} and local frequencies"

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self, manager: PolicyManager) -> None:
        on_release = self.release.sync if self.release is not None else None
        self.policy = PolicySync(self.link, manager, on_release)
        every = self.link.every
        loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "subscribe": self.policy.subscribe_loop,
            "poll": every(self.config.poll_interval_s, self.policy.sync_policy),
            "heartbeat": every(self.config.heartbeat_interval_s, self.membership.beat),
            "sketch": every(self.config.sketch_interval_s, self.sketches.exchange_sketches),
        }
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
            "sketches_merged": self.sketches.fleet_sketches,
            "sketch_syncs": self.sketches.syncs,
            "refused_documents": dict(self.policy.refused) if self.policy else {},
            "release_stages_adopted": self.release.adopted if self.release else 0,
            "errors": link.errors,
        }
