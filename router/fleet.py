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

When Redis is unreachable the router keeps its last policy, falls back to local frequencies
after ``member_ttl_s`` and reports ``unreachable`` on ``/readyz`` and in metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
from redis.exceptions import RedisClusterException, RedisError

from router.config import FleetConfig
from router.fleet_sketch import SketchSnapshot, SnapshotError, install_fleet_view
from router.policy import FleetDocument, RefusedDocument, decode_document
from router.policy_manager import PolicyManager, StoreUnavailable, VersionConflict
from router.redis_connect import RedisClient, connect, describe
from router.sketch import FrequencySketch

log = logging.getLogger("hotcold.fleet")
T = TypeVar("T")
# What a Redis call can fail with (RedisClusterException is not a RedisError).
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)

_COMMIT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or -1
if current ~= tonumber(ARGV[1]) then return {0, current} end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'doc', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return {1, tonumber(ARGV[2])}
"""

# Write ours back only when the store holds an older version (or none): the newer one wins.
_RESTORE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or -1
if current < 0 or current >= tonumber(ARGV[1]) then return current end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'doc', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return tonumber(ARGV[1])
"""

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

    def describe(self) -> dict[str, Any]:
        return {
            "router_id": self.router_id,
            "last_seen_ms": self.last_seen_ms,
            "policy_version": self.policy_version,
            "started_at": self.started_at,
            "host": self.host,
        }


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def default_router_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class FleetSync:
    """The Redis side of a router's policy: a :class:`router.policy_manager.PolicyStore`."""

    def __init__(
        self,
        config: FleetConfig,
        sketch: FrequencySketch,
        router_id: str | None = None,
    ) -> None:
        """The policy manager that adopts the fleet's documents is given to :meth:`start`:
        it is built with this object as its store, so one of the two comes second."""
        if config.redis_url is None:
            raise ValueError("FleetSync needs fleet.redis_url")
        self.config = config
        self._manager: PolicyManager | None = None
        self.sketch = sketch
        self.router_id = router_id or config.router_id or default_router_id()
        self.url = describe(config.redis_url)
        prefix = f"hotcold:{{{config.name}}}:"
        self.policy_key = prefix + "policy"
        self.channel = prefix + "policy-changed"
        self.members_key = prefix + "members"
        self.info_key = prefix + "member-info"
        self.sketches_key = prefix + "sketches"
        self._client: RedisClient = connect(config.redis_url, config.redis_timeout_s)
        self._commit = self._client.register_script(_COMMIT)
        self._restore = self._client.register_script(_RESTORE)
        self._heartbeat = self._client.register_script(_HEARTBEAT)
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = time.time()
        self.reachable: bool | None = None  # None until the first call returns
        self.last_ok_at: float | None = None
        self.last_error: str | None = None
        self.errors = 0
        self.members: list[Member] = []
        self.fleet_sketches = 0  # other routers' sketches in the current fleet view
        self.sketch_syncs = 0
        self._last_sketch_ok = 0.0
        self.refused: dict[str, int] = {}
        self._refused_document: FleetDocument | None = None
        self._refused_logged: set[tuple[str, str]] = set()

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def manager(self) -> PolicyManager:
        if self._manager is None:
            raise RuntimeError("FleetSync.start(manager) has not been called")
        return self._manager

    def start(self, manager: PolicyManager) -> None:
        self._manager = manager
        loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "subscribe": self._subscribe_loop,
            "poll": self._every(self.config.poll_interval_s, self.sync_policy),
            "heartbeat": self._every(self.config.heartbeat_interval_s, self.beat),
            "sketch": self._every(self.config.sketch_interval_s, self.exchange_sketches),
        }
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
            async with asyncio.timeout(self.config.redis_timeout_s):
                await self._client.zrem(self.members_key, self.router_id)
                await self._client.hdel(self.info_key, self.router_id)
                await self._client.hdel(self.sketches_key, self.router_id)
        with contextlib.suppress(*REDIS_FAILURES):
            async with asyncio.timeout(self.config.redis_timeout_s):
                await self._client.aclose()

    def _every(
        self, period_s: float, step: Callable[[], Awaitable[None]]
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def loop() -> None:
            while True:
                try:
                    await step()
                except REDIS_FAILURES:
                    pass  # counted and logged by _call; the next period tries again
                except Exception:  # a bug must not end the loop: log it and go on
                    log.exception("fleet %s failed", getattr(step, "__name__", "step"))
                await asyncio.sleep(period_s)

        return loop

    async def _call(self, operation: Awaitable[T]) -> T:
        """One Redis call, bounded; tracks reachability (logged on each transition)."""
        try:
            async with asyncio.timeout(self.config.redis_timeout_s):
                result = await operation
        except REDIS_FAILURES as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.reachable is not False:
                log.warning(
                    "Redis %s unreachable (%s); serving on policy version %d and local frequencies",
                    self.url,
                    self.last_error,
                    self.manager.document.version,
                )
            self.reachable = False
            raise
        if self.reachable is False:
            log.info("Redis %s reachable again; reconciling the policy", self.url)
        self.reachable = True
        self.last_ok_at = time.time()
        return result

    # ---- the policy --------------------------------------------------------------------------

    async def commit(self, document: FleetDocument, expected_version: int) -> None:
        try:
            stored, version = await self._call(
                self._commit(
                    keys=[self.policy_key],
                    args=[expected_version, document.version, document.encode(), self.channel],
                )
            )
        except REDIS_FAILURES as exc:
            raise StoreUnavailable(f"the fleet's Redis ({self.url}) did not answer: {exc}") from exc
        if not stored:
            raise VersionConflict(expected_version, int(version))

    async def sync_policy(self) -> None:
        """Bring this router and Redis to the newer of their two policies."""
        version_raw, raw = await self._call(self._client.hmget(self.policy_key, ["version", "doc"]))
        local = self.manager.document
        if raw is None:
            if local.version > 0:
                await self._write_back(local, stored=0)
            return
        try:
            document = decode_document(_as_bytes(raw), self.config.name)
            if version_raw is None or int(version_raw) != document.version:
                raise RefusedDocument("invalid", "the hash's version and the document's differ")
        except (RefusedDocument, ValueError) as exc:
            self._refuse(exc, _as_bytes(raw))
            return
        if document == self._refused_document:
            return  # refused already (and logged once); wait for the next version
        if document.version > local.version or (
            document.version == local.version and document != local
        ):
            if document.version == local.version and local.version > 0:
                log.warning("policy version %d differs from Redis's; taking Redis's", local.version)
            if not self.manager.adopt(document):  # its changes do not validate here
                self._refused_document = document
                self.refused["invalid_changes"] = self.refused.get("invalid_changes", 0) + 1
        elif document.version < local.version:
            await self._write_back(local, stored=document.version)

    async def _write_back(self, local: FleetDocument, stored: int) -> None:
        result = await self._call(
            self._restore(
                keys=[self.policy_key], args=[local.version, local.encode(), self.channel]
            )
        )
        if int(result) == local.version:
            log.warning(
                "Redis held policy version %d, older than ours; wrote back version %d",
                stored,
                local.version,
            )

    def _refuse(self, exc: Exception, raw: bytes) -> None:
        reason = exc.reason if isinstance(exc, RefusedDocument) else "invalid"
        self.refused[reason] = self.refused.get(reason, 0) + 1
        signature = (reason, str(exc))
        if signature not in self._refused_logged:  # once per distinct problem, not every poll
            self._refused_logged.add(signature)
            log.error(
                "refused the policy document in Redis at %s (%d bytes, %s): %s; keeping version %d",
                self.policy_key,
                len(raw),
                reason,
                exc,
                self.manager.document.version,
            )

    async def _subscribe_loop(self) -> None:
        """Fetch a change as soon as it is published; reconnect after any failure."""
        while True:
            pubsub = self._client.pubsub()
            try:
                await self.sync_policy()  # first: it also discovers a cluster's slots
                await self._call(pubsub.subscribe(self.channel))
                await self.sync_policy()  # whatever changed while we were subscribing
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        await self.sync_policy()
            except REDIS_FAILURES:
                self.reachable = False
                await asyncio.sleep(self.config.poll_interval_s)
            except Exception:  # a bug must not end the loop: log it and go on
                log.exception("fleet subscription failed; retrying")
                await asyncio.sleep(self.config.poll_interval_s)
            finally:
                with contextlib.suppress(*REDIS_FAILURES):
                    async with asyncio.timeout(self.config.redis_timeout_s):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]

    # ---- membership and frequencies ----------------------------------------------------------

    async def beat(self) -> None:
        info = msgpack.packb(
            {
                "started_at": self._started_at,
                "policy_version": self.manager.document.version,
                "host": socket.gethostname(),
            }
        )
        ttl_ms = int(self.config.member_ttl_s * 1000)
        reply = await self._call(
            self._heartbeat(
                keys=[self.members_key, self.info_key, self.sketches_key],
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
                )
            )
        self.members = members

    async def exchange_sketches(self) -> None:
        """Publish this router's sketch; sum the other live members' into the fleet view."""
        if time.monotonic() - self._last_sketch_ok > self.config.member_ttl_s:
            self.sketch.set_remote(None, None)  # stale: back to local frequencies
            self.fleet_sketches = 0
        blob = SketchSnapshot.of(self.router_id, self.sketch).encode()
        await self._call(self._client.hset(self.sketches_key, self.router_id, blob))
        others = [m.router_id for m in self.members if m.router_id != self.router_id]
        snapshots = []
        if others:
            raws = await self._call(self._client.hmget(self.sketches_key, others))
            for router_id, raw in zip(others, raws, strict=True):
                if raw is None:
                    continue
                try:
                    snapshots.append(SketchSnapshot.decode(_as_bytes(raw)))
                except SnapshotError as exc:
                    log.warning("skipped the sketch of router %s: %s", router_id, exc)
        self.fleet_sketches = install_fleet_view(self.sketch, snapshots)
        self._last_sketch_ok = time.monotonic()
        self.sketch_syncs += 1

    # ---- introspection -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "configured": True,
            "fleet": self.config.name,
            "router_id": self.router_id,
            "redis": self.url,
            "state": {None: "connecting", True: "connected", False: "unreachable"}[self.reachable],
            "last_ok_age_s": None
            if self.last_ok_at is None
            else round(time.time() - self.last_ok_at, 3),
            "last_error": self.last_error,
            "policy_version": self.manager.document.version,
            "members": [member.describe() for member in self.members],
            "sketches_merged": self.fleet_sketches,
            "sketch_syncs": self.sketch_syncs,
            "refused_documents": dict(self.refused),
            "errors": self.errors,
        }
