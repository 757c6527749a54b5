"""Coalesce concurrent identical cache misses into one upstream generation.

The first request for a key becomes the leader and computes; requests for the same key that
arrive meanwhile wait for its answer instead of sending their own. When the leader fails or
its client goes away, waiters get ``None`` and compute for themselves, so a follower is never
failed by someone else's problem. Memory is bounded by the number of requests in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Future[T | None]] = {}
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._flights)

    def join(self, key: Hashable) -> asyncio.Future[T | None] | None:
        """None: you lead, and must call :meth:`finish`. Otherwise the leader's future."""
        flight = self._flights.get(key)
        if flight is not None:
            self.coalesced += 1
            return flight
        self._flights[key] = asyncio.get_running_loop().create_future()
        return None

    def finish(self, key: Hashable, result: T | None) -> None:
        flight = self._flights.pop(key, None)
        if flight is not None and not flight.done():
            flight.set_result(result)

    @staticmethod
    async def wait(flight: asyncio.Future[T | None], timeout_s: float) -> T | None:
        """The leader's answer, or None if it failed or took longer than ``timeout_s``."""
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                return await asyncio.shield(flight)
        except TimeoutError:
            return None
