"""Window batching, the node's first strategy, kept selectable (``batching: window``) so the
benchmark can compare it with continuous batching.

The batcher takes the first waiting request, then whatever else arrives within
``batch_window_ms`` (or until ``max_batch``), and runs them as one left-padded ``generate`` on
the worker thread. A request that arrives while a batch is generating waits for the whole
batch. Requests that sample differently cannot share a ``generate`` call, so a batch is split
into groups of identical sampling settings; a request with a seed runs alone, seeded, so its
answer is reproducible.

Per row, inside one batch: a custom streamer hands each new token to its request's queue as it
is produced (real streaming, batched), and a stopping criterion ends a row on its own
``max_tokens``, on a stop string, or when its client went away, without stopping the others.
On CUDA out-of-memory the batch is split in halves and each half retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from edge_node.generation import Generation, Runner

log = logging.getLogger("hotcold.edge.runner")


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


class WindowRunner(Runner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: asyncio.Queue[Generation] = asyncio.Queue()
        self._active = 0

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    @property
    def active(self) -> int:
        return self._active

    def _enqueue(self, generation: Generation) -> None:
        self._queue.put_nowait(generation)

    async def _drive(self) -> None:
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
                self._active = len(group)
                try:
                    await loop.run_in_executor(self._executor, self._generate_safely, group)
                finally:
                    self._active = 0

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
        if self.batching.kv_cache == "fp8":  # transformers' per-tensor fp8 quantized cache
            kwargs.update(cache_implementation="quantized", cache_config={"backend": "fp8"})
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
