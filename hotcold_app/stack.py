"""Bring up the whole system on this machine: cloud stubs, (the edge node), the router.

Embedded defaults: no config file and no Redis are needed. Preferred ports are used when
free, else free ones are picked and shown, so ``hotcold up`` works next to whatever is
already running.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotcold.procs import ServiceProcess
from hotcold.serving import free_port

ROUTER_PORT = 8080
EDGE_PORT = 8081
FIRST_STUB_PORT = 9001


def edge_available() -> bool:
    """The edge node needs the ``edge`` extra (torch, transformers, bitsandbytes)."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("torch", "transformers", "bitsandbytes")
    )


def prepare_model(model: str) -> None:
    """Fetch and convert the default model in the foreground, so its progress shows."""
    result = subprocess.run(
        [sys.executable, "-m", "edge_node.weights", model], stdout=subprocess.DEVNULL, check=False
    )
    if result.returncode != 0:
        raise RuntimeError("the edge model could not be prepared (see the messages above)")


def port_or_free(preferred: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


@dataclass
class StackOptions:
    stubs: int = 2
    router_port: int = ROUTER_PORT
    stub_ttft_ms: float = 120.0  # a cloud GPU round trip: network + queue + prefill
    stub_tpot_ms: float = 8.0
    log_dir: Path = Path("hotcold-logs")
    router_args: tuple[str, ...] = ()
    edge: bool = True  # start the 4-bit edge node (when the edge extra is installed)
    edge_model: str = "default"


@dataclass
class Stack:
    options: StackOptions
    stubs: list[ServiceProcess] = field(default_factory=list)
    edge: ServiceProcess | None = None
    router: ServiceProcess | None = None
    policy: dict[str, Any] = field(default_factory=dict)  # the router's, after a demo run
    dashboard: dict[str, Any] = field(default_factory=dict)  # its dashboard data, likewise

    @property
    def services(self) -> list[tuple[str, ServiceProcess]]:
        named = [(f"cloud stub {i + 1}", stub) for i, stub in enumerate(self.stubs)]
        if self.edge is not None:
            named.append(("edge node (4-bit)", self.edge))
        if self.router is not None:
            named.append(("router", self.router))
        return named

    async def start(self) -> None:
        options = self.options
        for index in range(options.stubs):
            stub = ServiceProcess(
                "cloud_stub",
                port_or_free(FIRST_STUB_PORT + index),
                "--ttft-ms",
                str(options.stub_ttft_ms),
                "--tpot-ms",
                str(options.stub_tpot_ms),
                "--model-name",
                f"cloud-gpu-{index + 1}",
                log_path=options.log_dir / f"cloud-stub-{index + 1}.log",
            )
            stub.start()
            self.stubs.append(stub)
        if options.edge:
            self.edge = ServiceProcess(
                "edge_node",
                port_or_free(EDGE_PORT),
                "--model",
                options.edge_model,
                log_path=options.log_dir / "edge-node.log",
            )
            self.edge.start()
        for stub in self.stubs:
            await stub.wait_ready()
        args: list[str] = []
        for stub in self.stubs:
            args += ["--cloud-endpoint", stub.url]
        if self.edge is not None:
            await self.edge.wait_ready(timeout_s=600)
            args += ["--edge-endpoint", self.edge.url]
        self.router = ServiceProcess(
            "router",
            port_or_free(options.router_port),
            *args,
            *options.router_args,
            log_path=options.log_dir / "router.log",
        )
        await self.router.started()

    def stop(self) -> None:
        for _, service in reversed(self.services):
            service.stop()
