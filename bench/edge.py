"""``hotcold bench edge``: what the edge's gray release and latency budget change, on the IoT
workload, side by side in one run.

Three routers, each in front of the same kind of producers, get the same request sequence:

- **edge always**: the edge answers every hot miss it can take (no gray release, no budget:
  the router's behaviour before);
- **gray release**: the edge earns its share of hot misses on agreement with the cloud;
- **gray release + latency budget**: and only while its predicted time is within the budget.

The producers are cloud stubs, so the run is repeatable and quick on any machine: the cloud
(120 ms to the first token, 8 ms per token) and an "edge" with a fast first token but slower
tokens (10 ms, 15 ms per token: a little slower than the cloud for a whole answer) that
answers wrongly 10% of the time (``wrong_rate``). The budget mode allows the edge 1.1x the
cloud's predicted time, so it shows the budget keeping a slightly slower edge out. For
each mode: the share answered at the edge (cache + edge), by the edge model itself, the
edge's agreement with the cloud (shadow comparisons are taken in every mode), p50/p99 of hot
and cold requests, and the estimated cost against all-cloud.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from rich.table import Table

from bench.loadgen import Job, LoadResult, percentile, run_load
from bench.workload import iot_workload
from hotcold.console import make_console
from hotcold.procs import ServiceProcess
from hotcold.serving import free_port

RESULTS = Path("bench-results")
MODES: dict[str, dict[str, Any]] = {
    "edge always": {"release": {"enabled": False}, "latency": {"cost_first": True}},
    "gray release": {"latency": {"cost_first": True}},
    "gray release + latency budget": {"latency": {"factor": 1.1}},
}
RELEASE = {"shadow_rate": 0.3, "min_samples": 20, "min_rollback_samples": 20, "window": 200}


def _stub(name: str, *args: str) -> ServiceProcess:
    return ServiceProcess(
        "cloud_stub",
        free_port(),
        "--max-concurrency",
        "64",
        *args,
        log_path=RESULTS / "logs" / f"edge-{name}.log",
    )


async def _json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        return await response.json()


async def run_mode(name: str, settings: dict[str, Any], jobs: list[Job]) -> dict[str, Any]:
    slug = name.replace(" ", "-").replace("+", "and")
    cloud = _stub(f"{slug}-cloud", "--ttft-ms", "120", "--tpot-ms", "8")
    edge = _stub(f"{slug}-edge", "--ttft-ms", "10", "--tpot-ms", "15")
    config = RESULTS / f"edge-{slug}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    release = {**RELEASE, **settings.get("release", {})}
    document = {
        "edge": {"release": release, "latency": settings["latency"], "max_inflight": 64},
        "admin": {"watch_config_s": 0},
    }
    config.write_text(yaml.safe_dump(document))
    router = ServiceProcess(
        "router",
        free_port(),
        "--config",
        str(config),
        "--cloud-endpoint",
        cloud.url,
        "--edge-endpoint",
        edge.url,
        "--log-level",
        "WARNING",
        log_path=RESULTS / "logs" / f"edge-{slug}-router.log",
    )
    try:
        await cloud.started()
        await edge.started()
        async with aiohttp.ClientSession() as session:
            await session.post(edge.url + "/admin/faults", json={"wrong_rate": 0.1})
        await router.started()
        result = await run_load(router.url, jobs, 8)
        async with aiohttp.ClientSession() as session:
            policy = await _json(session, router.url + "/admin/policy")
            dashboard = await _json(session, router.url + "/admin/dashboard/data")
        return _row(name, result, policy, dashboard)
    finally:
        for process in (router, edge, cloud):
            process.stop()


def _row(
    name: str, result: LoadResult, policy: dict[str, Any], dashboard: dict[str, Any]
) -> dict[str, Any]:
    answered = max(1, result.answered)
    at_edge = sum(1 for s in result.samples if s.served_by in ("cache", "edge"))
    by_edge = sum(1 for s in result.samples if s.served_by == "edge")

    def latencies(route: str) -> list[float]:
        return [s.latency_s for s in result.samples if s.route == route and s.status == 200]

    models = policy["edge"]["release"]["models"]
    state: dict[str, Any] = next(iter(models.values()), {})
    cost = dashboard["cost"]
    return {
        "mode": name,
        "requests": result.answered,
        "failed": result.failed,
        "at_edge": at_edge / answered,
        "by_edge_model": by_edge / answered,
        "agreement": state.get("agreement"),
        "stage": state.get("stage_name"),
        "last_move": (state.get("last_move") or {}).get("reason"),
        "hot_p50_ms": percentile(latencies("hot"), 50) * 1000,
        "hot_p99_ms": percentile(latencies("hot"), 99) * 1000,
        "cold_p50_ms": percentile(latencies("cold"), 50) * 1000,
        "cold_p99_ms": percentile(latencies("cold"), 99) * 1000,
        "cost": cost["actual"],
        "all_cloud": cost["all_cloud"],
        "saved_fraction": cost["saved_fraction"],
    }


def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(title="edge release modes, same IoT workload")
    for column in (
        "mode",
        "at edge",
        "by edge model",
        "agreement",
        "stage at end",
        "hot p50 / p99",
        "cold p50 / p99",
        "cost vs all-cloud",
    ):
        out.add_column(column, justify="left" if column in ("mode", "stage at end") else "right")
    for row in rows:
        agreement = "n/a" if row["agreement"] is None else f"{row['agreement']:.2f}"
        out.add_row(
            row["mode"],
            f"{row['at_edge']:.0%}",
            f"{row['by_edge_model']:.0%}",
            agreement,
            str(row["stage"]),
            f"{row['hot_p50_ms']:.0f} / {row['hot_p99_ms']:.0f} ms",
            f"{row['cold_p50_ms']:.0f} / {row['cold_p99_ms']:.0f} ms",
            f"{row['cost']:.4f} / {row['all_cloud']:.4f} (-{row['saved_fraction']:.0%})",
        )
    return out


async def run(requests: int) -> list[dict[str, Any]]:
    console = make_console()
    jobs = [
        Job(item.path, orjson.dumps(item.body), (("X-Tenant", item.tenant),))
        for item in iot_workload(requests)
    ]
    rows = []
    for name, settings in MODES.items():
        with console.status(f"{name}: {requests} requests"):
            rows.append(await run_mode(name, settings, jobs))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hotcold bench edge",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.requests))
    make_console().print(table(rows))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "edge.json").write_text(json.dumps(rows, indent=2))
    return 0 if all(row["failed"] == 0 for row in rows) else 1
