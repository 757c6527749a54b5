"""The fleet's policy in Redis: commits (a Lua compare-and-set on the version that also
publishes it), the subscription that fetches a change at once, the poll that heals a lost
message, and the write-back when Redis holds an older version than ours.

Of two concurrent edits based on the same version exactly one is stored, the other gets
:class:`VersionConflict`. The newer version wins: a router whose policy is newer than Redis's
(Redis restarted empty, or failed over to a replica that missed a write) writes its own back,
with the same compare-and-set. On equal versions with different content, Redis's wins. A
document that does not decode or validate is refused, logged once per distinct problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from router.fleet_link import REDIS_FAILURES, RedisLink, as_bytes
from router.policy import FleetDocument, RefusedDocument, decode_document
from router.policy_manager import PolicyManager, StoreUnavailable, VersionConflict

log = logging.getLogger("hotcold.fleet")

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


class PolicySync:
    def __init__(
        self,
        link: RedisLink,
        manager: PolicyManager,
        on_release: Callable[[], Awaitable[None]] | None = None,
        on_tenants: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``on_release``: fetch the edge's release stages (router/fleet_release.py) when
        the channel says they changed; ``on_tenants``: the live keys and tenant limits
        (router/fleet_keys.py)."""
        self.link = link
        self.manager = manager
        self.on_release = on_release
        self.on_tenants = on_tenants
        self._commit = link.client.register_script(_COMMIT)
        self._restore = link.client.register_script(_RESTORE)
        self.refused: dict[str, int] = {}
        self._refused_document: FleetDocument | None = None
        self._refused_logged: set[tuple[str, str]] = set()

    async def commit(self, document: FleetDocument, expected_version: int) -> None:
        keys = self.link.keys
        try:
            stored, version = await self.link.call(
                self._commit(
                    keys=[keys.policy],
                    args=[expected_version, document.version, document.encode(), keys.channel],
                )
            )
        except REDIS_FAILURES as exc:
            raise StoreUnavailable(
                f"the fleet's Redis ({self.link.url}) did not answer: {exc}"
            ) from exc
        if not stored:
            raise VersionConflict(expected_version, int(version))

    async def sync_policy(self) -> None:
        """Bring this router and Redis to the newer of their two policies."""
        keys = self.link.keys
        version_raw, raw = await self.link.call(
            self.link.client.hmget(keys.policy, ["version", "doc"])
        )
        local = self.manager.document
        if raw is None:
            if local.version > 0:
                await self._write_back(local, stored=0)
            return
        try:
            document = decode_document(as_bytes(raw), self.link.config.name)
            if version_raw is None or int(version_raw) != document.version:
                raise RefusedDocument("invalid", "the hash's version and the document's differ")
        except (RefusedDocument, ValueError) as exc:
            self._refuse(exc, as_bytes(raw))
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
        keys = self.link.keys
        result = await self.link.call(
            self._restore(keys=[keys.policy], args=[local.version, local.encode(), keys.channel])
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
                self.link.keys.policy,
                len(raw),
                reason,
                exc,
                self.manager.document.version,
            )

    async def subscribe_loop(self) -> None:
        """Fetch a change as soon as it is published; reconnect after any failure."""
        poll_s = self.link.config.poll_interval_s
        while True:
            pubsub = self.link.client.pubsub()
            try:
                await self.sync_policy()  # first: it also discovers a cluster's slots
                await self.link.call(pubsub.subscribe(self.link.keys.channel))
                await self.sync_policy()  # whatever changed while we were subscribing
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = message.get("data")
                        if data == b"release" and self.on_release is not None:
                            await self.on_release()
                        elif data == b"tenants" and self.on_tenants is not None:
                            await self.on_tenants()
                        elif data not in (b"release", b"tenants"):
                            await self.sync_policy()
            except REDIS_FAILURES:
                self.link.reachable = False
                await asyncio.sleep(poll_s)
            except Exception:  # a bug must not end the loop: log it and go on
                log.exception("fleet subscription failed; retrying")
                await asyncio.sleep(poll_s)
            finally:
                with contextlib.suppress(*REDIS_FAILURES):
                    async with asyncio.timeout(self.link.config.redis_timeout_s):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
