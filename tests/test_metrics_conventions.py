"""/metrics as Prometheus wants it, on a live router: ``promtool check metrics`` finds nothing
to complain about (when Debian's prometheus package is installed; otherwise the
prometheus-client parser and the same naming rules checked here), no ``*_created`` series,
``process_*`` series, units in names (the currency in the cost series), the hit ratio left to
PromQL over counters, an ``_info`` metric for the eviction policy, a time-to-first-token
histogram, and tokens by model and tenant with the tenant label bounded. The Grafana dashboard
in docs/ names only series that router exports, and has a fleet view."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RouterFactory, StubFactory
from tests.recording_upstream import start_recorder
from tests.support import ROOT

PROMTOOL = shutil.which("promtool")
GRAFANA = ROOT / "docs" / "grafana-hotcold.json"
# Sample names each family type gives (the parser names families without the suffixes).
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum", ""),
    "info": ("_info",),
    "gauge": ("",),
    "stateset": ("",),
    "unknown": ("",),
}


def chat(text: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 8,
            "temperature": 0, "stream": stream}  # fmt: skip


async def exercise(url: str, tenants: int) -> int:
    """Streamed and whole answers, cache hits and misses, several tenants; the 200s."""
    ok = 0
    async with aiohttp.ClientSession() as session:
        for i in range(24):
            headers = {"X-Tenant": f"tenant-{i % tenants}"}
            body = chat(f"reading {i % 6}", stream=i % 3 == 0)
            async with session.post(
                url + "/v1/chat/completions", json=body, headers=headers
            ) as response:
                await response.read()
                ok += response.status == 200
    return ok


async def scrape_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


def naming_problems(text: str) -> list[str]:
    """promtool's complaints, or the same rules over the prometheus-client parser."""
    if PROMTOOL is not None:
        result = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    problems = []
    for family in text_string_to_metric_families(text):
        if family.type == "counter" and family.name.endswith("_total"):
            problems.append(f"{family.name}: counter named with _total twice")
        if re.search(r"_(ms|us|ns|secs?|kb|mb|gb|pct)(_|$)", family.name):
            problems.append(f"{family.name}: abbreviated unit")
        if not family.documentation:
            problems.append(f"{family.name}: no help")
    return problems


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def exported_names(text: str) -> set[str]:
    """Every series name the text declares, with or without samples yet."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES[family.type]
    }


async def test_metrics_pass_promtool_and_follow_the_conventions(
    stub: StubFactory, router: RouterFactory
) -> None:
    server = await router([(await stub()).url], metrics={"tenant_labels": 2})
    answered = await exercise(server.url, tenants=4)
    text = await scrape_text(server.url)

    assert naming_problems(text) == []
    values = samples(text)
    names = {name for name, _ in values}
    assert not [name for name in names if name.endswith("_created")]
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total",
            "process_open_fds"} <= names  # fmt: skip
    assert "hotcold_cache_hit_ratio" not in names  # a since-start ratio: PromQL over counters
    assert {"hotcold_cache_hits_total", "hotcold_cache_misses_total"} <= names
    assert [labels for name, labels in values if name == "hotcold_cache_policy_info"] == [
        (("policy", "s3-fifo"),)
    ]
    actual = values[("hotcold_estimated_cost_usd_total", (("scenario", "actual"),))]
    all_cloud = values[("hotcold_estimated_cost_usd_total", (("scenario", "all_cloud"),))]
    assert all_cloud > actual > 0
    assert values[("hotcold_estimated_savings_usd", ())] == pytest.approx(all_cloud - actual)

    # One time-to-first-token observation per successful answer, streams included.
    first_token = sum(v for (n, _), v in values.items()
                      if n == "hotcold_time_to_first_token_seconds_count")  # fmt: skip
    assert first_token == answered == 24

    # Tokens and requests by model and tenant; past metrics.tenant_labels, tenants share
    # "other" (the series stay bounded whatever X-Tenant clients send).
    for series in ("hotcold_tokens_total", "hotcold_requests_total"):
        tenants = {dict(labels)["tenant"] for name, labels in values if name == series}
        assert tenants == {"tenant-0", "tenant-1", "other"}, series
        models = {dict(labels)["model"] for name, labels in values if name == series}
        assert models == {"default"}, series
    per_tenant = {
        tenant: sum(v for (n, labels), v in values.items()
                    if n == "hotcold_requests_total" and ("tenant", tenant) in labels)
        for tenant in ("tenant-0", "tenant-1", "other")
    }  # fmt: skip
    assert per_tenant == {"tenant-0": 6, "tenant-1": 6, "other": 12}


async def test_time_to_first_token_of_a_stream_is_its_first_chunk(
    stub: StubFactory, router: RouterFactory
) -> None:
    """A slow stream's first token comes long before its end: the histogram sees the first,
    the latency histogram the end (the stub: 40 ms between tokens)."""
    server = await router([(await stub(ttft_ms=5, tpot_ms=40)).url])
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.url + "/v1/chat/completions", json={**chat("a long one", True), "max_tokens": 20}
        ) as response,
    ):
        assert response.status == 200
        await response.read()
    values = samples(await scrape_text(server.url))

    def histogram_sum(name: str) -> float:
        return sum(v for (n, _), v in values.items() if n == name)

    first_token = histogram_sum("hotcold_time_to_first_token_seconds_sum")
    whole = histogram_sum("hotcold_request_latency_seconds_sum")
    # The stub sleeps 40 ms before each of the 19 later tokens: however loaded the machine,
    # at least that much passes between the first chunk and the end.
    assert first_token > 0 and whole - first_token >= 0.5


async def test_time_to_first_token_of_a_stream_waits_for_output_not_the_role_chunk(
    router: RouterFactory,
) -> None:
    """Servers that send a role-only chunk before prefill: the first token is the first chunk
    with text (the upstream sends it 0.3 s after the role), not the role chunk."""
    upstream = await start_recorder("role-first")
    upstream.first_token_after_s = 0.3
    try:
        server = await router([upstream.url])
        async with (
            aiohttp.ClientSession() as session,
            session.post(server.url + "/v1/chat/completions", json=chat("hi", True)) as response,
        ):
            assert response.status == 200
            assert b"answers" in await response.read()
        values = samples(await scrape_text(server.url))
    finally:
        assert upstream.server is not None
        await upstream.server.close()
    first_token = sum(v for (n, _), v in values.items()
                      if n == "hotcold_time_to_first_token_seconds_sum")  # fmt: skip
    assert first_token >= 0.3  # the role chunk went out at once, the text 0.3 s later


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append(target["expr"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


async def test_every_grafana_query_names_a_series_the_router_exports(
    stub: StubFactory, router: RouterFactory, redis_servers: Any
) -> None:
    """Against a router with everything a dashboard panel shows: a fleet (Redis), an edge
    node (a stub standing in) with an edge-eligible model, upstream attempts."""
    redis = await redis_servers().started()
    cloud, edge = await stub(), await stub()
    server = await router(
        [cloud.url],
        edge={"endpoints": [edge.url]},
        fleet={"redis_url": redis.url, "name": "grafana", "router_id": "r1"},
    )
    await exercise(server.url, tenants=2)
    exported = exported_names(await scrape_text(server.url))

    dashboard = json.loads(GRAFANA.read_text())
    expressions = queries(dashboard)
    assert len(expressions) > 30
    named = {
        name
        for expression in expressions
        for name in re.findall(r"\b((?:hotcold|process|python)_[a-z0-9_]+)\b", expression)
    }
    assert named, expressions
    assert sorted(named - exported) == []
    # A fleet view: the routers side by side (an instance variable, panels by instance).
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "instance" in variables
    assert sum("by (instance)" in e or "by (le, instance)" in e for e in expressions) >= 5
