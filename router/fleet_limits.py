"""Tenant limits for the whole fleet: one GCRA per tenant in Redis, local buckets as fallback.

Every router asks Redis, in one ``EVALSHA`` of a Lua script, whether the tenant may send one
more request (the admissions that arrive in one turn of the event loop share one call, up to
``MAX_BATCH``: a burst costs one round trip, not one each); the script keeps two
*theoretical arrival times* (GCRA) per tenant, for requests/s (``burst`` deep) and for
upstream tokens/min, and answers admit, or refuse with the wait. One script, one round trip,
atomic: two routers asking at once are ordered by Redis, so the fleet as a whole admits what
one router would.

**Accuracy bound.** While every call reaches Redis the fleet admits at most
``burst + requests_per_s * t`` requests in any window of ``t`` seconds, exactly (the state is
one number per tenant, updated atomically, timed by Redis's own clock: routers' clocks never
enter it). Tokens are debited after the answer, like the local buckets: the tokens a router
used are sent with its next call for that tenant, or by the flush every
``limits_flush_interval_s``, so the fleet can overdraw the quota by the tokens its answers
used in that interval plus one answer per request in flight. While Redis is away each router
falls back to its own local buckets at the tenant's full limit, so an N-router fleet admits
up to N times the limit until Redis answers again (at most ``poll_interval_s`` after it is
back, found by a PING every ``limits_flush_interval_s``).

**A dead Redis never reaches a client.** A request waits at most ``limits_timeout_s`` for its
answer; past it, or when its call fails, it is judged by the local buckets. A refused
connection switches the router to local mode at once; calls that time out
(``redis_timeout_s``, a black-holed Redis) do after three in a row. In local mode no request
asks Redis until a background probe (``PING`` every ``limits_flush_interval_s``) succeeds. So
a dead Redis costs nothing; a black-holed one at most ``limits_timeout_s`` per request for
about three ``redis_timeout_s``, then nothing.
Concurrent calls are capped (``limits_max_inflight``) so a slow Redis cannot pile up
connections.

Time: Redis's clock (``TIME`` in the script), since two hosts' monotonic clocks are not
comparable. A router built on an injected clock (tests, replays) passes that clock's time
instead, so a test drives the fleet's limits with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from hotcold.wire import RateLimited
from router.clock import Clock
from router.config import TenantLimits
from router.fleet_link import REDIS_FAILURES, RedisLink
from router.tenants import TenantLimiter

log = logging.getLogger("hotcold.fleet")

# A batch of admissions, one entry per request (those that arrived in one turn of the event
# loop share one call). KEYS: per entry, the tenant's requests TAT and tokens TAT
# (microseconds on the script's clock). ARGV[1]: now (us; '' = Redis TIME); then per entry:
# request interval (us; 0 = unlimited), request tolerance (burst x interval, us), token
# interval (us per token; 0 = no quota), token tolerance (us), tokens to debit first.
# Returns per entry: 0, 0 admitted; 1, wait_us over requests/s; 2, wait_us over tokens/min.
_ADMIT = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local out = {}
for e = 0, #KEYS / 2 - 1 do
  local a = 1 + e * 5
  local verdict, wait = 0, 0
  local token_iv = tonumber(ARGV[a + 3])
  if token_iv > 0 then
    local tolerance = tonumber(ARGV[a + 4])
    local tat = math.max(tonumber(redis.call('GET', KEYS[e * 2 + 2]) or '0'), now)
    local debit = tonumber(ARGV[a + 5])
    if debit > 0 then
      tat = tat + debit * token_iv
      redis.call('SET', KEYS[e * 2 + 2], string.format('%.0f', tat),
                 'PX', math.ceil((tat - now) / 1000) + 1000)
    end
    if tat + token_iv - now > tolerance then
      verdict, wait = 2, tat + token_iv - now - tolerance
    end
  end
  local iv = tonumber(ARGV[a + 1])
  if verdict == 0 and iv > 0 then
    local tolerance = tonumber(ARGV[a + 2])
    local tat = math.max(tonumber(redis.call('GET', KEYS[e * 2 + 1]) or '0'), now)
    local new = tat + iv
    if new - now > tolerance then
      verdict, wait = 1, new - now - tolerance
    else
      redis.call('SET', KEYS[e * 2 + 1], string.format('%.0f', new),
                 'PX', math.ceil((new - now) / 1000) + 1000)
    end
  end
  out[#out + 1] = verdict
  out[#out + 1] = wait
end
return out
"""

US = 1_000_000
SLOW_CALLS_TO_LOCAL = 3
MAX_BATCH = 256  # admissions per call


