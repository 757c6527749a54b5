"""Continuous batching as a runner: :class:`edge_node.engine.BatchEngine` stepped on the
model's worker thread while it has rows or waiting requests, idle otherwise.

Each step is one call onto the worker thread, so requests submitted meanwhile join at the
next step. Between steps the event loop runs: tokens reach their streams, stop strings and
disconnects mark rows finished, and the next step retires them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from edge_node.engine import BatchEngine, Guard
from edge_node.generation import Generation, Runner
from edge_node.prefix_cache import PrefixCache

log = logging.getLogger("hotcold.edge.continuous")


class ContinuousRunner(Runner):
    def __init__(self, *args: Any, guard: Guard | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prefix_cache = PrefixCache(
            self.batching.prefix_cache_tokens, self.batching.prefix_min_tokens
        )
        self.engine = BatchEngine(
            self.model,
            self.eos_ids,
            self.batching.max_batch,
            prefix_cache=self.prefix_cache,
            metrics=self.metrics,
            guard=guard,
            kv_cache=self.batching.kv_cache,
        )
        self._work = asyncio.Event()

    @property
    def waiting(self) -> int:
        return len(self.engine.pending)

    @property
    def active(self) -> int:
        return len(self.engine.rows)

    def _enqueue(self, generation: Generation) -> None:
        self.engine.enqueue(generation)
        self._work.set()

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        engine = self.engine
        try:
            while True:
                if engine.idle():
                    self._work.clear()
                    await self._work.wait()
                    continue
                try:
                    await loop.run_in_executor(self._executor, engine.step)
                except Exception:
                    log.exception("a step failed; ending its %d rows", len(engine.rows))
                    engine.abort_running()
        finally:
            # The last step may still be running on the worker: abort once it is done.
            await asyncio.to_thread(self._executor.submit(engine.abort).result)
