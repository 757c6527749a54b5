"""Operators change the policy by editing the config file: SIGHUP, a file watch or
POST /admin/reload re-reads it; a bad file keeps the last good policy and says why."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from hotcold.procs import ServiceProcess
from hotcold.serving import Server
from router import create_app
from router.config import load_layers
from tests.conftest import StubFactory
from tests.support import metric, scrape, wait_for


def write_config(path: Path, cloud: str, max_threshold: float, **extra: Any) -> None:
    document: dict[str, Any] = {
        "cloud": {"endpoints": [cloud]},
        "policy": {"threshold": {"max": max_threshold}},
        "admin": {"watch_config_s": 0.05},
    }
    for section, values in extra.items():
        document[section] = {**document.get(section, {}), **values}
    path.write_text(yaml.safe_dump(document))


async def get_json(url: str, method: str = "GET") -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, url) as response:
        return response.status, await response.json()


async def threshold_max(url: str) -> float:
    _, document = await get_json(url + "/admin/policy")
    return float(document["policy"]["values"]["threshold"]["max"])


@pytest.fixture
async def file_router(tmp_path: Path, stub: StubFactory) -> AsyncIterator[tuple[Server, Path, str]]:
    cloud = await stub()
    path = tmp_path / "router.yaml"
    write_config(path, cloud.url, 10)
    layers = load_layers(path, environ={})
    server = Server(create_app(layers.build(), layers=layers), "127.0.0.1", 0)
    await server.start()
    yield server, path, cloud.url
    await server.close()


async def test_file_edit_is_picked_up_and_a_bad_file_keeps_the_last_good(
    file_router: tuple[Server, Path, str],
) -> None:
    server, path, cloud = file_router
    assert await threshold_max(server.url) == 10
    write_config(path, cloud, 7)
    await wait_for(lambda: _max_is(server.url, 7), timeout_s=10, message="the edit applied")
    _, document = await get_json(server.url + "/admin/policy")
    assert document["policy"]["sources"]["threshold.max"]["layer"] == f"file {path}"
    assert document["policy"]["sources"]["threshold.min"]["layer"] == "default"
    assert document["threshold"]["bounds"] == [2.0, 7.0]

    path.write_text("policy: [this is: not: valid yaml")
    await wait_for(lambda: _reloads(server.url, "failed", 1), timeout_s=10, message="refused")
    write_config(path, cloud, -3)  # valid YAML, invalid value
    await wait_for(lambda: _reloads(server.url, "failed", 2), timeout_s=10, message="refused")
    assert await threshold_max(server.url) == 7  # the last good policy
    status, answer = await get_json(server.url + "/admin/reload", "POST")
    assert status == 422 and "policy.threshold.max" in answer["message"]


async def test_reload_names_what_needs_a_restart(file_router: tuple[Server, Path, str]) -> None:
    server, path, cloud = file_router
    write_config(path, cloud, 9, cache={"entries": 5}, admin={"watch_config_s": 0})
    status, answer = await get_json(server.url + "/admin/reload", "POST")
    assert status == 200, answer
    assert answer["needs_restart"] == ["admin.watch_config_s", "cache.entries"]
    assert answer["policy"]["values"]["threshold"]["max"] == 9


async def _max_is(url: str, value: float) -> bool:
    return await threshold_max(url) == value


async def _reloads(url: str, result: str, at_least: int) -> bool:
    return metric(await scrape(url), "hotcold_config_reloads_total", result=result) >= at_least


async def test_sighup_reloads_a_running_router_process(
    tmp_path: Path, stub: StubFactory, processes: Callable[..., ServiceProcess]
) -> None:
    cloud = await stub()
    path = tmp_path / "router.yaml"
    write_config(path, cloud.url, 12, admin={"watch_config_s": 0})  # SIGHUP only
    router = await processes("router", "--config", str(path)).started()
    assert await threshold_max(router.url) == 12
    write_config(path, cloud.url, 5, admin={"watch_config_s": 0})
    assert router.proc is not None
    router.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: _max_is(router.url, 5), timeout_s=10, message="SIGHUP reload")
    assert router.alive()
