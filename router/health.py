"""Active health checks of a pool's endpoints, on the pool's ``health_path``.

Passive first: endpoints are ejected by their breakers on real failures, and healthy ones are
never polled. An ejected endpoint is probed every ``health.probe_interval_s``, and the first
good probe takes it back at once: a healed pool answers within a probe interval instead of
waiting out its breaker's (doubling) open period, while real requests still never go to an
endpoint whose breaker is open. ``/readyz`` probes closed endpoints that have been quiet for
``stale_after_s`` before it answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from router.breaker import BreakerState
from router.clock import Clock
from router.config import PoolConfig
from router.endpoint import Endpoint

log = logging.getLogger("hotcold.upstream")


class PoolHealth:
    def __init__(
        self,
        name: str,
        endpoints: list[Endpoint],
        config: PoolConfig,
        session: aiohttp.ClientSession,
        clock: Clock,
        observe: Callable[[str, str], None],
    ) -> None:
        self.name = name
        self.endpoints = endpoints
        self.config = config
        self._session = session
        self._clock = clock
        self._observe = observe
        self._probing: set[str] = set()

    async def probe(self, endpoint: Endpoint) -> bool:
        """One active health check; its verdict goes to the endpoint's breaker."""
        if endpoint.url in self._probing:
            return endpoint.breaker.state is BreakerState.CLOSED
        self._probing.add(endpoint.url)
        endpoint.breaker.on_attempt()
        try:
            async with self._session.get(
                endpoint.url + self.config.health_path,
                headers=endpoint.headers,
                timeout=aiohttp.ClientTimeout(total=self.config.health.probe_timeout_s),
            ) as response:
                await response.read()
                healthy = response.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            healthy = False
            endpoint.last_error = f"health probe failed: {exc!r}"
        finally:
            self._probing.discard(endpoint.url)
        if healthy:
            if endpoint.breaker.state is not BreakerState.CLOSED:
                log.info("%s endpoint %s is back", self.name, endpoint.url)
            endpoint.breaker.record_success()
            endpoint.last_ok_at = self._clock.now()
        else:
            endpoint.breaker.record_failure()
        self._observe(endpoint.url, "probe_ok" if healthy else "probe_failed")
        return healthy

    async def run_prober(self) -> None:
        """Background task: probe every ejected endpoint each interval."""
        interval = self.config.health.probe_interval_s
        while True:
            due = [
                endpoint
                for endpoint in self.endpoints
                if endpoint.breaker.state is not BreakerState.CLOSED
                and endpoint.url not in self._probing
            ]
            if due:
                await asyncio.gather(*(self.probe(endpoint) for endpoint in due))
            await asyncio.sleep(interval)

    async def check_ready(self) -> bool:
        """Ready when at least one endpoint is healthy; quiet ones are probed first."""
        now = self._clock.now()
        stale_after = self.config.health.stale_after_s
        stale = [
            endpoint
            for endpoint in self.endpoints
            if endpoint.breaker.state is BreakerState.CLOSED
            and (endpoint.last_ok_at is None or now - endpoint.last_ok_at > stale_after)
        ]
        if stale:
            await asyncio.gather(*(self.probe(endpoint) for endpoint in stale))
        return any(e.breaker.state is BreakerState.CLOSED for e in self.endpoints)
