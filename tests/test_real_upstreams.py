"""The cloud pool against real OpenAI-compatible servers that no one here wrote, installed
from PyPI by the test command: vLLM's router (``vllm-router``, Rust) in front of cloud stubs,
and ``transformers serve`` with the default model. Chat, streaming, embeddings where the
server has them, and one pool member killed and restarted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from hotcold.procs import ServiceProcess
from hotcold.serving import Server, free_port
from tests.support import wait_for
from tests.test_models import HI, async_sdk, start_router

pytestmark = pytest.mark.usefixtures("closes_at_test_end")  # the SDK clients, at each test's end

FAST_POOL = {
    "backoff": {"base_s": 0.005, "cap_s": 0.05},
    "breaker": {"failure_threshold": 1, "open_s": 0.2, "max_open_s": 0.5},
    "health": {"probe_interval_s": 0.1, "probe_timeout_s": 1.0},
}


class Peer:
    """A real server as a child process, ready when ``GET <url><health>`` answers 200."""

    def __init__(self, argv: list[str], port: int, log: Path, health: str = "/health") -> None:
        self.argv, self.port, self.log, self.health = argv, port, log, health
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Peer:
        with open(self.log, "ab") as output:
            self.proc = subprocess.Popen(
                self.argv, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    async def ready(self, timeout_s: float = 120.0) -> Peer:
        async def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited: {self.log.read_text()[-2000:]}")
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(
                        self.url + self.health, timeout=aiohttp.ClientTimeout(total=1)
                    ) as response,
                ):
                    return response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await wait_for(answers, timeout_s=timeout_s, interval_s=0.1, message=f"{self.argv[0]}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed (scripts/test installs it)"
    return found


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def make(argv: list[str], port: int, health: str = "/health") -> Peer:
        peer = Peer(argv, port, tmp_path / f"peer-{len(started)}.log", health)
        started.append(peer)
        return peer.start()

    yield make
    for peer in started:
        peer.kill()


def vllm_router(workers: list[str], port: int) -> list[str]:
    return [
        _tool("vllm-router"),
        *("--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin"),
        *("--worker-urls", *workers),
        *("--health-check-interval-secs", "1", "--prometheus-port", str(free_port())),
        *("--prometheus-host", "127.0.0.1", "--log-level", "warning"),
    ]


def _catalog(pool: dict[str, Any], *models: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"request_deadline_s": 60},
        "cloud": {"endpoints": []},
        "pools": {"real": {**FAST_POOL, **pool}},
        "models": {"catalog": [{"pool": "real", **model} for model in models]},
        "policy": {"pins": [{"route": "hot", "model": "*"}]},
    }


@pytest.mark.slow
async def test_vllm_router_in_front_of_stubs_with_a_member_killed_and_restarted(
    peers: Callable[..., Peer],
) -> None:
    fast = ("--ttft-ms", "5", "--tpot-ms", "1")
    stubs = [await ServiceProcess("cloud_stub", free_port(), *fast).started() for _ in range(2)]
    try:
        workers = [stub.url for stub in stubs]
        ports = [free_port(), free_port()]
        routers = [await peers(vllm_router(workers, port), port).ready() for port in ports]
        settings = _catalog(
            {"endpoints": [router.url for router in routers], "health_path": "/health"},
            {"name": "chat", "upstream_model": "meta-llama/Llama-3.1-8B-Instruct"},
            {"name": "embed", "apis": ["embeddings"], "upstream_model": "BAAI/bge-m3"},
        )
        front = await start_router(settings)
        client = async_sdk(front)
        try:
            answer = await client.chat.completions.create(
                model="chat", messages=HI, max_tokens=4, temperature=0
            )
            assert answer.model == "chat" and answer.choices[0].message.content
            chunks = [
                chunk
                async for chunk in await client.chat.completions.create(
                    model="chat", messages=HI, max_tokens=4, stream=True, temperature=0.5
                )
            ]
            assert {chunk.model for chunk in chunks} == {"chat"}
            first = await client.embeddings.with_raw_response.create(model="embed", input="a")
            again = await client.embeddings.with_raw_response.create(model="embed", input="a")
            assert first.parse().model == "embed" and len(first.parse().data[0].embedding) > 0
            assert again.headers["X-Cache"] == "hit"

            routers[0].kill()  # a member of the pool dies: every request is still answered
            for index in range(8):
                reply = await client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": f"k{index}"}]
                )
                assert reply.model == "chat"
            async with aiohttp.ClientSession() as session:

                async def state_of_first() -> str:
                    async with session.get(front.url + "/readyz") as response:
                        pools = (await response.json())["cloud"]["pools"]["real"]["endpoints"]
                        return str(pools[0]["state"])

                await wait_for(
                    lambda: _is(state_of_first, "open"), message="the dead member ejected"
                )
                peers(vllm_router(workers, ports[0]), ports[0])  # back on its port
                await wait_for(
                    lambda: _is(state_of_first, "closed"),
                    timeout_s=30,
                    message="the restarted member probed back in on /health",
                )
        finally:
            await front.close()
    finally:
        for stub in stubs:
            stub.stop()


async def _is(probe: Callable[[], Any], expected: str) -> bool:
    return bool(await probe() == expected)


@pytest.mark.slow
@pytest.mark.model
async def test_transformers_serve_with_the_default_model(peers: Callable[..., Peer]) -> None:
    from edge_node.weights import resolve_model

    model_dir = str(resolve_model("default"))
    port = free_port()
    server = peers(
        [
            _tool("transformers"),
            "serve",
            model_dir,
            *("--host", "127.0.0.1", "--port", str(port), "--device", "cpu"),
        ],
        port,
    )
    await server.ready(timeout_s=240)
    settings = _catalog(
        {"endpoints": [server.url], "health_path": "/health"},
        {"name": "smol", "aliases": ["gpt-4o-mini"], "upstream_model": model_dir},
    )
    front: Server = await start_router(settings)
    client = async_sdk(front)
    try:
        question = [{"role": "user", "content": "What is the capital of France?"}]
        # The stream first, computed (not served from the cache): transformers serve ends it
        # without [DONE], and the router must still capture and cache the whole answer.
        chunks = [
            chunk
            async for chunk in await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=question,
                max_tokens=12,
                temperature=0,
                stream=True,
                extra_headers={"Cache-Control": "no-cache"},
            )
        ]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "Paris" in text and {chunk.model for chunk in chunks} == {"smol"}
        raw = await client.chat.completions.with_raw_response.create(
            model="smol", messages=question, max_tokens=12, temperature=0
        )
        assert raw.headers["X-Cache"] == "hit"  # the captured stream, served plain
        answer = raw.parse()
        assert answer.model == "smol" and "Paris" in (answer.choices[0].message.content or "")
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-9", messages=question)
    finally:
        await front.close()
