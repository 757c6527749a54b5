"""A concurrency limit with a bounded queue in front of it, like a GPU's batch slots.

Past ``max_concurrency`` a request waits; past ``max_queue`` waiting requests it is refused at
once (the caller answers 503 + Retry-After), so a flood never grows memory or latency without
bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class QueueFull(Exception):
    """No slot and no room to wait for one."""


class Admission:
    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self._slots = asyncio.Semaphore(max_concurrency)
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.active = 0
        self.waiting = 0

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if need be; QueueFull when the queue is full."""
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise QueueFull(f"{self.active} generating and {self.waiting} queued")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._slots.release()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
