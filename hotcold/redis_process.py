"""A real ``redis-server`` as a child process on a loopback port, for tests and benchmarks.

It can be killed (SIGKILL, like a machine dying) and started again on the same port, empty
(no persistence), which is the harshest thing a restart can do to the fleet's state.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from hotcold.procs import ChildProcess
from hotcold.serving import free_port


class RedisUnavailable(RuntimeError):
    pass


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def _require_redis_server() -> str:
    """The redis-server binary, which both a Redis and a Sentinel process run."""
    binary = redis_server_path()
    if binary is None:
        raise RedisUnavailable("redis-server is not installed (apt install redis-server)")
    return binary


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def self_signed(cls, directory: Path) -> TlsFiles:
        """A throwaway CA and a certificate for 127.0.0.1 it signed (needs openssl)."""
        ca_key, ca, key, csr, cert = (
            directory / name for name in ("ca.key", "ca.crt", "redis.key", "redis.csr", "redis.crt")
        )
        ext = directory / "san.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        commands = [
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=hotcold-test-ca", "-keyout", ca_key, "-out", ca],
            ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", key, "-out", csr],
            ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
             "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", cert],
        ]  # fmt: skip
        for command in commands:
            subprocess.run([str(part) for part in command], check=True, capture_output=True)
        return cls(cert, key, ca)


def _terminate(child: ChildProcess) -> None:
    """SIGTERM, then SIGKILL when it has not exited within 10 s."""
    if child.proc is not None and child.proc.poll() is None:
        child.proc.terminate()
        try:
            child.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


class RedisProcess(ChildProcess):
    def __init__(
        self,
        port: int | None = None,
        *,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
        workdir: Path | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.binary = _require_redis_server()
        self.port = port or free_port()
        self.password = password
        self.extra_args = extra_args
        self.tls = tls
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="hotcold-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}?ssl_ca_certs={self.tls.ca}"
        return f"redis://{auth}127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--logfile", str(self.workdir / f"redis-{self.port}.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls is not None:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += [
                "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        self.proc = subprocess.Popen(
            [*args, *self.extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def client(self) -> Redis:
        return Redis.from_url(self.url)

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        client = self.client()
        try:
            while True:
                try:
                    if await client.ping():
                        return
                except (RedisError, OSError):
                    pass
                if self.proc is not None and self.proc.poll() is not None:
                    raise RedisUnavailable(f"redis-server exited with {self.proc.returncode}")
                if time.monotonic() > deadline:
                    raise RedisUnavailable(f"redis-server not ready on {self.port} in {timeout_s}s")
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def started(self) -> RedisProcess:
        self.start()
        await self.wait_ready()
        return self

    def stop(self) -> None:
        _terminate(self)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class SentinelProcess(ChildProcess):
    """A Redis Sentinel (``redis-server <conf> --sentinel``) watching one master, on a
    loopback port, tuned to notice a dead master fast (``down_after_ms``) for tests."""

    def __init__(
        self,
        master_port: int,
        *,
        service: str = "hotcold",
        quorum: int = 2,
        down_after_ms: int = 300,
        failover_timeout_ms: int = 3000,
        port: int | None = None,
    ) -> None:
        self.binary = _require_redis_server()
        self.master_port = master_port
        self.service = service
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.port = port or free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="hotcold-sentinel-"))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        # Sentinel rewrites its config file (what it learns): one file per sentinel.
        config = self.workdir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"logfile {self.workdir / 'sentinel.log'}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.service} 1\n"
        )
        self.proc = subprocess.Popen(
            [self.binary, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.port)

    async def master_port_now(self) -> int | None:
        """The master's port as this sentinel reports it (None: it cannot be asked)."""
        client = self.client()
        try:
            command = ("SENTINEL", "get-master-addr-by-name", self.service)
            reply = await client.execute_command(*command)  # type: ignore[no-untyped-call]
            return int(reply[1]) if reply else None
        except (RedisError, OSError):
            return None
        finally:
            await client.aclose()

    async def knows(self, sentinels: int, replicas: int) -> bool:
        """True when it has found this many other sentinels and healthy replicas (a
        failover needs both: a quorum to agree and a replica to promote)."""
        client = self.client()
        try:
            peers = await client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "sentinels", self.service
            )
            found = await client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "replicas", self.service
            )
        except (RedisError, OSError):
            return False
        finally:
            await client.aclose()
        healthy = [
            r for r in found if b"s_down" not in _flags(r) and b"disconnected" not in _flags(r)
        ]
        return len(peers) >= sentinels and len(healthy) >= replicas

    def stop(self) -> None:
        _terminate(self)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _flags(entry: object) -> bytes:
    """The ``flags`` of one SENTINEL replicas entry (a flat list or a dict, by protocol)."""
    if isinstance(entry, dict):
        value = entry.get(b"flags") or entry.get("flags") or b""
        return value if isinstance(value, bytes) else str(value).encode()
    if isinstance(entry, list):
        pairs = dict(zip(entry[::2], entry[1::2], strict=False))
        value = pairs.get(b"flags", b"")
        return value if isinstance(value, bytes) else str(value).encode()
    return b""
