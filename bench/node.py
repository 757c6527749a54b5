"""``hotcold bench node``: the edge node's batching strategies side by side, in one run, on the
same prompts, through its HTTP API (streamed chat requests, greedy).

Sections (``--sections``, all by default):

* ``levels``: window batching (``--batching window``, 10 ms, the node's first strategy) and
  continuous batching at concurrency 1, 4, 16 and 64. Concurrency 1 is sequential
  generation (each request alone in its forward passes), the baseline of "vs sequential".
  Tokens/s counts completion tokens (the answers' usage) over the level's wall time; TTFT is
  the time to the first content chunk; latency the time to the last byte.
* ``mixed``: long requests (``--long-tokens``) start together, then short ones
  (``--short-tokens``) arrive one by one while the long ones run; the short requests' latency
  is what a device with a quick question sees next to a slow one.
* ``prefix``: the same requests behind a shared system prompt (a device's instructions), on
  continuous batching with prefix reuse off and on: prompt tokens computed by prefill, hits
  and tokens saved (from the node's /metrics), TTFT and tokens/s.
* ``kv``: in-process, the fp8 KV cache (``kv_cache: fp8``) against the model's dtype on a
  fixed prompt set run through the continuous-batching engine: bytes per cached token and
  agreement of the greedy answers (identical answers, and the share of tokens before the
  first difference); transformers' own fp8 quantized cache through ``generate`` alongside.
* ``memory``: the NF4 process's peak and resident memory after loading, quantizing while
  loading (from the bf16 checkpoint) against loading the pre-quantized NF4 checkpoint
  (:mod:`edge_node.weights`), each in a fresh process.

The nodes run side by side and each measurement takes turns between them, so that both
strategies see the same machine. Runs on CUDA when the machine has it (``--device``), else on
the CPU. Continuous batching
runs with prefix reuse off outside the ``prefix`` section, so the batching comparison is
only about batching.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from bench.loadgen import percentile
from bench.workload import question
from hotcold.console import make_console
from hotcold.procs import ServiceProcess
from hotcold.serving import free_port

LEVELS = (1, 4, 16, 64)
SECTIONS = ("levels", "mixed", "prefix", "memory", "kv")
STRATEGIES = ("window", "continuous")
DEVICE_PROMPT = (
    "You are the assistant of a building's IoT gateway. Devices report temperature, door, "
    "battery and pump readings. Answer in one short sentence, name the device, give numbers "
    "with their units, and say when a technician is needed."
)


@dataclass
class Level:
    variant: str
    concurrency: int
    requests: int
    tokens: int
    wall_s: float
    latencies_s: list[float]
    ttft_s: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "tokens": self.tokens,
            "wall_s": self.wall_s,
            "tokens_per_s": self.tokens_per_s,
            "ttft_p50_s": percentile(self.ttft_s, 50),
            "ttft_p99_s": percentile(self.ttft_s, 99),
            "p50_s": percentile(self.latencies_s, 50),
            "p99_s": percentile(self.latencies_s, 99),
        }


@dataclass(frozen=True, slots=True)
class Answer:
    latency_s: float
    ttft_s: float
    tokens: int


def chat_body(text: str, max_tokens: int, system: str | None = None) -> bytes:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    return orjson.dumps(
        {
            "model": "default",
            "temperature": 0,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": messages,
        }
    )


async def _send(session: aiohttp.ClientSession, url: str, body: bytes) -> Answer:
    """One streamed chat request: its latency, time to first content and completion tokens."""
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with session.post(
        url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    ) as answer:
        if answer.status != 200:
            raise RuntimeError(f"edge node answered {answer.status}: {await answer.text()}")
        async for line in answer.content:
            if not line.startswith(b"data: {"):
                continue
            event = orjson.loads(line[6:])
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
            for choice in event.get("choices", []):
                if first is None and choice.get("delta", {}).get("content"):
                    first = time.perf_counter()
    ended = time.perf_counter()
    return Answer(ended - started, (first or ended) - started, tokens)


async def _drive(url: str, concurrency: int, bodies: Sequence[bytes]) -> Level:
    answers: list[Answer] = []
    next_index = 0
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(bodies):
                body = bodies[next_index]
                next_index += 1
                answers.append(await _send(session, url, body))

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    return Level(
        "",
        concurrency,
        len(bodies),
        sum(a.tokens for a in answers),
        wall,
        [a.latency_s for a in answers],
        [a.ttft_s for a in answers],
    )


@dataclass
class Mixed:
    variant: str
    short: list[Answer]
    long: list[Answer]
    wall_s: float

    def summary(self) -> dict[str, Any]:
        tokens = sum(a.tokens for a in self.short + self.long)
        short = [a.latency_s for a in self.short]
        return {
            "variant": self.variant,
            "short_requests": len(self.short),
            "long_requests": len(self.long),
            "tokens": tokens,
            "tokens_per_s": tokens / self.wall_s if self.wall_s else 0.0,
            "short_p50_s": percentile(short, 50),
            "short_p99_s": percentile(short, 99),
            "short_ttft_p99_s": percentile([a.ttft_s for a in self.short], 99),
            "long_p50_s": percentile([a.latency_s for a in self.long], 50),
        }


async def _mixed(url: str, args: argparse.Namespace) -> Mixed:
    """Long requests start together; short ones arrive every ``--short-gap-s`` meanwhile."""
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        began = time.perf_counter()
        longs = [
            asyncio.create_task(_send(session, url, chat_body(question(500 + i), args.long_tokens)))
            for i in range(args.long_requests)
        ]
        shorts = []
        for i in range(args.short_requests):
            await asyncio.sleep(args.short_gap_s)
            body = chat_body(question(700 + i), args.short_tokens)
            shorts.append(asyncio.create_task(_send(session, url, body)))
        short = await asyncio.gather(*shorts)
        long = await asyncio.gather(*longs)
        wall = time.perf_counter() - began
    return Mixed("", list(short), list(long), wall)


async def _counters(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        text = await response.text()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("hotcold_edge_prefill", "hotcold_edge_prefix")):
                found[sample.name] = found.get(sample.name, 0.0) + sample.value
            if sample.name == "hotcold_edge_tokens_total" and sample.labels == {"direction": "in"}:
                found["prompt_tokens"] = sample.value
    return found


class Node:
    """``python -m edge_node`` as a child process with the given strategy."""

    def __init__(self, args: argparse.Namespace, name: str, *flags: str) -> None:
        self.name = name
        self.process = ServiceProcess(
            "edge_node",
            free_port(),
            "--model",
            args.model,
            "--device",
            args.device,
            "--max-batch",
            str(args.max_batch),
            "--max-queue",
            "1024",
            *flags,
            log_path=Path(f"bench-results/logs/node-{name}.log"),
        )

    @property
    def url(self) -> str:
        return self.process.url

    async def __aenter__(self) -> Node:
        await self.process.started(timeout_s=600)
        await _drive(self.url, 2, [chat_body(question(10_000 + i), 8) for i in range(2)])  # warm
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.process.stop()


def strategy_flags(strategy: str, prefix_tokens: int = 0) -> tuple[str, ...]:
    if strategy == "window":
        return ("--batching", "window", "--batch-window-ms", "10")
    return ("--batching", "continuous", "--prefix-cache-tokens", str(prefix_tokens))


async def _node(
    args: argparse.Namespace,
    quantize: bool,
    levels: tuple[int, ...],
    console: Console,
    batching: str = "continuous",
) -> tuple[list[Level], dict[str, Any]]:
    """One node (NF4 or bf16, one strategy) through the concurrency levels, then its health
    (bench.gpu_node drives this too)."""
    flags = list(strategy_flags(batching))
    if not quantize:
        flags.append("--no-quantize")
    variant = "nf4" if quantize else "bf16"
    results: list[Level] = []
    async with Node(args, f"{variant}-{batching}", *flags) as node:
        for level in levels:
            results.append(await _level(node.url, args, level, variant, console))
        async with aiohttp.ClientSession() as session, session.get(node.url + "/healthz") as r:
            health = await r.json()
        health["resident_bytes"] = node.process.rss_bytes()
    return results, health


async def _level(
    url: str, args: argparse.Namespace, level: int, variant: str, console: Console
) -> Level:
    requests = max(args.requests, level * 2)
    bodies = [chat_body(question(level * 1000 + i), args.max_tokens) for i in range(requests)]
    with console.status(f"{variant}: concurrency {level}, {requests} requests ..."):
        measured = await _drive(url, level, bodies)
    measured.variant = variant
    # A line per level, so a run in a log (no spinner there) shows how far it is.
    console.log(
        f"{variant}: concurrency {level}: {measured.tokens} tokens in {measured.wall_s:.1f} s"
        f" ({measured.tokens_per_s:.1f} tokens/s)"
    )
    return measured


async def _strategies(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """The nodes run side by side and are measured in turns (window, then continuous, at each
    level), so that both see the same machine: on a shared machine the load of the
    neighbours moves from minute to minute."""
    levels: list[Level] = []
    mixed: list[Mixed] = []
    prefix: list[dict[str, Any]] = []
    sections = set(args.sections)
    async with contextlib.AsyncExitStack() as stack:
        nodes: dict[str, Node] = {}
        if sections & {"levels", "mixed", "prefix"}:
            for strategy in STRATEGIES:
                if strategy == "window" and not sections & {"levels", "mixed"}:
                    continue
                with console.status(f"starting the edge node ({strategy}) ..."):
                    node = Node(args, strategy, *strategy_flags(strategy))
                    nodes[strategy] = await stack.enter_async_context(node)
        if "prefix" in sections:
            flags = strategy_flags("continuous", args.prefix_cache_tokens)
            with console.status("starting the edge node (continuous, prefix reuse) ..."):
                node = Node(args, "continuous-prefix", *flags)
                nodes["prefix"] = await stack.enter_async_context(node)
        if "levels" in sections:
            for level in args.levels:
                for strategy in STRATEGIES:
                    url = nodes[strategy].url
                    levels.append(await _level(url, args, level, strategy, console))
        if "mixed" in sections:
            for strategy in STRATEGIES:
                with console.status(f"{strategy}: mixed short and long requests ..."):
                    result = await _mixed(nodes[strategy].url, args)
                result.variant = strategy
                mixed.append(result)
        if "prefix" in sections:
            for name, variant in (("continuous", "reuse off"), ("prefix", "reuse on")):
                url = nodes[name].url
                prefix.append(await _prefix(url, args, f"continuous, {variant}", console))
    return {
        "levels": [lv.summary() for lv in levels],
        "mixed": [m.summary() for m in mixed],
        "prefix": prefix,
    }


async def _prefix(
    url: str, args: argparse.Namespace, variant: str, console: Console
) -> dict[str, Any]:
    before = await _counters(url)
    bodies = [
        chat_body(question(3000 + i), args.max_tokens, system=DEVICE_PROMPT)
        for i in range(args.prefix_requests)
    ]
    with console.status(f"{variant}: {len(bodies)} requests behind one system prompt ..."):
        level = await _drive(url, args.prefix_concurrency, bodies)
    after = await _counters(url)

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    prompt = grew("prompt_tokens")
    computed = grew("hotcold_edge_prefill_tokens_total")
    return {
        **level.summary(),
        "variant": variant,
        "prompt_tokens": prompt,
        "prefill_tokens_computed": computed,
        "computed_share": computed / prompt if prompt else 0.0,
        "prefix_hits": grew("hotcold_edge_prefix_hits_total"),
        "saved_tokens": grew("hotcold_edge_prefix_saved_tokens_total"),
    }


# -- memory of the NF4 process: quantizing while loading vs a pre-quantized checkpoint -------

PROBE = """
import json, os, sys
from pathlib import Path
from edge_node.model import load
loaded = load(Path(sys.argv[1]), device=sys.argv[2], quantize=sys.argv[3] == "nf4")
status = dict(
    line.split(":", 1) for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines()
)
print(json.dumps({
    "peak_bytes": int(status["VmHWM"].split()[0]) * 1024,
    "resident_bytes": int(status["VmRSS"].split()[0]) * 1024,
    "footprint_bytes": loaded.footprint_bytes,
    "quantization": loaded.quantization,
}))
"""


def probe_load(path: Path, device: str, quantize: str) -> dict[str, Any]:
    """Loads a model in a fresh process: its peak (VmHWM) and resident (VmRSS) memory after
    the load."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), device, quantize],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"loading {path} failed: {result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _memory(args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    from edge_node.weights import prequantized_dir, resolve_model

    source = resolve_model(args.model, console)
    target = prequantized_dir(source, "bfloat16", False)
    device = "cuda" if args.device == "cuda" else "cpu"
    ensure = (
        "import sys; from pathlib import Path; from edge_node.config import EdgeNodeConfig; "
        "from edge_node.model import load_configured; "
        "load_configured(Path(sys.argv[1]), EdgeNodeConfig(device=sys.argv[2]))"
    )
    runs = [
        ("bf16 checkpoint, NF4 quantized while loading", source, "nf4"),
        ("pre-quantized NF4 checkpoint", target, "nf4"),
        ("bf16 checkpoint, bf16 (reference)", source, "none"),
    ]
    rows = []
    for what, path, quantize in runs:
        if path == target:
            with console.status("the pre-quantized NF4 checkpoint (saved on first NF4 start) ..."):
                subprocess.run(
                    [sys.executable, "-c", ensure, str(source), device],
                    capture_output=True,
                    check=True,
                )
        with console.status(f"{what} ..."):
            rows.append({"load": what, **probe_load(path, device, quantize)})
    return rows


def _kv(args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    """fp8 KV cache against the model's dtype: memory per token and answer agreement."""
    import torch

    from edge_node.engine import BatchEngine
    from edge_node.generation import Generation
    from edge_node.kv_fp8 import cache_bytes
    from edge_node.model import load
    from edge_node.weights import resolve_model

    loaded = load(resolve_model(args.model, console), device=args.device)
    tokenizer = loaded.tokenizer
    prompts = []
    for i in range(args.kv_prompts):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question(5000 + i)}], add_generation_prompt=True
        )
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    eos = {int(tokenizer.eos_token_id)}

    async def engine_answers(kind: str) -> tuple[list[list[int]], float]:
        machine = BatchEngine(loaded.model, eos, len(prompts), kv_cache=kind)
        generations = [Generation(p, args.max_tokens) for p in prompts]
        for generation in generations:
            machine.enqueue(generation)
        machine.step()
        layers = list(machine._cache.layers) if machine._cache is not None else []
        per_token = cache_bytes(layers) / max(1, len(machine.rows) * machine.width)
        while not machine.idle():
            machine.step()
        await asyncio.sleep(0)
        answers = []
        for generation in generations:
            got = []
            while not generation.tokens.empty():
                token = generation.tokens.get_nowait()
                if token is not None:
                    got.append(token)
            answers.append(got)
        return answers, per_token

    def generate_answers(quantized: bool) -> list[list[int]]:
        answers = []
        for prompt in prompts:
            extra: dict[str, Any] = (
                {"cache_implementation": "quantized", "cache_config": {"backend": "fp8"}}
                if quantized
                else {}
            )
            with torch.inference_mode():
                out = loaded.model.generate(
                    torch.tensor([prompt]).to(loaded.model.device),
                    max_new_tokens=args.max_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                    **extra,
                )
            answers.append(out[0, len(prompt) :].tolist())
        return answers

    def agreement(reference: list[list[int]], other: list[list[int]]) -> dict[str, float]:
        same = sum(a == b for a, b in zip(reference, other, strict=True))
        before = 0
        for a, b in zip(reference, other, strict=True):
            common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
            before += len(a) if common is None else common
        return {
            "identical_answers": same,
            "answers": len(reference),
            "tokens_before_first_difference": before / max(1, sum(len(a) for a in reference)),
        }

    rows: list[dict[str, Any]] = []
    with console.status("kv: engine, model dtype and fp8 ..."):
        base, base_bytes = asyncio.run(engine_answers("model"))
        fp8, fp8_bytes = asyncio.run(engine_answers("fp8"))

    def row(
        name: str, per_token: float, reference: list[list[int]], other: list[list[int]]
    ) -> None:
        rows.append({"cache": name, "bytes_per_token": per_token, **agreement(reference, other)})

    row("engine, model dtype", base_bytes, base, base)
    row("engine, fp8 (a scale per row and head)", fp8_bytes, base, fp8)
    with console.status("kv: transformers generate, dynamic and fp8 QuantizedCache ..."):
        plain = generate_answers(False)
        quantized = generate_answers(True)
    # transformers' fp8 layer: one byte an element against the compute dtype's two (bf16)
    row("generate, DynamicCache", base_bytes, plain, plain)
    row("generate, QuantizedCache fp8 (per tensor)", base_bytes / 2, plain, quantized)
    return rows


