"""``hotcold bench policy``: the share of requests answered from the edge cache, against the
best published policies and Belady's optimum, on the same key sequences.

For every workload (Zipf 0.8/1.0/1.2, a Zipf whose popularity reshuffles, a 50% one-hit-wonder
scan, and the real traces in ../shared/traces) and cache size (0.1%, 1%, 10% of the distinct
keys), it replays the sequence in-process through:

- hotcold: the router's own sketch, classifier and policy-selecting cache, built by the
  router's own code with its default config (every deterministic answer offered);
- "strict": the same with ``cache.min_frequency: 2`` (only keys seen twice are admitted);
- libCacheSim's LRU, ARC, S3-FIFO, SIEVE, LIRS, TwoQ and W-TinyLFU, and Belady's optimum
  (from an oracleGeneral trace carrying every request's next access).

It prints each cell's hit ratios, the gap to the best reference and to Belady, the requests
needed to recover after a popularity shift, and (``--http``) one run through the real HTTP
router to show the in-process figure holds end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import libcachesim as lcs
import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.references import REFERENCE_POLICIES, OracleTrace, per_request_hits
from bench.workloads import Workload, WorkloadSpec, all_workloads, traces_dir
from hotcold.console import make_console
from router.app import build_policy
from router.clock import FakeClock
from router.config import build_config
from router.keys import int_fingerprint

SIZES = (0.001, 0.01, 0.1)
FROZEN_LOOP_CONFIG = Path("bench-results/policy-http-router.yaml")
RECOVERY_WINDOW = 5_000
RECOVERY_LEVEL = 0.9


@dataclass
class Cell:
    workload: str
    size: float
    capacity: int
    requests: int
    references: dict[str, float] = field(default_factory=dict)
    belady: float = 0.0
    hotcold: float = 0.0
    strict: float = 0.0
    policy: str = ""
    seconds: float = 0.0

    @property
    def best_name(self) -> str:
        return max(self.references, key=self.references.__getitem__)

    @property
    def best(self) -> float:
        return self.references[self.best_name]


def replay(fingerprints: list[int], capacity: int, strict: bool) -> tuple[np.ndarray, str]:
    """Hit (1) / miss (0) per request through the router's own sketch, classifier and cache
    (built by the same function the router uses, default config), with the capacity loop
    frozen. ``strict``: cache.min_frequency 2 (only keys seen twice are admitted)."""
    config = build_config(
        {
            "cache": {"entries": capacity, "min_frequency": 2 if strict else 1},
            "policy": {"capacity": {"control_interval_s": 1e9}},
        }
    )
    classifier, cache = build_policy(config, FakeClock())
    min_frequency = config.cache.min_frequency
    hits = np.zeros(len(fingerprints), dtype=np.int8)
    get, put, classify = cache.get, cache.put, classifier.classify
    for index, fingerprint in enumerate(fingerprints):
        estimate = classify(fingerprint, "", "", 0.0).estimate
        if get(fingerprint) is not None:
            hits[index] = 1
        elif estimate >= min_frequency:
            put(fingerprint, True)
    return hits, cache.policy_name


def measure_cell(workload: Workload, size: float) -> Cell:
    started = time.perf_counter()
    capacity = max(1, int(workload.distinct * size))
    cell = Cell(workload.name, size, capacity, int(workload.keys.size))
    oracle = OracleTrace(workload.keys)
    try:
        for name, policy in REFERENCE_POLICIES.items():
            cell.references[name] = oracle.hit_ratio(policy, capacity)
        cell.belady = oracle.hit_ratio(lcs.Belady, capacity)
    finally:
        oracle.close()
    fingerprints = [int_fingerprint(key) for key in workload.keys.tolist()]
    hits, cell.policy = replay(fingerprints, capacity, strict=False)
    cell.hotcold = float(hits.mean())
    cell.strict = float(replay(fingerprints, capacity, strict=True)[0].mean())
    cell.seconds = time.perf_counter() - started
    return cell


def recovery(hits: np.ndarray, shifts: tuple[int, ...]) -> float:
    """Mean requests after a shift until the rolling hit ratio is back to 90% of its level
    before the shift."""
    kernel = np.ones(RECOVERY_WINDOW) / RECOVERY_WINDOW
    rolling = np.convolve(hits.astype(np.float64), kernel, mode="full")[: hits.size]
    results = []
    for shift in shifts:
        before = hits[max(0, shift - 4 * RECOVERY_WINDOW) : shift].mean()
        after = np.nonzero(rolling[shift + RECOVERY_WINDOW :] >= RECOVERY_LEVEL * before)[0]
        results.append(float(after[0] + RECOVERY_WINDOW) if after.size else float("nan"))
    return float(np.nanmean(results))


def measure_recovery(workload: Workload, size: float) -> dict[str, float]:
    capacity = max(1, int(workload.distinct * size))
    fingerprints = [int_fingerprint(key) for key in workload.keys.tolist()]
    result = {"hotcold": recovery(replay(fingerprints, capacity, False)[0], workload.shift_points)}
    for name in ("LRU", "ARC", "S3-FIFO", "W-TinyLFU(lcs)"):
        hits = per_request_hits(REFERENCE_POLICIES[name], capacity, workload.keys)
        result[name] = recovery(hits, workload.shift_points)
    return result


def _cell_job(spec: WorkloadSpec, size: float) -> Cell:
    return measure_cell(spec.load(), size)


def table(cells: list[Cell]) -> Table:
    names = list(REFERENCE_POLICIES)
    out = Table(title="hit ratio (share of requests answered from the edge cache), same sequence")
    for column in (
        "workload",
        "size",
        "cap.",
        *names,
        "best ref.",
        "hotcold",
        "vs best",
        "vs Belady",
        "Belady",
        "router*",
        "policy",
    ):
        out.add_column(column, justify="left" if column in ("workload", "policy") else "right")
    for cell in cells:
        gap = cell.hotcold - cell.best
        out.add_row(
            cell.workload,
            f"{cell.size:.1%}",
            str(cell.capacity),
            *(f"{cell.references[name]:.3f}" for name in names),
            f"{cell.best:.3f}",
            f"[bold]{cell.hotcold:.3f}",
            f"[{'green' if gap >= 0 else 'red' if gap < -0.01 else 'yellow'}]{gap * 100:+.1f}",
            f"{(cell.hotcold - cell.belady) * 100:+.1f}",
            f"{cell.belady:.3f}",
            f"{cell.strict:.3f}",
            cell.policy,
        )
    return out


async def http_check(workload: Workload, size: float, limit: int) -> tuple[float, float]:
    """The same sequence through the real router over HTTP, and in-process with the router's
    own keys; returns (in-process, HTTP) hit ratios. Concurrency 1 keeps the order identical;
    the capacity loop is frozen so both runs classify on the same threshold."""
    import orjson

    from bench.loadgen import Job, run_load
    from bench.services import instant_stub_and_router
    from hotcold.wire import parse_chat_request
    from router.keys import request_key

    keys = workload.keys[:limit]
    capacity = max(1, int(np.unique(keys).size * size))
    bodies = [
        {
            "model": "bench",
            "messages": [{"role": "user", "content": f"key {k}"}],
            "temperature": 0,
            "max_tokens": 4,
        }
        for k in keys.tolist()
    ]
    fingerprints = [
        request_key("default", "default", parse_chat_request(b)).fingerprint for b in bodies
    ]
    in_process = float(replay(fingerprints, capacity, strict=False)[0].mean())
    stub, router = instant_stub_and_router(
        "policy", "--config", str(FROZEN_LOOP_CONFIG), "--cache-entries", str(capacity)
    )
    try:
        await stub.started()
        await router.started()
        jobs = [Job("/v1/chat/completions", orjson.dumps(body)) for body in bodies]
        result = await run_load(router.url, jobs, 1)
    finally:
        router.stop()
        stub.stop()
    http = result.count_by("cache").get("hit", 0) / max(1, result.answered)
    return in_process, http


def markdown(cells: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, for docs/benchmarks.md."""
    names = list(REFERENCE_POLICIES)
    lines = [
        "| workload | size | capacity | "
        + " | ".join(names)
        + " | best ref. | **hotcold** | vs best | Belady | strict | policy at end |",
        "|---|---:|---:|" + "---:|" * len(names) + "---:|---:|---:|---:|---:|---|",
    ]
    for cell in cells:
        best = max(cell["references"].values())
        lines.append(
            f"| {cell['workload']} | {cell['size']:.1%} | {cell['capacity']} | "
            + " | ".join(f"{cell['references'][name]:.3f}" for name in names)
            + f" | {best:.3f} | **{cell['hotcold']:.3f}** | "
            f"{(cell['hotcold'] - best) * 100:+.2f} | {cell['belady']:.3f} | "
            f"{cell['strict']:.3f} | {cell['policy']} |"
        )
    gaps = [cell["hotcold"] - max(cell["references"].values()) for cell in cells]
    lines.append("")
    lines.append(
        f"Mean gap to the best reference: {np.mean(gaps) * 100:+.2f} points; worst "
        f"{min(gaps) * 100:+.2f}; cells within one point: "
        f"{sum(gap >= -0.01 for gap in gaps)} of {len(gaps)}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hotcold bench policy",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--traces",
        type=Path,
        default=None,
        help="folder of the real traces (default ../shared/traces)",
    )
    parser.add_argument(
        "--requests", type=int, default=1_000_000, help="length of each synthetic sequence"
    )
    parser.add_argument("--workload", action="append", help="only these workloads")
    parser.add_argument("--jobs", type=int, default=2, help="cells measured in parallel")
    parser.add_argument(
        "--http",
        type=int,
        default=20_000,
        metavar="N",
        help="requests of web12 replayed through HTTP (0 to skip)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/policy.json"))
    args = parser.parse_args(argv)
    console = make_console()
    directory = args.traces or traces_dir()
    makers = all_workloads(directory, args.requests, set(args.workload) if args.workload else None)
    if not makers:
        console.print("no workloads selected")
        return 2
    cells = run_cells(console, makers, args.jobs)
    console.print(table(cells))
    console.print(
        "* strict: the same replay with cache.min_frequency 2 (a one-off never enters the cache)."
    )
    gaps = [cell.hotcold - cell.best for cell in cells]
    console.print(
        f"hotcold vs the best reference per cell: mean {np.mean(gaps) * 100:+.2f} "
        f"points, worst {min(gaps) * 100:+.2f} points over {len(cells)} cells"
    )
    report: dict[str, object] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cells": [asdict(cell) for cell in cells],
    }
    shifting = [spec for spec in makers if spec.name.endswith("shifting")]
    if shifting:
        with console.status("measuring recovery after popularity shifts (1% cache)..."):
            recovered = measure_recovery(shifting[0].load(), 0.01)
        console.print(
            "requests to recover 90% of the pre-shift hit ratio (shifting Zipf, 1%): "
            + ", ".join(f"{name} {value:,.0f}" for name, value in recovered.items())
        )
        report["recovery"] = recovered
    if args.http:
        web12 = [spec for spec in makers if spec.name == "web12"]
        if web12:
            FROZEN_LOOP_CONFIG.parent.mkdir(parents=True, exist_ok=True)
            FROZEN_LOOP_CONFIG.write_text("policy:\n  capacity:\n    control_interval_s: 1e9\n")
            with console.status(f"replaying {args.http} web12 requests through HTTP..."):
                in_process, http = asyncio.run(http_check(web12[0].load(), 0.01, args.http))
            console.print(
                f"end to end, web12 first {args.http} requests at 1%: in-process "
                f"{in_process:.3f}, through HTTP {http:.3f}"
            )
            report["http"] = {"in_process": in_process, "http": http, "requests": args.http}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown(report["cells"]) + "\n")  # type: ignore[arg-type]
    console.print(f"results written to {args.out} and {args.out.with_suffix('.md')}")
    return 0


def run_cells(console: Console, makers: list[WorkloadSpec], jobs: int) -> list[Cell]:
    order = [(index, size) for index in range(len(makers)) for size in SIZES]
    cells: dict[tuple[int, float], Cell] = {}
    with Progress(console=console, transient=True) as progress, ProcessPoolExecutor(jobs) as pool:
        task = progress.add_task("replaying cells", total=len(order))
        futures = {
            pool.submit(_cell_job, makers[index], size): (index, size) for index, size in order
        }
        for future in as_completed(futures):
            cells[futures[future]] = future.result()
            progress.advance(task)
    return [cells[key] for key in order]
