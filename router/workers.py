"""``server.workers`` > 1: several router processes on one port.

Each worker is a whole router (``python -m router`` with the same arguments) that binds the
port with SO_REUSEPORT; the kernel spreads new connections across them, and a kept-alive
connection stays with the worker that accepted it. This process only supervises: it forwards
SIGTERM, SIGINT and SIGHUP (reload) to every worker, restarts a worker that dies, and gives up
when one fails at start (a bad port, a config it cannot load).

What is shared and what is not: with ``fleet.redis_url`` the workers are members of one fleet,
so the frequency sketch, the threshold, the gray release and tenant limits are the fleet's
(the same machinery as several routers). The response cache is each worker's own, so a key is
computed once per worker before all of them hit, and ``cache.entries`` holds per worker; each
worker answers ``/metrics``, ``/admin`` and the dashboard with its own view. docs/benchmarks.md
measures what the second process gains on two cores and when it pays.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

WORKER_ENV = "HOTCOLD_WORKER"  # set in a worker's environment: its index
START_GRACE_S = 5.0  # a worker that fails this soon after starting stops the whole group
POLL_S = 0.5

log = logging.getLogger("hotcold.router")


def worker_index() -> int | None:
    """This process's index when it is a worker of a supervisor, else None."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value else None


class _Worker:
    def __init__(self, index: int, argv: list[str]) -> None:
        self.index = index
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", *argv],
            env={**os.environ, WORKER_ENV: str(index)},
        )


def supervise(argv: list[str], count: int) -> int:
    """Run ``count`` workers until SIGTERM or SIGINT; the exit status is the worst of theirs."""
    workers = [_Worker(index, argv) for index in range(count)]
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    log.info("%d workers on one port (pids %s)", count, [w.proc.pid for w in workers])
    status = 0
    while True:
        for position, worker in enumerate(workers):
            code = worker.proc.poll()
            if code is None or stopping:
                continue
            if time.monotonic() - worker.started < START_GRACE_S:
                log.error("worker %d failed at start (exit %d): stopping", worker.index, code)
                status = code or 1
                forward(signal.SIGTERM, None)
                break
            log.warning("worker %d exited (%d): starting it again", worker.index, code)
            workers[position] = _Worker(worker.index, argv)
        if stopping and all(worker.proc.poll() is not None for worker in workers):
            break
        time.sleep(POLL_S)
    codes = [worker.proc.returncode for worker in workers]
    return status or max((abs(code) for code in codes), default=0)