def kv_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="KV cache in fp8 against the model's dtype (greedy answers compared)")
    for column in ("cache", "bytes per token", "identical answers", "tokens before 1st difference"):
        table.add_column(column, justify="left" if column == "cache" else "right")
    for r in rows:
        table.add_row(
            r["cache"],
            "" if r["bytes_per_token"] != r["bytes_per_token"] else f"{r['bytes_per_token']:.0f} B",
            f"{r['identical_answers']}/{r['answers']}",
            f"{r['tokens_before_first_difference']:.0%}",
        )
    return table


# -- tables -----------------------------------------------------------------------------------


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def levels_table(rows: list[dict[str, Any]]) -> Table:
    baseline = {r["variant"]: r["tokens_per_s"] for r in rows if r["concurrency"] == 1}
    by_key = {(r["variant"], r["concurrency"]): r for r in rows}
    table = Table(title="batching strategies (concurrency 1 = sequential generation)")
    columns = ["strategy", "concurrency", "requests", "tokens", "tokens/s", "vs sequential"]
    columns += ["vs window", "TTFT p50", "TTFT p99", "p50", "p99"]
    for column in columns:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for r in rows:
        window = by_key.get(("window", r["concurrency"]))
        table.add_row(
            r["variant"],
            str(r["concurrency"]),
            str(r["requests"]),
            str(r["tokens"]),
            f"{r['tokens_per_s']:.1f}",
            f"{r['tokens_per_s'] / baseline[r['variant']]:.2f}x"
            if r["variant"] in baseline
            else "",
            f"{r['tokens_per_s'] / window['tokens_per_s']:.2f}x" if window else "",
            _s(r["ttft_p50_s"]),
            _s(r["ttft_p99_s"]),
            _s(r["p50_s"]),
            _s(r["p99_s"]),
        )
    return table


