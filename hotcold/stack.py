"""Bring up the whole system on this machine: cloud stubs, (the edge node), the router.

Embedded defaults: no config file and no Redis are needed. Preferred ports are used when
free, else free ones are picked and shown, so ``hotcold up`` works next to whatever is
already running.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from hotcold.procs import ServiceProcess
from hotcold.serving import free_port

ROUTER_PORT = 8080
FIRST_STUB_PORT = 9001


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


@dataclass
class Stack:
    options: StackOptions
    stubs: list[ServiceProcess] = field(default_factory=list)
    router: ServiceProcess | None = None

    @property
    def services(self) -> list[tuple[str, ServiceProcess]]:
        named = [(f"cloud stub {i + 1}", stub) for i, stub in enumerate(self.stubs)]
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
        for stub in self.stubs:
            await stub.wait_ready()
        args: list[str] = []
        for stub in self.stubs:
            args += ["--cloud-endpoint", stub.url]
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
