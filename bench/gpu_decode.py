"""Per-token decode time of the edge model: eager, a CUDA graph of the decode step, and
``generate`` with a static KV cache compiled by ``torch.compile(mode="reduce-overhead")``.

Three ways to time one decode step (one new token for every row of the batch):

* ``forward-eager``: the model's forward on one token with a dynamic cache, in a Python loop
  (what the launch overhead of ~600 small kernels costs, nothing else).
* ``forward-graph``: the same step with a static cache, captured once as a CUDA graph and
  replayed (the launches paid once per step instead of once per kernel).
* ``generate-*``: what ``model.generate`` spends per token, as the difference between a
  long and a short greedy generation of forced length, over their difference in tokens
  (prefill cancels out); ``generate-eager`` as the edge node calls it today,
  ``generate-static-compiled`` with ``cache_implementation="static"``, which makes
  transformers compile the decode step with CUDA graphs on CUDA.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class StepTiming:
    model: str  # "nf4" or "bf16"
    method: str
    batch: int
    ms_per_step: float  # median over repeats
    spread_ms: float  # max - min over repeats
    note: str = ""


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prompt_batch(tokenizer: Any, text: str, batch: int, device: str) -> torch.Tensor:
    """One chat prompt's ids, repeated ``batch`` times (equal lengths: no padding)."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    row = torch.tensor([list(ids)], dtype=torch.long)
    return row.repeat(batch, 1).to(device)


def _summary(times_s: list[float], steps: int) -> tuple[float, float]:
    per_step = [t / steps * 1000 for t in times_s]
    return statistics.median(per_step), max(per_step) - min(per_step)


def eager_forward(
    model: Any, ids: torch.Tensor, steps: int, repeats: int
) -> tuple[float, float, list[list[int]]]:
    """ms per decode step (median, spread) and the greedy tokens of the first row."""
    device = str(ids.device)
    times: list[float] = []
    tokens: list[list[int]] = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            produced = [nxt]
            synchronize(device)
            began = time.perf_counter()
            for _ in range(steps):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                produced.append(nxt)
            synchronize(device)
            times.append(time.perf_counter() - began)
            tokens = torch.cat(produced, dim=1).tolist()
    median, spread = _summary(times[1:], steps)
    return median, spread, tokens


def _rewind(cache: Any, position: torch.Tensor, length: int) -> None:
    """Back to the end of the prompt: our position tensor and the static cache's own write
    position (``cumulative_length`` in transformers 5, a device tensor the step advances)."""
    position.fill_(length)
    for layer in getattr(cache, "layers", []):
        counter = getattr(layer, "cumulative_length", None)
        if isinstance(counter, torch.Tensor):
            counter.fill_(length)


def graph_forward(
    model: Any, ids: torch.Tensor, steps: int, repeats: int, capture: bool = True
) -> tuple[float, float, list[list[int]]]:
    """The decode step with a static cache, captured as one CUDA graph and replayed
    (``capture=False`` runs the same static-cache steps eagerly, to check them on a CPU)."""
    from transformers import StaticCache

    batch, length = ids.shape
    device = ids.device
    cache = StaticCache(config=model.config, max_cache_len=length + steps + 8)
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        first = out.logits[:, -1].argmax(-1, keepdim=True)
        static_in = first.clone()
        position = torch.full((1, 1), length, dtype=torch.long, device=device)
        position_ids = position.expand(batch, 1)

        def step() -> torch.Tensor:
            result = model(
                input_ids=static_in,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            next_token: torch.Tensor = result.logits[:, -1].argmax(-1, keepdim=True)
            return next_token

        graph: torch.cuda.CUDAGraph | None = None
        static_next = first
        if capture:
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    _rewind(cache, position, length)
                    step()
            torch.cuda.current_stream().wait_stream(side)
            _rewind(cache, position, length)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_next = step()

        def run(record: bool) -> list[torch.Tensor]:
            nonlocal static_next
            _rewind(cache, position, length)
            static_in.copy_(first)
            produced = [first.clone()] if record else []
            for _ in range(steps):
                if graph is not None:
                    graph.replay()
                else:
                    static_next = step()
                static_in.copy_(static_next)
                position.add_(1)
                if record:
                    produced.append(static_next.clone())
            return produced

        tokens = torch.cat(run(record=True), dim=1).tolist()
        times: list[float] = []
        for _ in range(repeats):
            synchronize(str(device))
            began = time.perf_counter()
            run(record=False)
            synchronize(str(device))
            times.append(time.perf_counter() - began)
    median, spread = _summary(times, steps)
    return median, spread, tokens


def generate_per_token(
    model: Any,
    ids: torch.Tensor,
    pad_id: int,
    short: int,
    long: int,
    repeats: int,
    **extra: Any,
) -> tuple[float, float, float]:
    """ms per generated token through ``generate`` (median, spread), and the first call's
    seconds (compilation and warm-up, when ``extra`` asks for a compiled static cache)."""
    device = str(ids.device)
    mask = torch.ones_like(ids)

    def timed(new_tokens: int) -> float:
        synchronize(device)
        began = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
                **extra,
            )
        synchronize(device)
        return time.perf_counter() - began

    first_call = timed(long)  # long first: a static cache sized for it is reused by the short
    timed(short)
    timed(long)
    times = [timed(long) - timed(short) for _ in range(repeats)]
    median, spread = _summary(times, long - short)
    return median, spread, first_call


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """The fraction of the first row's greedy tokens two methods agree on, up to the first
    difference (a bf16 near-tie can flip one token and everything after it)."""
    left, right = a[0], b[0]
    same = 0
    for x, y in zip(left, right, strict=False):
        if x != y:
            break
        same += 1
    return same / max(1, min(len(left), len(right)))


def failed_row(label: str, exc: Exception) -> StepTiming:
    model, method, batch = label.split("/")
    return StepTiming(model, method, int(batch), float("nan"), float("nan"), f"failed: {exc}")


def guarded(label: str, work: Callable[[], StepTiming], log: Callable[[str], None]) -> StepTiming:
    """Runs one timing; a failure becomes a row that says what failed, not a lost run."""
    try:
        return work()
    except Exception as exc:  # the other timings are still worth having
        log(f"{label} failed: {type(exc).__name__}: {exc}")
        return failed_row(label, exc)
