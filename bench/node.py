"""``hotcold bench node``: the edge node's throughput and latency with batching, and its
memory in 4 bits against bf16.

Same run, same prompts: concurrency 1 is sequential, unbatched generation (each request alone
in its forward passes) and is the baseline; concurrency 4, 16 and 64 let the dynamic batcher
share forward passes. Tokens/s counts completion tokens from the answers' usage. Then the same
model is loaded without quantization (bf16) to compare measured footprint, resident memory
and speed. Runs on CUDA when the machine has it (``--device``), else on the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table

from bench.loadgen import percentile
from bench.workload import question
from hotcold.console import make_console
from hotcold.procs import ServiceProcess
from hotcold.serving import free_port

LEVELS = (1, 4, 16, 64)


@dataclass
class Level:
    variant: str
    concurrency: int
    requests: int
    tokens: int
    wall_s: float
    latencies_s: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


async def _drive(url: str, concurrency: int, requests: int, max_tokens: int, offset: int) -> Level:
    bodies = [
        orjson.dumps(
            {
                "model": "default",
                "temperature": 0,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": question(offset + i)}],
            }
        )
        for i in range(requests)
    ]
    latencies: list[float] = []
    tokens = 0
    next_index = 0
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            nonlocal next_index, tokens
            while next_index < len(bodies):
                body = bodies[next_index]
                next_index += 1
                started = time.perf_counter()
                async with session.post(
                    url + "/v1/chat/completions",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as answer:
                    document = await answer.json()
                latencies.append(time.perf_counter() - started)
                tokens += int(document["usage"]["completion_tokens"])

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    return Level("", concurrency, requests, tokens, wall, latencies)


async def _node(
    args: argparse.Namespace, quantize: bool, levels: tuple[int, ...], console: Console
) -> tuple[list[Level], dict[str, Any]]:
    flags = [
        "--model",
        args.model,
        "--device",
        args.device,
        "--max-batch",
        str(max(levels)),
        "--batch-window-ms",
        "10",
        "--max-queue",
        "1024",
    ]
    if not quantize:
        flags.append("--no-quantize")
    variant = "nf4" if quantize else "bf16"
    node = ServiceProcess(
        "edge_node", free_port(), *flags, log_path=Path(f"bench-results/logs/node-{variant}.log")
    )
    results: list[Level] = []
    try:
        with console.status(f"starting the edge node ({variant}) ..."):
            await node.started(timeout_s=600)
        await _drive(node.url, 2, 2, 8, 10_000)  # warm-up
        for level in levels:
            requests = max(args.requests, level * 2) if level > 1 else args.requests
            with console.status(f"{variant}: concurrency {level}, {requests} requests ..."):
                measured = await _drive(node.url, level, requests, args.max_tokens, level * 1000)
            measured.variant = variant
            results.append(measured)
        async with aiohttp.ClientSession() as session, session.get(node.url + "/healthz") as r:
            health = await r.json()
        health["resident_bytes"] = node.rss_bytes()
    finally:
        node.stop()
    return results, health


def _table(levels: list[Level]) -> Table:
    baseline = {lv.variant: lv.tokens_per_s for lv in levels if lv.concurrency == 1}
    table = Table(title="edge node: throughput and latency (concurrency 1 = sequential baseline)")
    for column in (
        "model",
        "concurrency",
        "requests",
        "tokens",
        "tokens/s",
        "vs sequential",
        "p50",
        "p99",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    for level in levels:
        table.add_row(
            level.variant,
            str(level.concurrency),
            str(level.requests),
            str(level.tokens),
            f"{level.tokens_per_s:.1f}",
            f"{level.tokens_per_s / baseline[level.variant]:.2f}x",
            f"{percentile(level.latencies_s, 50):.2f} s",
            f"{percentile(level.latencies_s, 99):.2f} s",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hotcold bench node", description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--requests",
        type=int,
        default=8,
        help="requests per level (at least twice the concurrency)",
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, action="append")
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-results/node.json"))
    args = parser.parse_args(argv)
    console = make_console()
    levels = tuple(args.concurrency) if args.concurrency else LEVELS
    nf4, nf4_health = asyncio.run(_node(args, True, levels, console))
    results, report = nf4, {"nf4": nf4_health}
    if not args.skip_bf16:
        bf16, bf16_health = asyncio.run(_node(args, False, (1, 16), console))
        results = nf4 + bf16
        report["bf16"] = bf16_health
    console.print(_table(results))
    memory = Table(title="memory of the same model: NF4 against bf16")
    for column in ("model", "device", "measured footprint", "process resident"):
        memory.add_column(column, justify="left" if column in ("model", "device") else "right")
    for name, health in report.items():
        memory.add_row(
            name,
            str(health["device"]),
            f"{health['footprint_bytes'] / 2**20:.0f} MiB",
            f"{health['resident_bytes'] / 2**20:.0f} MiB",
        )
    console.print(memory)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                "memory": report,
                "levels": [
                    {
                        "model": lv.variant,
                        "concurrency": lv.concurrency,
                        "requests": lv.requests,
                        "tokens": lv.tokens,
                        "tokens_per_s": lv.tokens_per_s,
                        "p50_s": percentile(lv.latencies_s, 50),
                        "p99_s": percentile(lv.latencies_s, 99),
                    }
                    for lv in results
                ],
            },
            indent=2,
        )
    )
    console.print(f"results written to {args.out}")
    return 0
