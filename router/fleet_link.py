"""The fleet's Redis link: one client, the fleet's key names, and bounded calls that track
whether Redis can be reached (logged once per transition, never awaited by a request).

Every key carries the ``{fleet}`` hash tag, so a Redis Cluster keeps a fleet in one slot and
its Lua scripts work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import RedisClusterException, RedisError

from router.clock import Clock
from router.config import FleetConfig
from router.redis_connect import RedisClient, close, connect, describe

log = logging.getLogger("hotcold.fleet")
T = TypeVar("T")
# What a Redis call can fail with (RedisClusterException is not a RedisError).
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class FleetKeys:
    policy: str  # hash: version (integer), doc (msgpack FleetDocument)
    channel: str  # pub/sub: the new version, after every change
    members: str  # sorted set: router id -> last heartbeat (Redis time, ms)
    info: str  # hash: router id -> msgpack (started, policy version, host)
    sketches: str  # hash: router id -> its frequency sketch (router.fleet_sketch)
    api_keys: str  # hash: key id -> msgpack {tenant, sha256, name, created_at}
    tenant_limits: str  # hash: tenant -> msgpack TenantLimits (the live overrides)
    tenants_version: str  # integer, incremented by every change of the two above
    keys_managed: str  # "1" once a key was made through the API: never open mode again
    prefix: str  # of every key of the fleet

    @classmethod
    def of(cls, fleet: str) -> FleetKeys:
        prefix = f"hotcold:{{{fleet}}}:"
        return cls(
            prefix + "policy",
            prefix + "policy-changed",
            prefix + "members",
            prefix + "member-info",
            prefix + "sketches",
            prefix + "api-keys",
            prefix + "tenant-limits",
            prefix + "tenants-version",
            prefix + "keys-managed",
            prefix,
        )


def as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class RedisLink:
    def __init__(
        self, config: FleetConfig, clock: Clock, describe_local: Callable[[], str]
    ) -> None:
        """``describe_local`` says what this router serves on while Redis is away (a log
        line's end)."""
        if config.redis_url is None:
            raise ValueError("the fleet needs fleet.redis_url")
        self.config = config
        self.clock = clock
        self.url = describe(config.redis_url)
        self.keys = FleetKeys.of(config.name)
        self.client: RedisClient = connect(config.redis_url, config.redis_timeout_s)
        self._describe_local = describe_local
        self.reachable: bool | None = None  # None until the first call returns
        self.last_ok_at: float | None = None  # the clock's time of the last good call
        self.last_error: str | None = None
        self.errors = 0

    async def call(self, operation: Awaitable[T]) -> T:
        """One Redis call, bounded by ``redis_timeout_s``; tracks reachability."""
        try:
            async with asyncio.timeout(self.config.redis_timeout_s):
                result = await operation
        except REDIS_FAILURES as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.reachable is not False:
                log.warning(
                    "Redis %s unreachable (%s); serving on %s",
                    self.url,
                    self.last_error,
                    self._describe_local(),
                )
            self.reachable = False
            raise
        if self.reachable is False:
            log.info("Redis %s reachable again; reconciling the policy", self.url)
        self.reachable = True
        self.last_ok_at = self.clock.now()
        return result

    def every(
        self, period_s: float, step: Callable[[], Awaitable[None]]
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        """A background loop running ``step`` every period; Redis failures are counted by
        :meth:`call`, a bug is logged, and neither ends the loop."""

        async def loop() -> None:
            while True:
                try:
                    await step()
                except REDIS_FAILURES:
                    pass
                except Exception:
                    log.exception("fleet %s failed", getattr(step, "__name__", "step"))
                await asyncio.sleep(period_s)

        return loop

    async def close(self) -> None:
        with contextlib.suppress(*REDIS_FAILURES):
            async with asyncio.timeout(self.config.redis_timeout_s):
                await close(self.client)
