"""Start the services as child processes and know when they are ready.

Used by ``hotcold up``/``demo``, the benchmarks and the tests that need a server they can
kill with SIGKILL like a machine dying.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


class ServiceStartError(RuntimeError):
    pass


def die_with_parent() -> Callable[[], None] | None:
    """A ``Popen(preexec_fn=...)`` for a single-threaded parent (a benchmark): the child
    gets SIGTERM when the parent dies, even by SIGKILL, so no server outlives its benchmark.
    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere None. The C function is looked up
    here, in the parent; the child only calls it, then checks that its parent is still the
    one that started it (one that died before the call would never signal). Not for a
    parent with threads: ``preexec_fn`` runs between fork and exec, where another thread's
    lock can deadlock the child; and the signal comes when the parent *thread* ends, so
    call ``Popen`` from the main thread."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the parent is already gone
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


async def is_up(url: str, timeout_s: float = 0.5) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                url + "/healthz", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


class ChildProcess:
    """A child process that can be asked whether it lives and killed like a machine dying."""

    proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies at once, like a machine losing power."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


class ServiceProcess(ChildProcess):
    """``python -m <module> --port <port> <args>`` as a child process."""

    def __init__(
        self,
        module: str,
        port: int,
        *args: str,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.module = module
        self.port = port
        self.args = args
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Start the process; again after it died (a test restarting a killed service on
        its port): the dead one's pipe and log handle are closed first."""
        self._close_handles()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        output: IO[bytes]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        else:
            # A nameless file, read back for a failure's message: a pipe no one reads would
            # stop the service once its 64 KiB filled.
            output = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._log_handle = output
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--port", str(self.port), *self.args],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not await is_up(self.url):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServiceStartError(
                    f"{self.module} exited with {self.proc.returncode}: {self._tail()}"
                )
            if time.monotonic() > deadline:
                raise ServiceStartError(f"{self.module} not ready on {self.url} in {timeout_s}s")
            await asyncio.sleep(0.05)

    async def started(self, timeout_s: float = 30.0) -> ServiceProcess:
        self.start()
        await self.wait_ready(timeout_s)
        return self

    def _tail(self) -> str:
        if self.log_path is not None and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-2000:]
        if self._log_handle is not None:
            self._log_handle.seek(0)
            return self._log_handle.read().decode(errors="replace")[-2000:]
        return ""

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait: a graceful stop. Returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate(10)
        self._close_handles()

    def _close_handles(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used (Linux /proc)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0