def mixed_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> Table:
    table = Table(
        title=f"mixed: {args.long_requests} long ({args.long_tokens} tokens) + "
        f"{args.short_requests} short ({args.short_tokens} tokens, one every "
        f"{args.short_gap_s} s)"
    )
    for column in ("strategy", "tokens/s", "short p50", "short p99", "short TTFT p99", "long p50"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for r in rows:
        table.add_row(
            r["variant"],
            f"{r['tokens_per_s']:.1f}",
            _s(r["short_p50_s"]),
            _s(r["short_p99_s"]),
            _s(r["short_ttft_p99_s"]),
            _s(r["long_p50_s"]),
        )
    return table


def prefix_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="one system prompt shared by every request (continuous batching)")
    columns = ["variant", "prompt tokens", "prefill computed", "share", "hits", "saved"]
    columns += ["tokens/s", "TTFT p50", "TTFT p99"]
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for r in rows:
        table.add_row(
            r["variant"],
            f"{r['prompt_tokens']:.0f}",
            f"{r['prefill_tokens_computed']:.0f}",
            f"{r['computed_share']:.0%}",
            f"{r['prefix_hits']:.0f}",
            f"{r['saved_tokens']:.0f}",
            f"{r['tokens_per_s']:.1f}",
            _s(r["ttft_p50_s"]),
            _s(r["ttft_p99_s"]),
        )
    return table


