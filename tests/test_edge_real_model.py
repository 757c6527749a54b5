"""The real default model (SmolLM2-135M-Instruct, NF4 on CPU) end to end: fetched and
converted once, it answers Paris, and through the router a repeated deterministic request is
computed by the edge node once and then served from the cache."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from edge_node.app import create_app
from edge_node.config import EdgeNodeConfig
from edge_node.model import LoadedModel, linear_module_types, load
from edge_node.weights import resolve_model
from hotcold.serving import Server
from tests.conftest import RouterFactory, StubFactory

pytestmark = pytest.mark.model
CAPITAL = {
    "model": "default",
    "temperature": 0,
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}


@pytest.fixture(scope="module")
def real_model() -> LoadedModel:
    if os.environ.get("HOTCOLD_SKIP_MODEL_TESTS"):
        pytest.skip("HOTCOLD_SKIP_MODEL_TESTS is set")
    path: Path = resolve_model("default")
    return load(path, device="cpu", max_batch=8, max_context=1024)


@pytest.fixture
async def edge(real_model: LoadedModel) -> AsyncIterator[Server]:
    server = Server(create_app(EdgeNodeConfig(max_context=1024), real_model), "127.0.0.1", 0)
    await server.start()
    yield server
    await server.close()


def test_default_model_is_4_bit(real_model: LoadedModel) -> None:
    assert "Linear4bit" in linear_module_types(real_model.model)
    assert real_model.footprint_bytes < 200 * 1024 * 1024  # ~110 MB in NF4 vs ~257 MB bf16


async def test_edge_node_answers_paris(edge: Server) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(edge.url + "/v1/chat/completions", json=CAPITAL) as response:
            assert response.status == 200
            answer = (await response.json())["choices"][0]["message"]["content"]
        async with session.get(edge.url + "/healthz") as response:
            health = await response.json()
    assert "Paris" in answer
    assert health["quantization"] == "nf4" and health["model"] == "SmolLM2-135M-Instruct"


async def test_through_the_router_edge_computes_once_then_cache(
    edge: Server, stub: StubFactory, router: RouterFactory
) -> None:
    cloud = await stub()
    served = []
    # Strict admission so the first sighting is not cached: the second is computed by the
    # edge node (hot), the rest come from the cache. The edge is unjudged here (no gray
    # release, cost first): this test is about the real model behind the router, not about
    # how it earns its traffic (tests/test_release.py).
    unjudged = {"release": {"enabled": False}, "latency": {"cost_first": True}}
    front = await router(
        [cloud.url],
        edge={"endpoints": [edge.url], "timeout_s": 60, **unjudged},
        server={"request_deadline_s": 60},
        cache={"min_frequency": 2},
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            async with session.post(front.url + "/v1/chat/completions", json=CAPITAL) as response:
                assert response.status == 200
                document = await response.json()
                served.append((response.headers["X-Served-By"], response.headers["X-Cache"]))
                if response.headers["X-Served-By"] in ("edge", "cache"):
                    assert "Paris" in document["choices"][0]["message"]["content"]
    # First sighting goes to the cloud (a one-off until it recurs); then the edge node
    # computes it once, and the cache serves it from then on.
    assert served == [("cloud", "miss"), ("edge", "miss"), ("cache", "hit"), ("cache", "hit")]
