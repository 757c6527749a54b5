"""Live API keys and tenant limits: made and revoked through one router's admin API, in effect
on the other within a second (real Redis, real routers); a single router keeps them in its
config file; a reload applies the tenants section without a restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from hotcold.redis_process import RedisProcess
from hotcold.serving import Server
from hotcold_app import keys_client
from hotcold_app.cli import build_parser
from router import create_app
from router.config import load_layers
from router.tenants import key_digest
from tests.conftest import RouterFactory, StubFactory
from tests.support import wait_for
from tests.test_fleet import admin, fleet_of_two

Redis = Callable[..., RedisProcess]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def status_with(server: Server, key: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.url + "/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {key}"},
        ) as response,
    ):
        await response.read()
        return response.status


async def test_a_key_made_on_one_router_works_on_the_other_within_a_second_and_revoked_fails(
    stub: StubFactory, router: RouterFactory, redis_servers: Redis
) -> None:
    redis = await redis_servers().started()
    first, second = await fleet_of_two(stub, router, redis)
    status, _, made = await admin(
        first.url, "POST", "/admin/keys", json={"tenant": "acme", "name": "thermostats"}
    )
    assert status == 201, made
    key, ident = made["key"], made["id"]
    assert made["tenant"] == "acme" and "sha256" not in made

    # On the other router within 1 s: the key is accepted and any other key is refused
    # (so it is out of open mode, where every request passes).
    async def works_on(server: Server) -> bool:
        return await status_with(server, key) == 200 and await status_with(server, "x") == 401

    await wait_for(lambda: works_on(second), timeout_s=1.0, message="the key on router b")
    assert await works_on(first)

    # Listed on both, never with the key or its hash.
    for server in (first, second):
        _, _, listing = await admin(server.url, path="/admin/keys")
        assert [k["id"] for k in listing["keys"]] == [ident]
        assert key not in str(listing) and key_digest(key) not in str(listing)
        assert listing["stored_in"] == "fleet"

    status, _, revoked = await admin(second.url, "DELETE", f"/admin/keys/{ident}")
    assert status == 200 and revoked["revoked"]["id"] == ident

    async def refused_on_both() -> bool:
        return all([await status_with(server, key) == 401 for server in (first, second)])

    await wait_for(refused_on_both, timeout_s=1.0, message="the key refused on both routers")
    status, _, missing = await admin(first.url, "DELETE", f"/admin/keys/{ident}")
    assert status == 404 and missing["error"]["code"] == "key_not_found"


async def test_tenant_limits_set_on_one_router_apply_on_the_other(
    stub: StubFactory, router: RouterFactory, redis_servers: Redis
) -> None:
    redis = await redis_servers().started()
    first, second = await fleet_of_two(stub, router, redis)
    limits = {"requests_per_s": 0.01, "burst": 1}
    status, _, document = await admin(first.url, "PUT", "/admin/tenants/slow/limits", json=limits)
    assert status == 200 and document["overrides"]["slow"]["requests_per_s"] == 0.01

    async def limited_on_second() -> bool:
        _, _, tenants = await admin(second.url, path="/admin/tenants")
        return "slow" in tenants["live"]

    await wait_for(limited_on_second, timeout_s=5.0, message="the limits on router b")
    statuses = []
    async with aiohttp.ClientSession() as session:
        for server in (first, second):
            async with session.post(
                server.url + "/v1/chat/completions", json=CHAT, headers={"X-Tenant": "slow"}
            ) as response:
                statuses.append(response.status)
    assert statuses == [200, 429]  # one request per 100 s, fleet-wide

    status, _, bad = await admin(
        first.url, "PUT", "/admin/tenants/slow/limits", json={"requests_per_s": -1}
    )
    assert status == 422 and "requests_per_s" in bad["error"]["message"]
    status, _, document = await admin(first.url, "DELETE", "/admin/tenants/slow/limits")
    assert status == 200 and "slow" not in document["overrides"]


@contextlib.asynccontextmanager
async def router_on_file(
    path: Path, environ: dict[str, str] | None = None
) -> AsyncIterator[Server]:
    """A single router started from the config file at ``path`` (its live keys go there)."""
    layers = load_layers(path, environ=environ or {})
    server = Server(create_app(layers.build(), layers=layers), "127.0.0.1", 0)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def file_router(tmp_path: Path, stub: StubFactory) -> AsyncIterator[tuple[Server, Path]]:
    cloud = await stub()
    path = tmp_path / "router.yaml"
    path.write_text(
        yaml.safe_dump({"cloud": {"endpoints": [cloud.url]}, "admin": {"watch_config_s": 0}})
    )
    async with router_on_file(path) as server:
        yield server, path


async def test_a_single_router_keeps_its_keys_in_its_config_file(
    file_router: tuple[Server, Path],
) -> None:
    server, path = file_router
    status, _, made = await admin(server.url, "POST", "/admin/keys", json={"tenant": "acme"})
    assert status == 201, made
    stored: Any = yaml.safe_load(path.read_text())
    assert stored["tenants"]["api_keys"] == [{"tenant": "acme", "sha256": key_digest(made["key"])}]
    assert stored["tenants"]["require_keys"] is True
    assert await status_with(server, made["key"]) == 200
    assert await status_with(server, "hc_not_a_key") == 401

    status, _, _ = await admin(server.url, "PUT", "/admin/tenants/acme/limits", json={"burst": 3})
    assert status == 200
    assert yaml.safe_load(path.read_text())["tenants"]["overrides"] == {"acme": {"burst": 3}}

    status, _, _ = await admin(server.url, "DELETE", f"/admin/keys/{made['id']}")
    assert status == 200
    assert yaml.safe_load(path.read_text())["tenants"]["api_keys"] == []
    assert await status_with(server, made["key"]) == 401  # no keys left, and still closed


async def test_a_reload_applies_tenant_limits_without_a_restart(
    file_router: tuple[Server, Path],
) -> None:
    server, path = file_router
    document: Any = yaml.safe_load(path.read_text())
    document["tenants"] = {"overrides": {"slow": {"requests_per_s": 0.01, "burst": 1}}}
    path.write_text(yaml.safe_dump(document))
    status, _, answer = await admin(server.url, "POST", "/admin/reload")
    assert status == 200 and answer["needs_restart"] == [], answer
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(2):
            async with session.post(
                server.url + "/v1/chat/completions", json=CHAT, headers={"X-Tenant": "slow"}
            ) as response:
                statuses.append(response.status)
    assert statuses == [200, 429]


async def test_hotcold_key_is_a_client_of_the_admin_api(
    file_router: tuple[Server, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = file_router

    async def hotcold_key(*argv: str) -> tuple[int, str]:
        parser = build_parser()
        args = parser.parse_args(["key", *argv, "--router", server.url])
        code = await asyncio.to_thread(keys_client.run, args)
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    code, out = await hotcold_key("new", "--tenant", "acme", "--name", "sensors")
    assert code == 0, out
    secret = out.split()[out.split().index("once):") + 1]
    assert await status_with(server, secret) == 200
    code, out = await hotcold_key("list")
    ident = key_digest(secret)[:12]
    assert code == 0 and ident in out and "sensors" in out and secret not in out
    code, out = await hotcold_key("limits", "acme", "--requests-per-s", "5")
    assert code == 0 and '"requests_per_s": 5.0' in out
    code, out = await hotcold_key("revoke", ident)
    assert code == 0 and await status_with(server, secret) == 401
    code, out = await hotcold_key("revoke", ident)
    assert code == 1 and "404" in out


async def test_the_operators_comments_survive_a_key_made_through_the_api(
    tmp_path: Path, stub: StubFactory
) -> None:
    cloud = await stub()
    path = tmp_path / "router.yaml"
    path.write_text(
        "# the gateway at the north gate\n"
        "cloud:\n"
        f"  endpoints: ['{cloud.url}']   # the rented pool\n"
        "admin:\n"
        "  watch_config_s: 0\n"
        "tenants:\n"
        "  # limits agreed with each customer\n"
        "  overrides:\n"
        "    acme: {burst: 5}\n"
    )
    async with router_on_file(path) as server:
        status, _, made = await admin(server.url, "POST", "/admin/keys", json={"tenant": "acme"})
        assert status == 201, made
    text = path.read_text()
    for comment in ("# the gateway at the north gate", "# the rented pool", "# limits agreed"):
        assert comment in text, text
    stored: Any = yaml.safe_load(text)
    assert stored["tenants"]["overrides"] == {"acme": {"burst": 5}}
    assert stored["tenants"]["api_keys"] == [{"tenant": "acme", "sha256": key_digest(made["key"])}]


async def test_a_config_file_that_cannot_be_written_is_a_503_with_the_reason(
    tmp_path: Path, stub: StubFactory
) -> None:
    """Its directory is gone (what root meets too, unlike a read-only directory): the admin
    API says why in the OpenAI error shape instead of an internal error."""
    cloud = await stub()
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "router.yaml"
    path.write_text(
        yaml.safe_dump({"cloud": {"endpoints": [cloud.url]}, "admin": {"watch_config_s": 0}})
    )
    async with router_on_file(path) as server:
        path.unlink()
        folder.rmdir()
        status, _, answer = await admin(server.url, "POST", "/admin/keys", json={"tenant": "a"})
    assert status == 503, answer
    assert "not writable" in answer["error"]["message"], answer


async def test_names_yaml_1_1_reads_as_booleans_leave_a_file_the_router_starts_with(
    file_router: tuple[Server, Path],
) -> None:
    server, path = file_router
    status, _, made = await admin(
        server.url, "POST", "/admin/keys", json={"tenant": "yes", "name": "off"}
    )
    assert status == 201, made
    status, _, _ = await admin(server.url, "PUT", "/admin/tenants/no/limits", json={"burst": 2})
    assert status == 200
    load_layers(path, environ={}).build()  # a restart reads the file
    stored: Any = yaml.safe_load(path.read_text())
    assert stored["tenants"]["api_keys"][0]["tenant"] == "yes"
    assert stored["tenants"]["api_keys"][0]["name"] == "off"
    assert stored["tenants"]["overrides"] == {"no": {"burst": 2}}
    assert await status_with(server, made["key"]) == 200


async def test_a_file_the_reload_refuses_is_put_back_as_it_was(
    file_router: tuple[Server, Path],
) -> None:
    server, path = file_router
    broken = path.read_text() + "cache:\n  entries: -5   # a typo the operator has not reloaded\n"
    path.write_text(broken)
    status, _, answer = await admin(server.url, "POST", "/admin/keys", json={"tenant": "acme"})
    assert status == 503, answer
    assert "put back" in answer["error"]["message"]
    assert path.read_text() == broken


async def test_a_file_of_comments_alone_keeps_them(tmp_path: Path, stub: StubFactory) -> None:
    cloud = await stub()
    path = tmp_path / "router.yaml"
    path.write_text("# nothing set yet: every default\n# see configs/router.yaml\n")
    async with router_on_file(path, {"HOTCOLD_CLOUD_ENDPOINTS": cloud.url}) as server:
        status, _, made = await admin(server.url, "POST", "/admin/keys", json={"tenant": "a"})
        assert status == 201, made
    text = path.read_text()
    assert text.startswith("# nothing set yet: every default\n# see configs/router.yaml\n")
    assert yaml.safe_load(text)["tenants"]["api_keys"][0]["tenant"] == "a"
