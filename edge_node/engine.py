"""Iteration-level (continuous) batching: one step loop over the model with a batched KV cache
whose rows come and go between steps.

Each :meth:`BatchEngine.step`:

1. retires rows that are done (their ``max_tokens``, EOS, a stop string the handler saw, a
   client that went away);
2. admits waiting requests (when due: see ``ADMIT_RATIO``), up to the batch cap, and
   prefills them (grouped by the prompt
   prefix they reuse, see :mod:`edge_node.prefix_cache`); each gets its first token;
3. merges them into the running batch and runs one decode step for every row.

So a request joins within a few steps and leaves as soon as it is done; a short request never
waits for a long one. Rows of the running cache are right-aligned (left padding); a padded
column is masked and each row carries its own positions, so rows of different lengths share
the cache, and a prefix reused from the cache may be followed by padding before the rest of
its prompt. Leading columns that are padding for every row are trimmed when rows leave.

Sampling is per row (greedy, or temperature/top-p with the row's own generator, seeded when
the request has a seed), so requests with different settings share one forward pass.

Out of memory (CUDA, or the injected ``guard`` in tests): a decode step that runs out sheds
the second half of the batch back to the front of the queue (each row keeps the tokens it
already sent; it is prefilled again with them and continues), the batch cap is halved, and
it doubles again after ``RECOVER_STEPS`` clean steps. A prefill that runs out is retried with
half the newcomers. Only a single row that does not fit alone fails.

This class is synchronous and has no threads: :class:`edge_node.continuous.ContinuousRunner`
runs it on the model's worker thread, and tests call :meth:`step` directly.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from edge_node.generation import Generation
from edge_node.kv_fp8 import Fp8RowLayer, pad_left
from edge_node.prefix_cache import LayerKV, PrefixCache, PrefixHit

log = logging.getLogger("hotcold.edge.engine")
RECOVER_STEPS = 64
# When waiting requests join a running batch (as text-generation-inference's
# waiting_served_ratio and max_waiting_tokens do): each admission costs a prefill pass, and on
# a CPU a forward pass has a large fixed cost (every 4-bit weight is dequantized), so
# newcomers are gathered: they join once they are at least ADMIT_RATIO of the running rows,
# or once the oldest has waited ADMIT_AFTER_STEPS steps. An idle batch admits at once.
ADMIT_RATIO = 0.5
ADMIT_AFTER_STEPS = 4
# Called before each forward pass with (rows, cache width); raises torch.OutOfMemoryError to
# simulate a device that is full (tests cap memory with it).
Guard = Callable[[int, int], None]


@dataclass(eq=False)
class Row:
    """A request's state inside the engine."""

    generation: Generation
    ids: list[int]  # prompt and the tokens generated so far (what a re-prefill computes)
    rng: torch.Generator | None = None
    position: int = 0  # position of the next token to feed
    last: int = 0  # the token to feed next

    @property
    def done(self) -> bool:
        g = self.generation
        return g.finished or g.cancelled


@dataclass
class StepReport:
    """What one step did (for tests and metrics)."""

    joined: int = 0
    left: int = 0
    decoded_rows: int = 0
    emitted: int = 0
    prefill_tokens: int = 0
    hits: int = 0
    reused_tokens: int = 0
    shed: int = 0
    finished: list[Generation] = field(default_factory=list)