def memory_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="memory of one loading process (fresh process each)")
    for column in ("load", "peak (VmHWM)", "resident after load", "model footprint"):
        table.add_column(column, justify="left" if column == "load" else "right")
    for r in rows:
        table.add_row(
            r["load"],
            f"{r['peak_bytes'] / 2**20:.0f} MiB",
            f"{r['resident_bytes'] / 2**20:.0f} MiB",
            f"{r['footprint_bytes'] / 2**20:.0f} MiB",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hotcold bench node",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument(
        "--requests", type=int, default=8, help="requests per level (at least 2x concurrency)"
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, action="append", help="repeatable")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--long-requests", type=int, default=4)
    parser.add_argument("--long-tokens", type=int, default=128)
    parser.add_argument("--short-requests", type=int, default=12)
    parser.add_argument("--short-tokens", type=int, default=8)
    parser.add_argument("--short-gap-s", type=float, default=0.5)
    parser.add_argument("--prefix-requests", type=int, default=32)
    parser.add_argument("--prefix-concurrency", type=int, default=16)
    parser.add_argument("--prefix-cache-tokens", type=int, default=2048)
    parser.add_argument("--kv-prompts", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench-results/node.json"))
    args = parser.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    args.levels = tuple(args.concurrency) if args.concurrency else LEVELS
    console = make_console()
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args)}
    report["args"] = {k: str(v) for k, v in vars(args).items()}
    if set(args.sections) & {"levels", "mixed", "prefix"}:
        report.update(asyncio.run(_strategies(args, console)))
    if "memory" in args.sections:
        report["memory"] = _memory(args, console)
    if "kv" in args.sections:
        report["kv"] = _kv(args, console)
    if report.get("levels"):
        console.print(levels_table(report["levels"]))
    if report.get("mixed"):
        console.print(mixed_table(report["mixed"], args))
    if report.get("prefix"):
        console.print(prefix_table(report["prefix"]))
    if report.get("memory"):
        console.print(memory_table(report["memory"]))
    if report.get("kv"):
        console.print(kv_table(report["kv"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    console.print(f"results written to {args.out}")
    return 0
