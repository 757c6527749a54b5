"""What an operator types and reads: the ``hotcold`` command line (help, ``serve``, bad
flags), config validation that used to let mistakes through, and the admin policy API's
PUT (replace with the document GET returned) and PATCH (a JSON merge patch)."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config import DEFAULT_CLOUD_ENDPOINT, build_config, load_layers
from router.errors import ConfigError
from router.policy import effective_values, merge_patch, replacement_patch
from tests.conftest import RouterFactory, StubFactory
from tests.support import ROOT


def hotcold(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotcold_app.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_top_level_help_is_plain_text_and_lists_every_command() -> None:
    result = hotcold("--help")
    assert result.returncode == 0
    assert "``" not in result.stdout  # no raw reST
    for command in ("serve", "edge", "up", "demo", "key", "bench"):
        assert f"\n    {command} " in result.stdout, command


@pytest.mark.parametrize("command", ["up", "demo", "key"])
def test_every_flag_of_a_command_has_help_and_names_its_default(command: str) -> None:
    text = hotcold(command, "--help").stdout
    flags = [line for line in text.splitlines() if line.strip().startswith("--")]
    assert flags
    for line in flags:
        option = line.split()[0]
        block = text[text.index(line) :].split("\n  -")[0]
        assert len(block.split()) > 2, f"{option} has no help"
        if option not in ("--tenant", "--name"):  # no default: required, optional label
            assert "default" in block, f"{option} does not say its default"


def test_serve_help_is_the_routers_with_defaults() -> None:
    text = hotcold("serve", "--help").stdout
    assert text.startswith("usage: hotcold serve")
    assert "--config" in text and "default: 8080" in " ".join(text.split())


def test_an_unknown_log_level_is_a_clear_error_not_a_traceback() -> None:
    result = hotcold("serve", "--log-level", "LOUD")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "'logging.level' = 'LOUD'" in result.stderr and "DEBUG, INFO" in result.stderr
    assert build_config({"logging": {"level": "debug"}}).logging.level == "DEBUG"


def test_edge_node_flags_say_their_defaults() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_node", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    text = " ".join(result.stdout.split())
    for expected in ("TCP port (default: 8081)", "(default: 16)", "(default: bfloat16)"):
        assert expected in text


def test_every_doc_an_operator_is_pointed_to_exists() -> None:
    """Messages, units and manifests name docs by path: each one is in the repository."""
    named = set()
    for folder in ("hotcold", "hotcold_app", "router", "edge_node", "cloud_stub", "deploy"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in ("", ".py", ".service", ".yaml"):
                named |= set(re.findall(r"docs/[\w.-]+\.(?:md|json)", path.read_text()))
    assert "docs/deploy.md" in named
    assert sorted(name for name in named if not (ROOT / name).exists()) == []


def test_a_cloud_section_without_endpoints_keeps_the_default_endpoint() -> None:
    config = build_config({"cloud": {"breaker": {"failure_threshold": 5}}})
    assert config.cloud.endpoints == (DEFAULT_CLOUD_ENDPOINT,)
    assert config.cloud.breaker.failure_threshold == 5
    assert build_config({"cloud": {"endpoints": []}}).cloud.endpoints == ()  # said explicitly


def test_a_breaker_opening_longer_than_its_maximum_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"open_s \(100\) is above max_open_s \(5\)"):
        build_config({"cloud": {"breaker": {"open_s": 100, "max_open_s": 5}}})
    with pytest.raises(ConfigError, match="max_open_s"):
        build_config({"pools": {"gpu": {"breaker": {"open_s": 10, "max_open_s": 1}}}})


def test_the_reference_files_nulls_leave_the_secrets_the_environment_sets(tmp_path: Any) -> None:
    """docs/deploy.md: the config from --reference-config, the secrets in the environment."""
    reference = tmp_path / "router.yaml"
    reference.write_text((ROOT / "configs" / "router.yaml").read_text())
    environ = {"HOTCOLD_ADMIN_TOKEN": "a-token-of-16-chars", "HOTCOLD_PORT": "9000"}
    layers = load_layers(reference, environ=environ)
    config = layers.build()
    assert config.admin.token == "a-token-of-16-chars"
    assert layers.source_of(("admin", "token")) == "environment"
    assert config.server.port == 8080  # a value in the file still overrides the environment
    assert layers.source_of(("server", "port")) == f"file {reference}"
    alone = load_layers(reference, environ={}).build()
    assert alone.admin.token is None and alone.fleet.redis_url is None


BASE: dict[str, Any] = {
    "threshold": {"min": 2.0, "max": 17.0, "history_weight": 0.7},
    "capacity": build_config({}).policy.capacity.model_dump(),
    "pins": [],
    "cache": {"ttl_s": 3600.0, "min_frequency": 1},
}


@settings(max_examples=200, deadline=None)
@given(
    current=st.fixed_dictionaries(
        {},
        optional={
            "threshold": st.fixed_dictionaries({}, optional={"max": st.sampled_from([8.0, 17.0])}),
            "cache": st.fixed_dictionaries({}, optional={"ttl_s": st.sampled_from([60.0, 3600.0])}),
        },
    ),
    wanted_max=st.sampled_from([5.0, 8.0, 17.0]),
    wanted_ttl=st.sampled_from([60.0, 3600.0, 10.0]),
)
def test_a_replacement_patch_makes_the_effective_policy_the_one_asked_for(
    current: dict[str, Any], wanted_max: float, wanted_ttl: float
) -> None:
    desired = merge_patch(
        effective_values(BASE, current).model_dump(mode="json", exclude_none=True),
        {"threshold": {"max": wanted_max}, "cache": {"ttl_s": wanted_ttl}},
    )
    changes = merge_patch(current, replacement_patch(BASE, current, desired))
    assert effective_values(BASE, changes).model_dump(mode="json", exclude_none=True) == desired
    # Only what differs from the file stays a fleet change.
    assert ("max" in changes.get("threshold", {})) == (wanted_max != 17.0)
    assert ("ttl_s" in changes.get("cache", {})) == (wanted_ttl != 3600.0)


async def call(
    url: str, method: str, body: Any = None, headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + "/admin/policy", json=body, headers=headers, **kw) as r,
    ):
        return r.status, await r.json()


async def test_put_takes_back_the_document_get_returned(
    stub: StubFactory, router: RouterFactory
) -> None:
    server = await router([(await stub()).url])
    status, document = await call(server.url, "GET")
    assert status == 200
    document["policy"]["values"]["threshold"]["max"] = 8
    status, after = await call(server.url, "PUT", document)
    assert status == 200, after
    assert after["policy"]["values"]["threshold"]["max"] == 8
    assert after["policy"]["version"] == document["policy"]["version"] + 1
    assert after["policy"]["fleet_changes"] == {"threshold": {"max": 8}}
    # The same document again is based on an old version: compare-and-set refuses it.
    status, refused = await call(server.url, "PUT", document)
    assert status == 409 and refused["error"]["code"] == "version_conflict"
    # Putting back the file's value hands it back to the file.
    after["policy"]["values"]["threshold"]["max"] = 17.0
    status, restored = await call(server.url, "PUT", after)
    assert status == 200 and restored["policy"]["fleet_changes"] == {}
    assert restored["policy"]["sources"]["threshold.max"]["layer"] == "default"
    # A bad value in the replacement is named, nothing is written.
    restored["policy"]["values"]["threshold"]["min"] = -1
    status, bad = await call(server.url, "PUT", restored)
    assert status == 422 and "threshold.min" in bad["error"]["message"]


async def test_patch_is_a_merge_patch_with_its_media_type(
    stub: StubFactory, router: RouterFactory
) -> None:
    server = await router([(await stub()).url])
    patch = {"threshold": {"max": 9}, "cache": {"ttl_s": 120}}
    status, refused = await call(server.url, "PATCH", patch)  # application/json
    assert status == 415 and "merge-patch+json" in refused["error"]["message"]
    async with (
        aiohttp.ClientSession() as session,
        session.patch(
            server.url + "/admin/policy?by=alice&reason=evening",
            data=b'{"threshold": {"max": 9}, "cache": {"ttl_s": 120}}',
            headers={"Content-Type": "application/merge-patch+json", "If-Match": '"0"'},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.headers["ETag"] == '"1"'
        document = await response.json()
    assert document["policy"]["values"]["threshold"]["max"] == 9
    assert document["policy"]["sources"]["cache.ttl_s"]["by"] == "alice"
    assert document["policy"]["updated_by"] == "alice"
    # null hands the value back to the file
    async with (
        aiohttp.ClientSession() as session,
        session.patch(
            server.url + "/admin/policy",
            data=b'{"threshold": {"max": null}}',
            headers={"Content-Type": "application/merge-patch+json"},
        ) as response,
    ):
        document = await response.json()
    assert document["policy"]["values"]["threshold"]["max"] == 17.0
    assert document["policy"]["fleet_changes"] == {"cache": {"ttl_s": 120}}


async def test_the_readmes_curl_example_is_accepted(
    stub: StubFactory, router: RouterFactory
) -> None:
    """The README's example, as curl sends it (JSON with its Content-Type)."""
    readme = (ROOT / "README.md").read_text()
    example = readme.split("curl -X PUT")[1][:300]
    assert "Content-Type: application/json" in example
    server = await router([(await stub()).url])
    body = {"changes": {"threshold": {"max": 8}}, "by": "alice", "reason": "evening peak"}
    status, document = await call(server.url, "PUT", body)
    assert status == 200 and document["policy"]["values"]["threshold"]["max"] == 8