class BatchEngine:
    def __init__(
        self,
        model: Any,
        eos_ids: set[int],
        max_batch: int,
        *,
        prefix_cache: PrefixCache | None = None,
        metrics: Any | None = None,
        guard: Guard | None = None,
        kv_cache: str = "model",
    ) -> None:
        self.model = model
        self.kv_fp8 = kv_cache == "fp8"  # see edge_node/kv_fp8.py
        self.eos_ids = eos_ids
        self.max_batch = max_batch
        self.cap = max_batch  # lowered after out-of-memory, restored step by step
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache(0)
        self.metrics = metrics
        self.guard = guard
        self.pending: deque[Row] = deque()  # thread-safe appends from the event loop
        self.rows: list[Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, width], 1 = a real token
        self._clean_steps = 0
        self._held_steps = 0  # steps the waiting requests have been held back
        self.device = model.device

    # -- queue ------------------------------------------------------------------------

    def enqueue(self, generation: Generation) -> None:
        self.pending.append(Row(generation, list(generation.prompt_ids)))

    @property
    def width(self) -> int:
        return 0 if self._mask is None else int(self._mask.shape[1])

    def idle(self) -> bool:
        return not self.rows and not self.pending

    # -- the step -----------------------------------------------------------------------

    def step(self) -> StepReport:
        report = StepReport()
        started = time.perf_counter()
        self._retire(report)
        with torch.inference_mode():
            joiners = self._admit()
            if joiners:
                self._prefill(joiners, report)
            self._retire(report)
            if self.rows:
                self._decode(report)
        self._retire(report)
        if self.metrics is not None and (report.decoded_rows or report.joined):
            self.metrics.observe_step(
                report.decoded_rows or report.joined,
                report.emitted,
                report.prefill_tokens,
                report.hits,
                report.reused_tokens,
                time.perf_counter() - started,
            )
        return report

    def abort(self) -> None:
        """Ends every stream (the runner is stopping)."""
        for row in [*self.rows, *self.pending]:
            row.generation.finished = True
            row.generation.push(None)
        self.rows, self.pending = [], deque()
        self._cache, self._mask = None, None

    def abort_running(self) -> None:
        """Ends the running rows' streams after a step failed unexpectedly; the queue stays."""
        for row in self.rows:
            row.generation.finished = True
            row.generation.push(None)
        self.rows, self._cache, self._mask = [], None, None

    # -- admission and prefill ------------------------------------------------------------

    def _admission_due(self) -> bool:
        if not self.pending:
            self._held_steps = 0
            return False
        due = (
            not self.rows
            or len(self.pending) >= ADMIT_RATIO * len(self.rows)
            or self._held_steps >= ADMIT_AFTER_STEPS
        )
        self._held_steps = 0 if due else self._held_steps + 1
        return due

    def _admit(self) -> list[Row]:
        joiners: list[Row] = []
        if not self._admission_due():
            return joiners
        while self.pending and len(self.rows) + len(joiners) < self.cap:
            row = self.pending.popleft()
            if row.done:
                row.generation.push(None)
                continue
            if row.generation.started_at is None:
                row.generation.started_at = time.monotonic()
                row.rng = _generator(row.generation, self.device)
            joiners.append(row)
        return joiners

    def _prefill(self, joiners: list[Row], report: StepReport) -> None:
        groups: dict[int, tuple[PrefixHit | None, list[Row]]] = {}
        for row in joiners:
            hit = self.prefix_cache.lookup(row.ids)
            key = id(hit.kv) if hit is not None else 0
            groups.setdefault(key, (hit, []))[1].append(row)
        for hit, rows in groups.values():
            self._prefill_group(rows, hit, report)

    def _prefill_group(self, rows: list[Row], hit: PrefixHit | None, report: StepReport) -> None:
        try:
            cache, mask, logits = self._forward_prefill(rows, hit)
        except torch.OutOfMemoryError:
            _free_device_memory()
            if len(rows) > 1:
                half = len(rows) // 2
                self._note_oom(f"prefill of {len(rows)}: retrying as {half} + {len(rows) - half}")
                self._prefill_group(rows[:half], hit, report)
                self._prefill_group(rows[half:], hit, report)
                return
            if self.rows:  # make room: shed running rows and try this one next step
                self._shed(report)
                self.pending.appendleft(rows[0])
                return
            log.error("a single prompt of %d tokens does not fit in memory", len(rows[0].ids))
            self._fail(rows[0], report)
            return
        reused = hit.tokens if hit is not None else 0
        report.prefill_tokens += sum(len(r.ids) - reused for r in rows)
        report.reused_tokens += reused * len(rows)
        report.hits += len(rows) if reused else 0
        report.joined += len(rows)
        if hit is None and self.prefix_cache.enabled:
            for index, row in enumerate(rows):
                self.prefix_cache.offer(row.ids, _row_kv(cache, mask, index))
        for row in rows:
            row.position = len(row.ids)
        self._merge(rows, cache, mask)
        self._emit(rows, logits, report)

    def _forward_prefill(
        self, rows: list[Row], hit: PrefixHit | None
    ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        reused = hit.tokens if hit is not None else 0
        suffixes = [r.ids[reused:] for r in rows]
        width = max(len(s) for s in suffixes)
        n = len(rows)
        if self.guard is not None:
            self.guard(n, reused + width)
        ids = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, reused + width), dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        mask[:, :reused] = 1
        for i, suffix in enumerate(suffixes):
            pad = width - len(suffix)
            ids[i, pad:] = torch.tensor(suffix)
            mask[i, reused + pad :] = 1
            positions[i, pad:] = torch.arange(reused, reused + len(suffix))
        cache = self._new_cache(hit, n)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.past_key_values, mask.to(self.device), out.logits[:, -1, :].float()

    def _new_cache(self, hit: PrefixHit | None, rows: int) -> DynamicCache:
        prefix = (
            [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in hit.kv]
            if hit
            else []
        )
        if not self.kv_fp8:
            return DynamicCache(prefix or None)
        cache = DynamicCache()
        layers = self.model.config.get_text_config(decoder=True).num_hidden_layers
        fp8_layers = [Fp8RowLayer() for _ in range(layers)]
        cache.layers = list(fp8_layers)
        for layer, (keys, values) in zip(fp8_layers, prefix, strict=False):
            layer.update(keys, values)
        return cache

    # -- decode ---------------------------------------------------------------------------

    def _decode(self, report: StepReport) -> None:
        assert self._cache is not None and self._mask is not None
        n = len(self.rows)
        try:
            if self.guard is not None:
                self.guard(n, self.width + 1)
            ids = torch.tensor([[r.last] for r in self.rows], device=self.device)
            positions = torch.tensor([[r.position] for r in self.rows], device=self.device)
            fresh = torch.ones((n, 1), dtype=torch.long, device=self.device)
            mask = torch.cat([self._mask, fresh], 1)
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
        except torch.OutOfMemoryError:
            _free_device_memory()
            if n == 1:
                log.error("one row does not fit in memory any more")
                self._fail(self.rows[0], report)
                self._retire(report)
                return
            self._shed(report)
            return
        self._cache = out.past_key_values
        self._mask = mask
        for row in self.rows:
            row.position += 1
        report.decoded_rows = n
        self._emit(self.rows, out.logits[:, -1, :].float(), report)
        self._clean_steps += 1
        if self.cap < self.max_batch and self._clean_steps >= RECOVER_STEPS:
            self.cap = min(self.max_batch, self.cap * 2)
            self._clean_steps = 0

    def _emit(self, rows: list[Row], logits: torch.Tensor, report: StepReport) -> None:
        greedy = logits.argmax(dim=-1).tolist()
        for index, row in enumerate(rows):
            g = row.generation
            token = (
                greedy[index]
                if g.temperature is None or g.temperature == 0
                else _sample(logits[index], g.temperature, g.top_p, row.rng)
            )
            row.last = token
            if g.finished or g.cancelled:
                continue
            if token in self.eos_ids:
                g.finished = True
                continue
            row.ids.append(token)
            report.emitted += 1
            g.generated += 1
            g.push(token)
            if g.generated >= g.max_new_tokens:
                g.finished = True
                g.hit_length = True

    # -- membership of the running batch ----------------------------------------------------

    def _merge(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        if self._cache is None or self._mask is None or not self.rows:
            self.rows, self._cache, self._mask = list(rows), cache, mask
            return
        width = max(self.width, int(mask.shape[1]))
        old_pad, new_pad = width - self.width, width - int(mask.shape[1])
        for old, new in zip(_layers(self._cache), _layers(cache), strict=True):
            old.keys = torch.cat([pad_left(old.keys, old_pad), pad_left(new.keys, new_pad)])
            old.values = torch.cat([pad_left(old.values, old_pad), pad_left(new.values, new_pad)])
            if isinstance(old, Fp8RowLayer):
                assert old.key_scale is not None and old.value_scale is not None
                old.key_scale = torch.cat([old.key_scale, new.key_scale])
                old.value_scale = torch.cat([old.value_scale, new.value_scale])
        self._mask = torch.cat(
            [
                torch.nn.functional.pad(self._mask, (old_pad, 0)),
                torch.nn.functional.pad(mask, (new_pad, 0)),
            ]
        )
        self.rows.extend(rows)

    def _retire(self, report: StepReport) -> None:
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        if len(keep) == len(self.rows):
            return
        for row in self.rows:
            if row.done:
                row.generation.finished = True
                row.generation.push(None)
                report.finished.append(row.generation)
        report.left += len(self.rows) - len(keep)
        self._select(keep)

    def _select(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not keep or self._cache is None or self._mask is None:
            self.rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        self._mask = mask[:, start:]
        for layer in _layers(self._cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
            if isinstance(layer, Fp8RowLayer):
                assert layer.key_scale is not None and layer.value_scale is not None
                layer.key_scale = layer.key_scale.index_select(0, index)
                layer.value_scale = layer.value_scale.index_select(0, index)

    def _shed(self, report: StepReport) -> None:
        """Out of memory with rows running: the second half goes back to the queue's front."""
        n = len(self.rows)
        half = max(1, n // 2)
        shed = self.rows[half:]
        self._note_oom(f"batch of {n}: keeping {half}, {len(shed)} back to the queue")
        self._select(list(range(half)))
        for row in reversed(shed):
            self.pending.appendleft(row)
        self.cap = max(1, half)
        self._clean_steps = 0
        report.shed += len(shed)

    def _fail(self, row: Row, report: StepReport) -> None:
        row.generation.finished = True
        row.generation.push(None)
        report.finished.append(row.generation)

    def _note_oom(self, what: str) -> None:
        log.warning("out of memory: %s", what)
        if self.metrics is not None:
            self.metrics.oom_splits.inc()


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers, whose ``keys`` and ``values`` ([rows, heads, columns, head size])
    the engine edits in place as rows join and leave."""
    return list(cache.layers)


def _row_kv(cache: DynamicCache, mask: torch.Tensor, index: int) -> LayerKV:
    """One row's KV over its real tokens only (its padding columns dropped)."""
    columns = mask[index].nonzero().reshape(-1)
    found: LayerKV = []
    for layer in _layers(cache):
        keys, values = layer.keys, layer.values
        if isinstance(layer, Fp8RowLayer):  # stored full precision: entries outlive scales
            keys, values = layer.dequantized()
        found.append(
            (
                keys[index : index + 1].index_select(2, columns),
                values[index : index + 1].index_select(2, columns),
            )
        )
    return found


def _generator(generation: Generation, device: Any) -> torch.Generator | None:
    if generation.temperature is None or generation.temperature == 0:
        return None
    rng = torch.Generator(device=device)
    seed = generation.seed if generation.seed is not None else random.getrandbits(63)
    rng.manual_seed(seed)
    return rng


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float | None, rng: torch.Generator | None
) -> int:
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cumulative = sorted_probs.cumsum(-1)
        drop = cumulative - sorted_probs > top_p  # keep the smallest set reaching top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=rng))


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
