"""The model and its batches: load in 4 bits, then serve concurrent requests in shared
forward passes, off the event loop.

Dynamic batching: the batcher takes the first waiting request, then whatever else arrives
within ``batch_window_ms`` (or until ``max_batch``), and runs them as one left-padded
``generate`` on a single worker thread (one model, one thread: the CPU's cores or the GPU are
used by the batch itself). Requests that sample differently cannot share a ``generate`` call,
so a batch is split into groups of identical sampling settings; a request with a seed runs
alone, seeded, so its answer is reproducible.

We measured transformers' continuous batching manager on this model with 4-bit weights at
104 tok/s against 155 tok/s for one padded ``generate`` of 16 on CPU (../shared/RESEARCH.md),
and it ignores ``stop``; dynamic batching is the faster choice here.

Per row, inside one batch: a custom streamer hands each new token to its request's queue as it
is produced (real streaming, batched), and a stopping criterion ends a row on its own
``max_tokens``, on a stop string, or when its client went away, without stopping the others.
On CUDA out-of-memory the batch is split in halves and each half retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from edge_node.config import EdgeNodeConfig
from edge_node.metrics import EdgeMetrics
from edge_node.model import LoadedModel

log = logging.getLogger("hotcold.edge.runner")


class QueueFull(Exception):
    """More requests are waiting than the queue allows."""


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    max_batch: int = 16
    batch_window_ms: float = 10.0
    max_queue: int = 256


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


class _RowStreamer(BaseStreamer):
    """Hands each row's new token to its request as the batch produces it."""

    def __init__(self, rows: list[Generation], eos_ids: set[int]) -> None:
        self._rows = rows
        self._eos = eos_ids
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call carries the prompts
            self._prompt_seen = True
            return
        for row, token in zip(self._rows, value.reshape(-1).tolist(), strict=True):
            if row.finished:
                continue
            if token in self._eos:
                row.finished = True
                continue
            row.generated += 1
            row.push(token)
            if row.generated >= row.max_new_tokens:
                row.finished = True
                row.hit_length = True

    def end(self) -> None:
        for row in self._rows:
            row.finished = True


class _RowStopping(StoppingCriteria):
    """Ends rows one by one: their own length, a stop string (checked by the handler, which
    sets ``finished``), or a client that went away."""

    def __init__(self, rows: list[Generation]) -> None:
        self._rows = rows

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        done = [row.finished or row.cancelled for row in self._rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class Runner:
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
        self._queue: asyncio.Queue[Generation] = asyncio.Queue()
        self.inflight = 0  # requests submitted whose stream has not ended
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-model")
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self.active = 0
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
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.create_task(self._batcher(), name="edge-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # In a thread: a generation still running may need this event loop to deliver its
        # tokens, so waiting for it here, on the loop, could wait forever.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    def submit(self, generation: Generation) -> None:
        if self._queue.qsize() >= self.batching.max_queue:
            raise QueueFull(f"{self._queue.qsize()} requests waiting")
        self._queue.put_nowait(generation)
        self.inflight += 1  # until its stream is done: what a model swap drains

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.batching.batch_window_ms / 1000
            while len(batch) < self.batching.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [g for g in batch if not g.cancelled]
            for g in batch:
                if g.cancelled:
                    g.push(None)
            groups: dict[tuple[Any, ...], list[Generation]] = {}
            for generation in live:
                groups.setdefault(generation.sampling_key, []).append(generation)
            for group in groups.values():
                now = time.monotonic()
                for generation in group:
                    generation.started_at = now
                self.active = len(group)
                try:
                    await loop.run_in_executor(self._executor, self._generate_safely, group)
                finally:
                    self.active = 0

    def _generate_safely(self, rows: list[Generation]) -> None:
        try:
            self._generate_splitting(rows)
        except Exception:
            log.exception("generation failed for a batch of %d", len(rows))
        finally:
            for row in rows:
                row.finished = True
                row.push(None)

    def _generate_splitting(self, rows: list[Generation]) -> None:
        try:
            self._generate(rows)
        except torch.OutOfMemoryError:
            if len(rows) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(rows) // 2
            log.warning(
                "out of memory with a batch of %d: retrying as %d + %d",
                len(rows),
                half,
                len(rows) - half,
            )
            if self.metrics is not None:
                self.metrics.oom_splits.inc()
            fresh = [row for row in rows if row.generated == 0]
            self._generate_splitting(fresh[:half])
            self._generate_splitting(fresh[half:])

    def _generate(self, rows: list[Generation]) -> None:
        tokenizer = self.tokenizer
        width = max(len(row.prompt_ids) for row in rows)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows])
        attention = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows]
        )
        first = rows[0]
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(r.max_new_tokens for r in rows),
            "pad_token_id": pad,
        }
        if first.temperature is None or first.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True,
                temperature=first.temperature,
                top_p=first.top_p if first.top_p is not None else 1.0,
                top_k=None,
            )
        if first.seed is not None:
            torch.manual_seed(first.seed)
        started = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention.to(self.model.device),
                streamer=_RowStreamer(rows, self.eos_ids),
                stopping_criteria=StoppingCriteriaList([_RowStopping(rows)]),
                **kwargs,
            )
        if self.metrics is not None:
            self.metrics.observe_batch(
                len(rows),
                sum(r.generated for r in rows),
                sum(len(r.prompt_ids) for r in rows),
                time.perf_counter() - started,
            )

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


def make_runner(config: EdgeNodeConfig, loaded: LoadedModel, metrics: EdgeMetrics) -> Runner:
    """The runner for a loaded model with the node's batching settings."""
    batching = BatchingConfig(config.max_batch, config.batch_window_ms, config.max_queue)
    return Runner(loaded.model, loaded.tokenizer, loaded.device, batching, metrics)
