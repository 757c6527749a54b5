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
        binary = redis_server_path()
        if binary is None:
            raise RedisUnavailable("redis-server is not installed (apt install redis-server)")
        self.binary = binary
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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