def request_burst(limits: TenantLimits) -> int:
    """The bucket depth: ``burst``, or one second of requests_per_s (as the local bucket)."""
    assert limits.requests_per_s is not None
    return limits.burst or max(1, math.ceil(limits.requests_per_s))


def entry_args(limits: TenantLimits, debit: int) -> list[int]:
    """One admission's ARGV entry for a tenant's limits (plain code: tested without Redis)."""
    request_iv = request_tolerance = token_iv = token_tolerance = 0
    if limits.requests_per_s is not None:
        request_iv = max(1, round(US / limits.requests_per_s))
        request_tolerance = request_burst(limits) * request_iv
    if limits.tokens_per_min is not None:
        token_iv = max(1, round(60 * US / limits.tokens_per_min))
        token_tolerance = 60 * US
    return [request_iv, request_tolerance, token_iv, token_tolerance, debit]


@dataclass
class _Ask:
    keys: list[str]
    entry: list[int]
    answer: asyncio.Future[tuple[int, int]]


class FleetLimits:
    """The tenant limits of the request path when a fleet is configured (see the module)."""

    def __init__(
        self,
        link: RedisLink,
        local: TenantLimiter,
        limits_of: Callable[[str], TenantLimits],
        test_clock: Clock | None = None,
        max_pending: int = 10_000,
    ) -> None:
        """``limits_of``: the tenant's live limits; ``test_clock``: time for the script
        instead of Redis's (an injected clock: tests and replays)."""
        self.link = link
        self.local = local
        self.limits_of = limits_of
        self.test_clock = test_clock
        config = link.config
        self.timeout_s = config.limits_timeout_s
        self._script = link.client.register_script(_ADMIT)
        self._slots = asyncio.Semaphore(config.limits_max_inflight)
        self._queue: list[_Ask] = []  # admissions waiting for the next call
        self._launch_scheduled = False
        self._calls: set[asyncio.Task[None]] = set()
        self.batches = 0
        self._pending: dict[str, int] = {}  # tokens used, not yet sent (bounded)
        self._max_pending = max_pending
        self.mode = "fleet"  # or "local" while Redis is away
        self._failures = 0  # calls failed in a row
        self.switches = 0
        self.decided = {"fleet": 0, "local": 0}

    def _keys(self, tenant: str) -> list[str]:
        prefix = f"{self.link.keys.prefix}limit:{tenant}:"
        return [prefix + "req", prefix + "tok"]

    def _now_us(self) -> int | None:
        return None if self.test_clock is None else round(self.test_clock.now() * US)

    async def admit(self, tenant: str, now: float) -> None:
        """One request of ``tenant``, fleet-wide; 429 with Retry-After when over a limit."""
        limits = self.limits_of(tenant)
        if limits.requests_per_s is None and limits.tokens_per_min is None:
            return
        if self.mode == "local":
            self.decided["local"] += 1
            self.local.admit(tenant, now)
            return
        debit = self._pending.pop(tenant, 0)
        try:
            async with asyncio.timeout(self.timeout_s):
                verdict, wait_us = await self._ask(tenant, entry_args(limits, debit))
        except REDIS_FAILURES:
            # Past this request's bound, or its call failed (which :meth:`_call` counted):
            # judged here, by the local buckets.
            if debit:
                self._pending[tenant] = self._pending.get(tenant, 0) + debit
            self.decided["local"] += 1
            self.local.admit(tenant, now)
            return
        self.decided["fleet"] += 1
        if verdict == 0:
            return
        state = self.local.state(tenant, now)
        wait_s = int(wait_us) / US
        if verdict == 1:
            self.local.throttled(state, "requests")
            raise RateLimited(
                f"tenant {tenant!r} is over its {limits.requests_per_s:g} requests/s (fleet-wide)",
                code="rate_limited",
                retry_after_s=wait_s,
            )
        self.local.throttled(state, "tokens")
        raise RateLimited(
            f"tenant {tenant!r} used its {limits.tokens_per_min} tokens/min (fleet-wide)",
            code="quota_exceeded",
            retry_after_s=wait_s,
        )

    def _ask(self, tenant: str, entry: list[int]) -> asyncio.Future[tuple[int, int]]:
        """Queue one admission for the next call: those queued in one turn of the event loop
        go in one EVALSHA (one round trip and one reply to parse for all of them)."""
        loop = asyncio.get_running_loop()
        ask = _Ask(self._keys(tenant), entry, loop.create_future())
        self._queue.append(ask)
        if not self._launch_scheduled:
            self._launch_scheduled = True
            loop.call_soon(self._launch)
        return ask.answer

    def _launch(self) -> None:
        self._launch_scheduled = False
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            task = asyncio.create_task(self._call(batch), name="fleet-limits-call")
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[_Ask]) -> None:
        keys: list[str] = []
        args: list[int | str] = ["" if self.test_clock is None else self._now_us() or 0]
        for ask in batch:
            keys += ask.keys
            args += ask.entry
        try:
            async with asyncio.timeout(self.link.config.redis_timeout_s), self._slots:
                try:
                    reply = await self._script(keys=keys, args=args)
                except (RedisConnectionError, ConnectionError):
                    # A pooled connection that died with a restarted Redis fails once when
                    # used; the retry takes a fresh one. Two failures are an outage.
                    reply = await self._script(keys=keys, args=args)
        except REDIS_FAILURES as exc:
            self._failed(exc)
            for ask in batch:
                if not ask.answer.done():
                    ask.answer.set_exception(exc)
            return
        self._failures = 0
        self.batches += 1
        for index, ask in enumerate(batch):  # an asker that timed out has cancelled its own
            if not ask.answer.done():
                ask.answer.set_result((int(reply[2 * index]), int(reply[2 * index + 1])))

    def debit_tokens(self, tenant: str, count: int, now: float) -> None:
        """Tokens an answer used: on the local bucket now (the fallback stays current), to
        Redis with the tenant's next call or the next flush."""
        self.local.debit_tokens(tenant, count, now)
        if count <= 0 or self.limits_of(tenant).tokens_per_min is None:
            return
        if tenant in self._pending or len(self._pending) < self._max_pending:
            self._pending[tenant] = self._pending.get(tenant, 0) + count

    def _failed(self, exc: BaseException) -> None:
        """A failed call (its requests were judged locally). A refused connection switches to
        local mode at once; calls that time out (``redis_timeout_s``) do after
        ``SLOW_CALLS_TO_LOCAL`` in a row. A request that waits past ``limits_timeout_s`` is
        judged locally but switches nothing: a pause of this process (a garbage collection,
        a burst of new connections) is not an outage."""
        self._failures += 1
        if not isinstance(exc, TimeoutError) or self._failures >= SLOW_CALLS_TO_LOCAL:
            self._to_local(exc)

    def _to_local(self, exc: BaseException) -> None:
        if self.mode == "local":
            return
        self.mode = "local"
        self.switches += 1
        log.warning(
            "fleet limits: Redis %s did not answer (%s: %s); each tenant is limited by this "
            "router's local buckets until it does",
            self.link.url,
            type(exc).__name__,
            exc,
        )

    # ---- the background side -----------------------------------------------------------------

    async def maintain(self) -> None:
        """Back to fleet mode when Redis answers a PING; flush pending token debits."""
        if self.mode == "local":
            try:
                async with asyncio.timeout(self.link.config.redis_timeout_s):
                    await self.link.client.ping()
                    # Idle pooled connections may predate the outage (a restarted Redis has
                    # closed them): drop them rather than fail a request on each.
                    pool = getattr(self.link.client, "connection_pool", None)
                    if pool is not None:
                        await pool.disconnect(inuse_connections=False)
            except REDIS_FAILURES:
                return
            self.mode = "fleet"
            self._failures = 0
            self.switches += 1
            log.info("fleet limits: Redis %s answers again; limits are fleet-wide", self.link.url)
        await self.flush()

    async def flush(self) -> None:
        """Send the token debits that no admission carried (a tenant that went quiet)."""
        pending, self._pending = self._pending, {}
        for tenant, debit in pending.items():
            limits = self.limits_of(tenant)
            if limits.tokens_per_min is None:
                continue
            # A pure debit: no request limit, so the call never takes a request.
            debit_only = limits.model_copy(update={"requests_per_s": None})
            try:
                async with asyncio.timeout(self.link.config.redis_timeout_s):
                    await self._ask(tenant, entry_args(debit_only, debit))
            except REDIS_FAILURES:  # the call counted it; try again at the next flush
                self._pending[tenant] = self._pending.get(tenant, 0) + debit
                return

    async def loop(self) -> None:
        """:meth:`maintain` every ``limits_flush_interval_s``, until cancelled."""
        while True:
            with contextlib.suppress(*REDIS_FAILURES):
                try:
                    await self.maintain()
                except REDIS_FAILURES:
                    raise
                except Exception:
                    log.exception("fleet limits maintenance failed")
            await asyncio.sleep(self.link.config.limits_flush_interval_s)

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "switches": self.switches,
            "decided": dict(self.decided),
            "pending_token_debits": len(self._pending),
            "calls": self.batches,
        }
