"""``hotcold demo``: bring the system up, drive an IoT workload through it, show a summary."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.loadgen import Job, LoadResult, Sample, percentile, run_load
from bench.workload import iot_workload
from hotcold.serving import run
from hotcold_app.stack import Stack, StackOptions


async def run_demo(
    console: Console, requests: int, concurrency: int, options: StackOptions
) -> tuple[Stack, LoadResult]:
    stack = Stack(options)
    with console.status("starting the cloud stubs, the edge node and the router..."):
        try:
            await stack.start()
        except Exception:
            stack.stop()
            raise
    _show_services(console, stack)
    jobs = [
        Job(item.path, orjson.dumps(item.body), (("X-Tenant", item.tenant),))
        for item in iot_workload(requests)
    ]
    assert stack.router is not None
    columns = (
        TextColumn("[bold]IoT workload"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[mix]}"),
        TimeElapsedColumn(),
    )
    counts: dict[str, int] = defaultdict(int)
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("workload", total=len(jobs), mix="")

        def answered(sample: Sample) -> None:
            counts[sample.served_by] += 1
            mix = "  ".join(f"{name}: {count}" for name, count in sorted(counts.items()))
            progress.update(task, advance=1, mix=mix)

        result = await run_load(stack.router.url, jobs, concurrency, on_answer=answered)
    stack.policy = await _fetch(stack.router.url + "/admin/policy")
    stack.dashboard = await _fetch(stack.router.url + "/dashboard/data")
    return stack, result


async def _fetch(url: str) -> dict[str, Any]:
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return dict(await response.json()) if response.status == 200 else {}
    except aiohttp.ClientError:
        return {}


def _show_services(console: Console, stack: Stack) -> None:
    table = Table(title="hotcold is up", show_header=True)
    table.add_column("service")
    table.add_column("address")
    table.add_column("log")
    for name, service in stack.services:
        table.add_row(name, service.url, str(service.log_path or "-"))
    console.print(table)
    if stack.router is not None:
        console.print(f"dashboard: [bold]{stack.router.url}/dashboard[/bold]")


def summary_table(result: LoadResult) -> Table:
    table = Table(
        title=f"{result.answered} requests in {result.wall_s:.1f} s "
        f"({result.throughput:.0f} req/s), {result.failed} failed"
    )
    for name in ("route", "served by", "cache", "requests", "share", "p50", "p99"):
        table.add_column(
            name, justify="right" if name in ("requests", "share", "p50", "p99") else "left"
        )
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for sample in result.samples:
        groups[(sample.route, sample.served_by, sample.cache)].append(sample.latency_s)
    for (route, served_by, cache), latencies in sorted(groups.items()):
        table.add_row(
            route,
            served_by,
            cache,
            str(len(latencies)),
            f"{len(latencies) / max(1, result.answered):.0%}",
            f"{percentile(latencies, 50) * 1000:.1f} ms",
            f"{percentile(latencies, 99) * 1000:.1f} ms",
        )
    return table


def route_table(result: LoadResult) -> Table:
    table = Table(title="by route")
    for name in ("route", "requests", "share", "p50", "p99"):
        table.add_column(name, justify="left" if name == "route" else "right")
    for route in ("hot", "cold"):
        latencies = [s.latency_s for s in result.samples if s.route == route]
        if latencies:
            table.add_row(
                route,
                str(len(latencies)),
                f"{len(latencies) / max(1, result.answered):.0%}",
                f"{percentile(latencies, 50) * 1000:.1f} ms",
                f"{percentile(latencies, 99) * 1000:.1f} ms",
            )
    return table


def cost_line(dashboard: dict[str, Any]) -> str | None:
    cost = dashboard.get("cost")
    if not cost:
        return None
    currency = cost["currency"]
    return (
        f"estimated cost: {cost['actual']:.4f} {currency} vs {cost['all_cloud']:.4f} {currency}"
        f" all-cloud: saved {cost['saved']:.4f} {currency} ({cost['saved_fraction']:.0%})"
    )


async def _stay_up(console: Console, stack: Stack) -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console.print("everything stays up (--stay); Ctrl-C stops it.")
    await stop.wait()


def main(
    console: Console,
    requests: int,
    concurrency: int,
    options: StackOptions,
    stay: bool = False,
) -> int:
    stack, result = None, None
    try:
        stack, result = run(run_demo(console, requests, concurrency, options))
        console.print(summary_table(result))
        console.print(route_table(result))
        _print_summary(console, stack, result)
        if stay:
            run(_stay_up(console, stack))
    finally:
        if stack is not None:
            stack.stop()
    return 0 if result is not None and result.failed == 0 else 1


def release_lines(policy: dict[str, Any]) -> list[str]:
    """Why the edge gets the traffic it gets: per model, its stage and agreement, and the
    edge's predicted time against the cloud's."""
    release = (policy.get("edge") or {}).get("release") or {}
    lines = []
    for model, state in (release.get("models") or {}).items():
        predicted = state.get("predicted_s") or {}
        agreement = state.get("agreement")
        edge_s, cloud_s = predicted.get("edge"), predicted.get("cloud")
        times = (
            f"predicted {edge_s:.2f} s at the edge vs {cloud_s:.2f} s in the cloud"
            f" for {predicted.get('tokens')} tokens (budget {release['budget']['factor']:g}x)"
            if edge_s is not None and cloud_s is not None
            else "edge or cloud not measured yet"
        )
        lines.append(
            f"edge release of {model}: {state['stage_name']}"
            f" (agreement {'n/a' if agreement is None else f'{agreement:.2f}'}"
            f" over {state['samples']} samples; {state['last_move']['reason']}); {times}"
        )
    return lines


def _print_summary(console: Console, stack: Stack, result: LoadResult) -> None:
    by_route = result.count_by("route")
    edge = sum(1 for s in result.samples if s.served_by in ("cache", "edge"))
    console.print(
        f"hot: {by_route.get('hot', 0)}  cold: {by_route.get('cold', 0)}  "
        f"answered at the edge: {edge / max(1, result.answered):.0%}  "
        f"errors: {result.failed}"
    )
    policy = stack.policy if stack is not None else {}
    if policy:
        threshold, cache = policy["threshold"], policy["cache"]
        console.print(
            f"threshold {threshold['value']:.2f} ({threshold['reason']}); cache: "
            f"{cache['entries']} entries, hit ratio {cache['hit_ratio']:.0%}, "
            f"eviction policy {cache['policy']}"
        )
        for release in release_lines(policy):
            console.print(release)
    line = cost_line(stack.dashboard)
    if line:
        console.print(line)
    assert stack.router is not None
    console.print(
        f"dashboard: {stack.router.url}/dashboard (up while the demo runs; "
        "`hotcold demo --stay` or `hotcold up` keeps it up)"
    )
