"""Services the benchmarks start: an instant cloud stub and a router in front of it."""

from __future__ import annotations

from pathlib import Path

from hotcold.procs import ServiceProcess
from hotcold.serving import free_port

LOGS = Path("bench-results/logs")


def instant_stub_and_router(name: str, *router_args: str) -> tuple[ServiceProcess, ServiceProcess]:
    """A stub that answers at once (no simulated GPU time) with room for any load, and a
    router whose cloud pool is that stub. Start both with ``await x.started()``."""
    stub = ServiceProcess(
        "cloud_stub",
        free_port(),
        "--ttft-ms",
        "0",
        "--tpot-ms",
        "0",
        "--max-concurrency",
        "4096",
        "--max-queue",
        "4096",
        log_path=LOGS / f"{name}-stub.log",
    )
    router = ServiceProcess(
        "router",
        free_port(),
        "--cloud-endpoint",
        stub.url,
        "--log-level",
        "WARNING",
        *router_args,
        log_path=LOGS / f"{name}-router.log",
    )
    return stub, router
