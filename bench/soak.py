"""``hotcold bench soak``: sustained load with faults on a schedule; nothing may be lost and
the router's memory must stay flat.

On loopback: two cloud stubs (processes), a Redis (process), the router with fleet sync on.
An open-loop generator sends the IoT workload at a fixed rate (bounded in flight, bounded in
total), no client retries. Faults, as fractions of the run:

    25%  SIGKILL cloud stub 1          40%  start it again on the same port
    60%  SIGKILL Redis                 65%  start it again (empty)

A warm-up (``--warmup``, 240 s, no faults) comes first: the cache reaches its entry bound in
about 90 s, and the eviction policies' ghost lists (bounded too) fill over the next minutes,
growing RSS in steps as their dicts resize; memory is judged on the measured run after it.

Without ``--rate`` a 10 s calibration finds the closed-loop throughput (64 workers) and the
soak runs at 60% of it. Why 60%: open-loop load at 80% (961 req/s here) lost nothing but its
latency climbed all run long (p50 15 ms -> 400 ms): queues grew, so that rate is not
*sustained*; the generator, two stubs, Redis and the router share two cores, and the fault
recoveries need headroom. The report: requests sent, answered, failed, lost (no answer), p50 /
p99 / max latency per phase, and the router's RSS every 5 s with its slope over the second half
(flat means the bounds hold: the cache fills in the first minutes, then nothing grows).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bench.loadgen import Job, percentile, run_load
from bench.services import LOGS
from bench.workload import iot_workload
from hotcold.console import make_console
from hotcold.procs import ServiceProcess
from hotcold.redis_process import RedisProcess
from hotcold.serving import free_port

SCHEDULE = ((0.25, "kill", "stub"), (0.40, "start", "stub"), (0.60, "kill", "redis"),
            (0.65, "start", "redis"))  # fmt: skip


@dataclass
class Outcomes:
    """Every request's send time, latency and status, in flat arrays: hundreds of thousands
    of small objects would make the generator's garbage collector pause the sender and show
    up as latency that the router did not cause."""

    at_s: array[float] = field(default_factory=lambda: array("d"))
    latency_s: array[float] = field(default_factory=lambda: array("d"))
    status: array[int] = field(default_factory=lambda: array("H"))  # 0: no answer

    def add(self, at_s: float, latency_s: float, status: int) -> None:
        self.at_s.append(at_s)
        self.latency_s.append(latency_s)
        self.status.append(status)


@dataclass
class SoakReport:
    rate: float
    duration_s: float
    sent: int = 0
    outcomes: Outcomes = field(default_factory=Outcomes)
    memory: list[tuple[float, int]] = field(default_factory=list)  # (s, router RSS bytes)
    cache: list[tuple[float, int, int]] = field(default_factory=list)  # (s, entries, bytes)
    ok: int = 0  # running counts (the progress bar reads them: no O(n) scans while sending)
    bad: int = 0
    events: list[tuple[float, str]] = field(default_factory=list)
    router_cpu_s: float = 0.0

    @property
    def answered(self) -> int:
        return self.ok

    @property
    def failed(self) -> int:
        return self.bad

    @property
    def lost(self) -> int:
        return self.sent - self.answered - self.failed

    def latency(self, start: float = 0.0, end: float = float("inf")) -> dict[str, float]:
        o = self.outcomes
        values = [
            latency
            for at, latency, status in zip(o.at_s, o.latency_s, o.status, strict=True)
            if status == 200 and start <= at < end
        ]
        return {
            "count": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 2),
            "p99_ms": round(percentile(values, 99) * 1000, 2),
            "max_ms": round(max(values, default=0.0) * 1000, 2),
        }

    def memory_slope_mib_per_min(self) -> float:
        """Least-squares slope of RSS over the second half of the run."""
        half = [(t, b) for t, b in self.memory if t >= self.duration_s / 2]
        if len(half) < 3:
            return 0.0
        n = len(half)
        mean_t = sum(t for t, _ in half) / n
        mean_b = sum(b for _, b in half) / n
        num = sum((t - mean_t) * (b - mean_b) for t, b in half)
        den = sum((t - mean_t) ** 2 for t, _ in half) or 1.0
        return num / den * 60 / 2**20

    def as_dict(self) -> dict[str, Any]:
        phases = self.phases()
        return {
            "rate_per_s": self.rate,
            "duration_s": self.duration_s,
            "sent": self.sent,
            "answered": self.answered,
            "failed": self.failed,
            "lost": self.lost,
            "statuses": dict(Counter(self.outcomes.status)),
            "latency": self.latency(),
            "phases": phases,
            "router_rss_mib": [(round(t), round(b / 2**20, 1)) for t, b in self.memory],
            "cache_entries_mib": [(round(t), n, round(b / 2**20, 1)) for t, n, b in self.cache],
            "rss_slope_second_half_mib_per_min": round(self.memory_slope_mib_per_min(), 3),
            "router_cpu_s": round(self.router_cpu_s, 1),
            "events": self.events,
        }

    def phases(self) -> dict[str, dict[str, float]]:
        d = self.duration_s
        bounds = {
            "steady (0-25%)": (0.0, 0.25 * d),
            "stub 1 dead (25-40%)": (0.25 * d, 0.40 * d),
            "stub back (40-60%)": (0.40 * d, 0.60 * d),
            "Redis dead (60-65%)": (0.60 * d, 0.65 * d),
            "Redis back (65-100%)": (0.65 * d, float("inf")),
        }
        return {name: self.latency(a, b) for name, (a, b) in bounds.items()}


def _jobs(count: int) -> list[Job]:
    return [
        Job(item.path, orjson.dumps(item.body), (("X-Tenant", item.tenant),))
        # A long tail larger than the cache (10,000 entries): the cache reaches its bound in
        # the first minutes, after which nothing in the router may grow.
        for item in iot_workload(count, catalogue=50_000, tenants=("acme", "globex", "initech"))
    ]


async def calibrate(router_url: str, seconds: float = 10.0) -> float:
    """Closed-loop throughput with 64 workers for about ``seconds``."""
    probe = await run_load(router_url, _jobs(400), 64)
    jobs = _jobs(max(1000, int(probe.throughput * seconds)))
    result = await run_load(router_url, jobs, 64)
    return result.throughput


async def soak(
    router: ServiceProcess,
    stub: ServiceProcess,
    redis: RedisProcess,
    rate: float,
    duration_s: float,
    max_in_flight: int,
    console: Console,
    with_faults: bool = True,
) -> SoakReport:
    report = SoakReport(rate, duration_s)
    jobs = _jobs(int(rate * duration_s) + 1)
    interval = 1.0 / rate
    gate = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    timeout = aiohttp.ClientTimeout(total=30)
    cpu_before = router.cpu_seconds()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = time.perf_counter()

        async def one(job: Job) -> None:
            sent_at = time.perf_counter()
            status = 0
            try:
                async with session.post(
                    router.url + job.path,
                    data=job.body,
                    headers={"Content-Type": "application/json", **dict(job.headers)},
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            finally:
                gate.release()
            report.outcomes.add(sent_at - began, time.perf_counter() - sent_at, status)
            if status == 200:
                report.ok += 1
            elif status != 0:
                report.bad += 1

        async def faults() -> None:
            for fraction, action, target in SCHEDULE:
                await asyncio.sleep(max(0.0, began + fraction * duration_s - time.perf_counter()))
                at = time.perf_counter() - began
                if target == "stub":
                    stub.kill() if action == "kill" else stub.start()
                else:
                    redis.kill() if action == "kill" else redis.start()
                report.events.append((round(at, 1), f"{action} {target}"))
                console.log(f"{at:6.1f} s  {action} {target}")

        async def memory() -> None:
            while True:
                at = time.perf_counter() - began
                report.memory.append((at, router.rss_bytes()))
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError):
                    async with session.get(router.url + "/admin/policy") as response:
                        cache = (await response.json())["cache"]
                    report.cache.append((at, int(cache["entries"]), int(cache["bytes"])))
                await asyncio.sleep(5.0)

        background = [asyncio.create_task(memory())]
        if with_faults:
            background.append(asyncio.create_task(faults()))
        columns = (TextColumn("[bold]soak"), BarColumn(), TextColumn("{task.fields[status]}"),
                   TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("soak", total=duration_s, status="")
            for index, job in enumerate(jobs):
                due = began + index * interval
                now = time.perf_counter()
                if now >= began + duration_s:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
                await gate.acquire()  # bounded in flight: a slow router slows the sender
                task = asyncio.create_task(one(job))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                report.sent += 1
                if index % 200 == 0:
                    elapsed = time.perf_counter() - began
                    progress.update(
                        bar,
                        completed=min(duration_s, elapsed),
                        status=f"sent {report.sent}  answered {report.answered}  "
                        f"failed {report.failed}  in flight {len(tasks)}",
                    )
            progress.update(bar, completed=duration_s)
        await asyncio.gather(*tasks)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
    report.router_cpu_s = router.cpu_seconds() - cpu_before
    return report


def sparkline(values: list[float]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    low, high = min(values, default=0.0), max(values, default=0.0)
    span = (high - low) or 1.0
    return "".join(bars[int((v - low) / span * (len(bars) - 1))] for v in values)


def show(console: Console, report: SoakReport) -> None:
    table = Table(title=f"soak: {report.rate:.0f} req/s for {report.duration_s:.0f} s")
    for name in ("", "value"):
        table.add_column(name, justify="left" if not name else "right")
    latency = report.latency()
    rows = [
        ("requests sent", f"{report.sent}"),
        ("answered (200)", f"{report.answered}"),
        ("failed (status)", f"{report.failed}"),
        ("lost (no answer)", f"{report.lost}"),
        ("p50 / p99 / max", f"{latency['p50_ms']} / {latency['p99_ms']} / {latency['max_ms']} ms"),
        ("router CPU", f"{report.router_cpu_s:.0f} s"),
        ("router RSS", f"{report.memory[0][1] / 2**20:.0f} -> {report.memory[-1][1] / 2**20:.0f}"
                       f" MiB (max {max(b for _, b in report.memory) / 2**20:.0f})"),
        ("RSS slope, 2nd half", f"{report.memory_slope_mib_per_min():+.2f} MiB/min"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    console.print(table)
    phases = Table(title="by phase")
    for name in ("phase", "answered", "p50", "p99", "max"):
        phases.add_column(name, justify="left" if name == "phase" else "right")
    for name, values in report.phases().items():
        phases.add_row(name, str(values["count"]), f"{values['p50_ms']} ms",
                       f"{values['p99_ms']} ms", f"{values['max_ms']} ms")  # fmt: skip
    console.print(phases)
    console.print("router RSS every 5 s:    " + sparkline([b for _, b in report.memory]))
    if report.cache:
        console.print("cache entries every 5 s: " + sparkline([n for _, n, _ in report.cache]))
        _, entries, size = report.cache[-1]
        console.print(f"cache at the end: {entries} entries, {size / 2**20:.1f} MiB")


async def run(args: argparse.Namespace, console: Console) -> SoakReport:
    redis = RedisProcess()
    stubs = [
        ServiceProcess(
            "cloud_stub", free_port(), "--ttft-ms", "20", "--tpot-ms", "1",
            "--max-concurrency", "2048", "--max-queue", "4096",
            log_path=LOGS / f"soak-stub-{i}.log",
        )
        for i in (1, 2)
    ]  # fmt: skip
    router = ServiceProcess(
        "router", free_port(),
        *[arg for stub in stubs for arg in ("--cloud-endpoint", stub.url)],
        "--redis-url", redis.url, "--fleet", "soak", "--log-level", "WARNING",
        log_path=LOGS / "soak-router.log",
        env={"HOTCOLD_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    try:
        await redis.started()
        for stub in stubs:
            await stub.started()
        await router.started()
        rate = args.rate
        if rate is None:
            with console.status("calibrating: the highest rate this machine sustains..."):
                sustained = await calibrate(router.url)
            rate = round(sustained * 0.6)
            console.print(f"closed-loop throughput {sustained:.0f} req/s; soaking at {rate}")
        if args.warmup > 0:
            # Fill the cache *and* the bounded structures that fill after it (the eviction
            # policies' ghost lists), so memory is judged at its steady state.
            warm = await soak(router, stubs[0], redis, rate, args.warmup, args.max_in_flight,
                              console, with_faults=False)  # fmt: skip
            console.print(
                f"warm-up: {warm.sent} sent, {warm.answered} answered, {warm.failed} failed, "
                f"{warm.lost} lost; router RSS {warm.memory[0][1] / 2**20:.0f} -> "
                f"{warm.memory[-1][1] / 2**20:.0f} MiB"
            )
            if warm.lost or warm.failed:
                raise SystemExit("the warm-up lost or failed requests")
        return await soak(router, stubs[0], redis, rate, args.duration, args.max_in_flight,
                          console)  # fmt: skip
    finally:
        router.stop()
        for stub in stubs:
            stub.stop()
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hotcold bench soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--rate", type=float, help="requests/s (default: 60%% of calibrated)")
    parser.add_argument("--max-in-flight", type=int, default=512, help="client-side bound")
    parser.add_argument(
        "--warmup",
        type=float,
        default=240.0,
        help="seconds of load before the measured run, no faults (default 240: the cache and"
        " its ghost lists reach their bounds)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/soak.json"))
    args = parser.parse_args(argv)
    console = make_console()
    report = asyncio.run(run(args, console))
    show(console, report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), **report.as_dict()}
    args.out.write_text(json.dumps(document, indent=2))
    console.print(f"results written to {args.out}")
    return 0 if report.lost == 0 and report.failed == 0 else 1
