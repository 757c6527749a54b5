"""``hotcold bench fleet``: the fleet's hot-key view at N = 2, 10, 50, 100 routers, for both
designs, against one real ``redis-server``.

- **all_to_all** (the reference, router/fleet_members.py ``SketchExchange``): every router
  publishes its compressed sketch and reads every other router's each period;
- **shared** (router/fleet_hotkeys.py ``SharedHotKeys``): every router pushes its most counted
  keys into one decaying sorted set and reads the fleet's top back, in one Lua call.

The routers are simulated in this process, each with the router's own sketch (default size:
``cache.entries`` 10,000) and the router's own exchange code, each on its own Redis
connection. Each simulated second every router counts its share of the requests (spread
uniformly at random, as a load balancer does) and then makes one exchange (the default
``sketch_interval_s`` is 1 s). Measured after a warm-up round:

- Redis bytes/s in + out (``INFO stats`` ``total_net_input_bytes`` + ``_output_bytes``),
  round trips/s (the routers' calls, counted at their Redis link) and commands/s
  (``INFO commandstats``: every command, those a script runs included);
- CPU per router per second for the exchange (this process's CPU time around each router's
  exchange: encoding, decoding, summing; Redis's own CPU is not in it);
- recall of the true global top 1% of keys (exact counts over the whole run) by router 0's
  fleet view: the top-k keys of the shared summary, or, for all_to_all, the k keys with the
  highest local + summed remote estimate (ties broken at random, seeded).

Workload: the IoT mix's popularity (bench/workload.py ``iot_picks``: Zipf 1.1) over a
catalogue of 50,000 questions, or a real trace from ../shared/traces (``--workload``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.workload import iot_picks
from bench.workloads import REAL_TRACES, trace, traces_dir
from hotcold.console import make_console
from hotcold.redis_process import RedisProcess
from router.clock import FakeClock
from router.config import FleetConfig, RouterConfig, TenantLimits, TenantsConfig
from router.fleet_hotkeys import SharedHotKeys
from router.fleet_limits import FleetLimits
from router.fleet_link import RedisLink
from router.fleet_members import Membership, SketchExchange
from router.keys import int_fingerprint
from router.sketch import FrequencySketch, width_for
from router.tenants import TenantLimiter

RESULTS = Path("bench-results")


class CountingLink(RedisLink):
    """The router's Redis link, counting its round trips (Redis's own command counters
    include the commands a script runs)."""

    round_trips = 0

    async def call(self, operation: Any) -> Any:
        CountingLink.round_trips += 1
        return await super().call(operation)


DESIGNS = ("all_to_all", "shared")


@dataclass
class Row:
    design: str
    routers: int
    requests_per_router_s: int
    bytes_per_s: float
    round_trips_per_s: float
    commands_per_s: float
    cpu_ms_per_router_s: float
    recall_top1: float
    top_k: int
    seconds: int


def load_keys(workload: str, total: int, catalogue: int) -> np.ndarray:
    if workload == "iot":
        return iot_picks(total, catalogue, 1.1, seed=7).astype(np.int64)
    file, dtype = REAL_TRACES[workload]
    keys = trace(traces_dir() / file, dtype, workload).keys
    if len(keys) < total:
        keys = np.resize(keys, total)
    return keys[:total]


def new_sketch(config: RouterConfig) -> FrequencySketch:
    entries = config.cache.entries
    sketch_config = config.policy.sketch
    width = sketch_config.width or width_for(entries, minimum=1024)
    return FrequencySketch(
        width, sketch_config.window_factor * entries, doorkeeper=sketch_config.doorkeeper
    )


async def redis_counters(client: Any) -> tuple[int, int]:
    stats = await client.info("stats")
    commands = await client.info("commandstats")
    calls = sum(int(entry["calls"]) for entry in commands.values())
    return int(stats["total_net_input_bytes"]) + int(stats["total_net_output_bytes"]), calls


async def run_design(
    design: str,
    routers: int,
    keys: np.ndarray,
    per_router: int,
    seconds: int,
    redis: RedisProcess,
    console: Console,
) -> Row:
    config = RouterConfig()
    fleet = FleetConfig(
        redis_url=redis.url,
        name=f"bench-{design}-{routers}",
        hot_key_view=design,  # type: ignore[arg-type]
        member_ttl_s=3600,
        redis_timeout_s=30,
    )
    clock = FakeClock(0.0)
    links, sketches, exchanges = [], [], []
    for index in range(routers):
        link = CountingLink(
            fleet.model_copy(update={"router_id": f"r{index}"}), clock, lambda: "bench"
        )
        sketch = new_sketch(config)
        if design == "shared":
            exchange: Any = SharedHotKeys(link, sketch, test_clock=clock)
            step = exchange.exchange
        else:
            membership = Membership(link, f"r{index}", lambda: 0)
            exchange = (membership, SketchExchange(link, membership, sketch))
            step = exchange[1].exchange_sketches
        links.append(link)
        sketches.append(sketch)
        exchanges.append((exchange, step))
    if design == "all_to_all":  # every router knows every member, as heartbeats would tell
        for exchange, _ in exchanges:
            await exchange[0].beat()
        for exchange, _ in exchanges:
            await exchange[0].beat()
    fingerprints = {int(key): int_fingerprint(int(key)) for key in np.unique(keys)}
    assignment = np.random.default_rng(11).integers(0, routers, size=len(keys))
    per_second = routers * per_router
    client = redis.client()
    cpu = 0.0
    start_bytes = start_calls = start_trips = 0
    for second in range(seconds):
        chunk = slice(second * per_second, (second + 1) * per_second)
        for key, which in zip(keys[chunk].tolist(), assignment[chunk].tolist(), strict=True):
            sketches[which].increment(fingerprints[key])
        clock.advance(1.0)
        if second == 1:
            start_bytes, start_calls = await redis_counters(client)
            start_trips = CountingLink.round_trips
        for _, step in exchanges:
            began = time.process_time()
            await step()
            if second >= 1:
                cpu += time.process_time() - began
        console.log(f"{design} N={routers}: second {second + 1}/{seconds}")
    end_bytes, end_calls = await redis_counters(client)
    trips = CountingLink.round_trips - start_trips
    measured = seconds - 1
    k = max(1, math.ceil(0.01 * len(fingerprints)))
    recall = recall_of(design, sketches[0], fingerprints, keys, k)
    await client.flushall()
    await client.aclose()
    for link in links:
        await link.close()
    return Row(
        design,
        routers,
        per_router,
        (end_bytes - start_bytes) / measured,
        trips / measured,
        (end_calls - start_calls) / measured,
        1000 * cpu / measured / routers,
        recall,
        k,
        measured,
    )


def recall_of(
    design: str, sketch: FrequencySketch, fingerprints: dict[int, int], keys: np.ndarray, k: int
) -> float:
    """The share of the true top k that the fleet view's top k holds. Keys tied with the
    k-th key's exact count are all "top" (a run's exact counts tie at the boundary)."""
    values, counts = np.unique(keys, return_counts=True)
    exact = dict(zip(values.tolist(), counts.tolist(), strict=True))
    boundary = sorted(counts.tolist(), reverse=True)[k - 1]
    if design == "shared":
        by_member = {fp >> 64: key for key, fp in fingerprints.items()}
        ranked = sorted(sketch.fleet_counts().items(), key=lambda item: -item[1])[:k]
        predicted = [by_member[member] for member, _ in ranked if member in by_member]
    else:
        tie = np.random.default_rng(3).random(len(fingerprints))
        scored = [
            (sketch.estimate(fp) + sketch.remote_estimate(fp), tie[index], key)
            for index, (key, fp) in enumerate(fingerprints.items())
        ]
        scored.sort(reverse=True)
        predicted = [key for _, _, key in scored[:k]]
    return sum(1 for key in predicted if exact[key] >= boundary) / k


def table(rows: list[Row], workload: str) -> Table:
    out = Table(title=f"fleet hot-key view, {workload} workload (per simulated second)")
    for column in (
        "routers",
        "design",
        "Redis bytes/s",
        "round trips/s",
        "commands/s (in scripts too)",
        "CPU ms/router/s",
        "top-1% recall",
        "bytes ratio",
    ):
        out.add_column(column, justify="right")
    reference = {row.routers: row.bytes_per_s for row in rows if row.design == "all_to_all"}
    for row in rows:
        ratio = reference.get(row.routers)
        lower = (
            "reference"
            if ratio is None or row.design == "all_to_all"
            else f"{ratio / row.bytes_per_s:,.1f}x lower"
        )
        out.add_row(
            str(row.routers),
            row.design,
            f"{row.bytes_per_s / 1e6:,.2f} MB",
            f"{row.round_trips_per_s:,.0f}",
            f"{row.commands_per_s:,.0f}",
            f"{row.cpu_ms_per_router_s:.2f}",
            f"{row.recall_top1:.3f} (k={row.top_k})",
            lower,
        )
    return out


async def limits_cost(redis: RedisProcess, requests: int) -> dict[str, float]:
    """Microseconds of one admission: the local bucket, and the fleet-wide limit (one
    EVALSHA, router/fleet_limits.py) one at a time and 100 at once."""
    tenants = TenantsConfig(default=TenantLimits(requests_per_s=1e9, tokens_per_min=10**12))
    local = TenantLimiter(tenants, 4)
    link = RedisLink(FleetConfig(redis_url=redis.url, name="bench-limits"), FakeClock(), str)
    limits = FleetLimits(link, local, local.limits_of)
    # Warm-up: open the connections a burst of 100 needs, ten at a time (a cold burst of a
    # hundred new connections can pass limits_timeout_s on a busy machine and be judged
    # locally: that is the fallback working, not the steady cost measured here).
    for _ in range(10):
        await asyncio.gather(*(limits.admit("acme", 0.0) for _ in range(10)))
    await limits.maintain()  # back to fleet mode if the warm-up tripped it
    limits.decided = {"fleet": 0, "local": 0}
    began = time.perf_counter()
    for _ in range(requests):
        local.admit("acme", 0.0)
    local_us = (time.perf_counter() - began) / requests * 1e6
    began = time.perf_counter()
    for _ in range(requests):  # the reference: a bare round trip of the same client
        await link.client.ping()
    ping_us = (time.perf_counter() - began) / requests * 1e6
    began = time.perf_counter()
    for _ in range(requests):
        await limits.admit("acme", 0.0)
    fleet_us = (time.perf_counter() - began) / requests * 1e6
    began = time.perf_counter()
    for _ in range(requests // 100):
        await asyncio.gather(*(limits.admit("acme", 0.0) for _ in range(100)))
    concurrent_us = (time.perf_counter() - began) / (requests // 100 * 100) * 1e6
    await link.close()
    return {
        "ping_us": ping_us,
        "local_us": local_us,
        "fleet_us": fleet_us,
        "fleet_100_concurrent_us": concurrent_us,
        "judged_locally": limits.decided["local"],
    }


async def run(args: argparse.Namespace, console: Console) -> list[Row]:
    redis = RedisProcess()
    await redis.started()
    rows = []
    try:
        if args.limits:
            cost = await limits_cost(redis, args.limits)
            console.print(
                f"tenant limit per request: local bucket {cost['local_us']:.1f} us; fleet-wide "
                f"(one EVALSHA) {cost['fleet_us']:.0f} us one at a time, "
                f"{cost['fleet_100_concurrent_us']:.0f} us each 100 at once; a bare PING "
                f"{cost['ping_us']:.0f} us "
                f"({args.limits:,} admissions each; "
                f"{cost['judged_locally']:.0f} judged locally after a slow call)"
            )
        for routers in args.routers:
            total = routers * args.per_router * args.seconds
            keys = load_keys(args.workload, total, args.catalogue)
            for design in args.designs:
                rows.append(
                    await run_design(
                        design, routers, keys, args.per_router, args.seconds, redis, console
                    )
                )
    finally:
        redis.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hotcold bench fleet",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--routers", type=int, nargs="+", default=[2, 10, 50, 100])
    parser.add_argument("--designs", nargs="+", choices=DESIGNS, default=list(DESIGNS))
    parser.add_argument("--per-router", type=int, default=1000, help="requests/s per router")
    parser.add_argument("--seconds", type=int, default=6, help="simulated seconds (1 warm-up)")
    parser.add_argument(
        "--workload", choices=["iot", *REAL_TRACES], default="iot", help="key popularity"
    )
    parser.add_argument("--catalogue", type=int, default=50_000, help="iot: distinct questions")
    parser.add_argument(
        "--limits",
        type=int,
        default=5000,
        help="also time this many tenant-limit admissions, local vs fleet-wide (0: skip)",
    )
    args = parser.parse_args(argv)
    console = make_console()
    rows = asyncio.run(run(args, console))
    console.print(table(rows, args.workload))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"fleet-{args.workload}.json"
    path.write_text(json.dumps([asdict(row) for row in rows], indent=2))
    console.print(f"raw results: {path}")
    return 0
