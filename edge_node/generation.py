"""What every batching strategy shares: a request's generation as the handler and the model's
worker thread see it, the runner interface the handlers use (submit, stream, stop; the queue
bound; the in-flight count a model swap drains), and the text assembly that cuts at stop
strings. The strategies: :mod:`edge_node.continuous` (iteration-level, the default) and
:mod:`edge_node.window` (a time window per batch, kept for comparison)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("continuous", "window")


class QueueFull(Exception):
    """More requests are waiting than the queue allows."""


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    max_batch: int = 16
    batch_window_ms: float = 10.0
    max_queue: int = 256
    strategy: str = "continuous"  # see STRATEGIES
    prefix_cache_tokens: int = 0
    prefix_min_tokens: int = 16
    kv_cache: str = "model"  # or "fp8"


@dataclass(eq=False)
class Generation:
    """One request's generation, shared between its handler and the worker thread."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    cancelled: bool = False
    generated: int = 0
    finished: bool = False
    hit_length: bool = False
    tokens: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    @property
    def sampling_key(self) -> tuple[Any, ...]:
        greedy = self.temperature is None or self.temperature == 0
        if self.seed is not None:
            return ("seeded", id(self))
        return ("greedy",) if greedy else ("sample", self.temperature, self.top_p)

    @property
    def queue_ms(self) -> float:
        end = self.started_at if self.started_at is not None else time.monotonic()
        return (end - self.enqueued_at) * 1000

    def push(self, token: int | None) -> None:
        self.loop.call_soon_threadsafe(self.tokens.put_nowait, token)


class Runner:
    """The model behind one worker thread (one model, one thread: the batch itself uses the
    CPU's cores or the GPU). Subclasses decide how queued requests become forward passes."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        batching: BatchingConfig,
        metrics: Any | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.batching = batching
        self.metrics = metrics
        self.inflight = 0  # requests submitted whose stream has not ended
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-model")
        self._task: asyncio.Task[None] | None = None
        eos = getattr(tokenizer, "eos_token_id", None)
        config_eos = getattr(model.generation_config, "eos_token_id", None)
        ids = {eos} if isinstance(eos, int) else set()
        if isinstance(config_eos, int):
            ids.add(config_eos)
        elif isinstance(config_eos, list):
            ids.update(config_eos)
        self.eos_ids = ids
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def waiting(self) -> int:
        """Requests queued, not yet computing."""
        raise NotImplementedError

    @property
    def active(self) -> int:
        """Rows computing now."""
        raise NotImplementedError

    def _enqueue(self, generation: Generation) -> None:
        raise NotImplementedError

    async def _drive(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._drive(), name="edge-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # In a thread: a generation still running may need this event loop to deliver its
        # tokens, so waiting for it here, on the loop, could wait forever.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    def submit(self, generation: Generation) -> None:
        if self.waiting >= self.batching.max_queue:
            raise QueueFull(f"{self.waiting} requests waiting")
        self._enqueue(generation)
        self.inflight += 1  # until its stream is done: what a model swap drains

    async def stream(self, generation: Generation) -> AsyncIterator[int]:
        """The request's tokens as they come; cancels the row if the consumer stops early."""
        try:
            while True:
                token = await generation.tokens.get()
                if token is None:
                    return
                yield token
        finally:
            self.inflight -= 1
            if not generation.finished:
                generation.cancelled = True


class TextAssembler:
    """Turns a token stream into text deltas, cutting at stop strings without ever emitting
    part of one (the last few characters are held back until they cannot start a stop)."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._holdback = max((len(s) for s in stop), default=1) - 1
        self._ids: list[int] = []
        self._emitted = 0
        self.stopped = False

    def add(self, token: int) -> str:
        self._ids.append(token)
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
            return ""
        for stop in self._stop:
            at = text.find(stop)
            if at >= 0:
                self.stopped = True
                return self._take(text[:at], final=True)
        return self._take(text, final=False)

    def finish(self) -> str:
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        return "" if self.stopped else self._take(text, final=True)

    def _take(self, text: str, final: bool) -> str:
        end = len(text) if final else max(self._emitted, len(text) - self._holdback)
        delta = text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return delta

    @property
    def token_count(self) -> int:
        return len(self._ids)
