"""``hotcold bench proxy``: what the router adds on the request path.

The same requests go straight to a cloud stub and through the router to the same stub, in one
run, at concurrency 1, 16, 64 and 256. The stub answers at once (no simulated GPU time) so the
figures are the proxy's own cost: added latency p50/p99, the throughput ratio, and the
router's CPU-seconds per request (from /proc). Everything runs on this machine, so the load
generator, the router and the stub share its cores, as they would on a small gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.loadgen import Job, LoadResult, percentile, run_load
from bench.services import instant_stub_and_router
from hotcold.console import make_console

CONCURRENCIES = (1, 16, 64, 256)


@dataclass
class Row:
    concurrency: int
    direct: LoadResult
    routed: LoadResult
    router_cpu_s: float

    def as_dict(self) -> dict[str, float]:
        d, r = self.direct.latencies_s, self.routed.latencies_s
        return {
            "concurrency": self.concurrency,
            "requests": self.routed.answered,
            "direct_p50_ms": percentile(d, 50) * 1000,
            "router_p50_ms": percentile(r, 50) * 1000,
            "added_p50_ms": (percentile(r, 50) - percentile(d, 50)) * 1000,
            "direct_p99_ms": percentile(d, 99) * 1000,
            "router_p99_ms": percentile(r, 99) * 1000,
            "added_p99_ms": (percentile(r, 99) - percentile(d, 99)) * 1000,
            "direct_rps": self.direct.throughput,
            "router_rps": self.routed.throughput,
            "throughput_ratio": self.routed.throughput / self.direct.throughput
            if self.direct.throughput
            else 0.0,
            "router_cpu_ms_per_request": self.router_cpu_s / max(1, self.routed.answered) * 1000,
            "errors": self.routed.failed,
        }


def _jobs(count: int, offset: int) -> list[Job]:
    return [
        Job(
            "/v1/chat/completions",
            orjson.dumps(
                {
                    "model": "bench",
                    "messages": [{"role": "user", "content": f"reading {offset + i}"}],
                    "max_tokens": 16,
                    "temperature": 0.7,  # not cacheable: measure the forwarding path
                }
            ),
        )
        for i in range(count)
    ]


async def run(
    requests_per_level: int, concurrencies: tuple[int, ...], console: Console
) -> list[Row]:
    stub, router = instant_stub_and_router("proxy")
    rows: list[Row] = []
    try:
        await stub.started()
        await router.started()
        # Warm both paths (connection pools, first-call costs).
        await run_load(stub.url, _jobs(200, 0), 16)
        await run_load(router.url, _jobs(200, 0), 16)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("proxy benchmark", total=len(concurrencies) * 2)
            for level in concurrencies:
                count = max(requests_per_level, level * 8)
                direct = await run_load(stub.url, _jobs(count, 10_000), level)
                progress.advance(task)
                cpu_before = router.cpu_seconds()
                routed = await run_load(router.url, _jobs(count, 10_000), level)
                cpu_used = router.cpu_seconds() - cpu_before
                progress.advance(task)
                rows.append(Row(level, direct, routed, cpu_used))
    finally:
        router.stop()
        stub.stop()
    return rows


def _show(console: Console, rows: list[Row]) -> None:
    table = Table(title="router overhead: direct to the stub vs through the router (same run)")
    for name in (
        "conc.",
        "requests",
        "p50 direct",
        "p50 router",
        "added p50",
        "p99 direct",
        "p99 router",
        "added p99",
        "req/s direct",
        "req/s router",
        "ratio",
        "router CPU/req",
        "errors",
    ):
        table.add_column(name, justify="right")
    for row in rows:
        d = row.as_dict()
        table.add_row(
            str(row.concurrency),
            str(d["requests"]),
            f"{d['direct_p50_ms']:.2f} ms",
            f"{d['router_p50_ms']:.2f} ms",
            f"+{d['added_p50_ms']:.2f} ms",
            f"{d['direct_p99_ms']:.2f} ms",
            f"{d['router_p99_ms']:.2f} ms",
            f"+{d['added_p99_ms']:.2f} ms",
            f"{d['direct_rps']:.0f}",
            f"{d['router_rps']:.0f}",
            f"{d['throughput_ratio']:.2f}",
            f"{d['router_cpu_ms_per_request']:.3f} ms",
            str(d["errors"]),
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hotcold bench proxy", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="requests per level and path")
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help="levels to run (repeatable); default 1 16 64 256",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/proxy.json"))
    args = parser.parse_args(argv)
    levels = tuple(args.concurrency) if args.concurrency else CONCURRENCIES
    console = make_console()
    rows = asyncio.run(run(args.requests, levels, console))
    _show(console, rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": [row.as_dict() for row in rows]},
            indent=2,
        )
    )
    console.print(f"results written to {args.out}")
    return 0
