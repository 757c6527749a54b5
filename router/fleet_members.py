"""Who is in the fleet and what they count: heartbeats in a sorted set scored with Redis's
clock (router clocks may skew), whoever beats next removing members silent for
``member_ttl_s``; and the exchange of frequency sketches, this router's own published, the
other live members' summed into its fleet view (router.fleet_sketch)."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from router.fleet_link import RedisLink, as_bytes
from router.fleet_sketch import SketchSnapshot, SnapshotError, install_fleet_view
from router.sketch import FrequencySketch

log = logging.getLogger("hotcold.fleet")

_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[3])))
for _, id in ipairs(gone) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = now - tonumber(live[i + 1])
  out[#out + 1] = redis.call('HGET', KEYS[2], live[i]) or ''
end
return out
"""


@dataclass(frozen=True, slots=True)
class Member:
    router_id: str
    last_seen_ms: int  # since its last heartbeat, by Redis's clock
    policy_version: int | None
    started_at: float | None
    host: str | None
    figures: dict[str, Any] | None = None  # its key figures (the dashboard's fleet page)

    def describe(self) -> dict[str, Any]:
        return {
            "router_id": self.router_id,
            "last_seen_ms": self.last_seen_ms,
            "policy_version": self.policy_version,
            "started_at": self.started_at,
            "host": self.host,
            "figures": self.figures,
        }


class Membership:
    def __init__(self, link: RedisLink, router_id: str, policy_version: Callable[[], int]) -> None:
        self.link = link
        self.router_id = router_id
        self._policy_version = policy_version
        self._heartbeat = link.client.register_script(_HEARTBEAT)
        # A timestamp for people (when it started), not a measurement: wall time on purpose.
        self._started_at = time.time()
        self.members: list[Member] = []
        # This router's key figures, carried by each heartbeat (a few hundred bytes) so any
        # member's fleet page shows every member (router/dashboard.py); None: not sent.
        self.figures: Callable[[], dict[str, Any]] | None = None

    async def beat(self) -> None:
        info = msgpack.packb(
            {
                "started_at": self._started_at,
                "policy_version": self._policy_version(),
                "host": socket.gethostname(),
                "figures": self.figures() if self.figures is not None else None,
            }
        )
        keys = self.link.keys
        ttl_ms = int(self.link.config.member_ttl_s * 1000)
        reply = await self.link.call(
            self._heartbeat(
                keys=[keys.members, keys.info, keys.sketches],
                args=[self.router_id, info, ttl_ms],
            )
        )
        members = []
        for index in range(0, len(reply), 3):
            router_id = (
                reply[index].decode() if isinstance(reply[index], bytes) else str(reply[index])
            )
            details: dict[str, Any] = {}
            with contextlib.suppress(ValueError, msgpack.ExtraData, TypeError):
                unpacked = msgpack.unpackb(reply[index + 2]) if reply[index + 2] else {}
                details = unpacked if isinstance(unpacked, dict) else {}
            members.append(
                Member(
                    router_id,
                    int(reply[index + 1]),
                    details.get("policy_version"),
                    details.get("started_at"),
                    details.get("host"),
                    figures if isinstance(figures := details.get("figures"), dict) else None,
                )
            )
        self.members = members

    async def leave(self) -> None:
        keys = self.link.keys
        await self.link.call(self.link.client.zrem(keys.members, self.router_id))
        await self.link.call(self.link.client.hdel(keys.info, self.router_id))
        await self.link.call(self.link.client.hdel(keys.sketches, self.router_id))


class SketchExchange:
    def __init__(self, link: RedisLink, membership: Membership, sketch: FrequencySketch) -> None:
        self.link = link
        self.membership = membership
        self.sketch = sketch
        self.fleet_sketches = 0  # other routers' sketches in the current fleet view
        self.syncs = 0
        self._last_ok = link.clock.now()

    async def exchange_sketches(self) -> None:
        """Publish this router's sketch; sum the other live members' into the fleet view."""
        clock, router_id, keys = self.link.clock, self.membership.router_id, self.link.keys
        if clock.now() - self._last_ok > self.link.config.member_ttl_s:
            self.sketch.set_remote(None, None)  # stale: back to local frequencies
            self.fleet_sketches = 0
        blob = SketchSnapshot.of(router_id, self.sketch).encode()
        await self.link.call(self.link.client.hset(keys.sketches, router_id, blob))
        others = [m.router_id for m in self.membership.members if m.router_id != router_id]
        snapshots = []
        if others:
            raws = await self.link.call(self.link.client.hmget(keys.sketches, others))
            for other, raw in zip(others, raws, strict=True):
                if raw is None:
                    continue
                try:
                    snapshots.append(SketchSnapshot.decode(as_bytes(raw)))
                except SnapshotError as exc:
                    log.warning("skipped the sketch of router %s: %s", other, exc)
        self.fleet_sketches = install_fleet_view(self.sketch, snapshots)
        self._last_ok = clock.now()
        self.syncs += 1
