"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): the page loads,
its numbers move under load, the browser logs no error, and a screenshot is left in
``test-output/`` (or ``$HOTCOLD_TEST_OUTPUT``). Also: cost estimate and /metrics series."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hotcold.procs import ServiceProcess
from hotcold.serving import free_port
from router.config import CostConfig
from router.cost import estimate_cost
from tests.conftest import RouterFactory, StubFactory
from tests.support import ROOT, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUTPUT = Path(os.environ.get("HOTCOLD_TEST_OUTPUT", ROOT / "test-output"))


def test_cost_estimate_prices_tokens_and_edge_hours() -> None:
    prices = CostConfig(
        cloud_input_per_1k_tokens=1.0, cloud_output_per_1k_tokens=2.0, edge_gpu_per_hour=0.5
    )
    tokens = {("in", "cloud"): 1000, ("out", "cloud"): 500, ("in", "cache"): 3000,
              ("out", "edge"): 1000}  # fmt: skip
    estimate = estimate_cost(prices, tokens, edge_hours=2.0)
    assert estimate.actual == pytest.approx(1.0 + 1.0 + 1.0)  # cloud in, cloud out, 2 h x 0.5
    assert estimate.all_cloud == pytest.approx(1.0 + 1.0 + 3.0 + 2.0)
    assert estimate.saved == pytest.approx(4.0)
    assert estimate.saved_fraction == pytest.approx(4.0 / 7.0)


def chat(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 8,
            "temperature": 0}  # fmt: skip


async def drive(url: str, requests: int, distinct: int = 10, temperature: float = 0) -> None:
    """Requests over ``distinct`` prompts (temperature 0: cacheable; above: sampled, so a
    recurring one is a hot miss for the edge)."""
    async with aiohttp.ClientSession() as session:

        async def one(index: int) -> None:
            body = {**chat(f"sensor {index % distinct}"), "temperature": temperature}
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                assert response.status == 200
                await response.read()

        for start in range(0, requests, 16):
            await asyncio.gather(*(one(i) for i in range(start, min(requests, start + 16))))


async def test_metrics_parse_and_carry_the_operator_series(
    stub: StubFactory, router: RouterFactory
) -> None:
    cloud = await stub()
    server = await router([cloud.url])
    await drive(server.url, 40)
    async with aiohttp.ClientSession() as session, session.get(server.url + "/metrics") as r:
        text = await r.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    expected = [
        "hotcold_requests", "hotcold_request_latency_seconds", "hotcold_threshold",
        "hotcold_threshold_min", "hotcold_threshold_max", "hotcold_cache_entries",
        "hotcold_cache_bytes", "hotcold_cache_hits", "hotcold_cache_evictions",
        "hotcold_sketch_memory_bytes", "hotcold_upstream_up", "hotcold_upstream_outstanding",
        "hotcold_upstream_circuit_state", "hotcold_policy_version", "hotcold_tokens",
        "hotcold_estimated_cost_usd", "hotcold_estimated_savings_usd",
    ]  # fmt: skip
    missing = [name for name in expected if name not in families]
    assert not missing, missing
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families.values()
        for s in family.samples
    }
    all_cloud = samples[("hotcold_estimated_cost_usd_total", (("scenario", "all_cloud"),))]
    actual = samples[("hotcold_estimated_cost_usd_total", (("scenario", "actual"),))]
    assert all_cloud > actual > 0  # the cache answered 30 of the 40 for free
    cache_tokens = sum(
        value for (name, labels), value in samples.items()
        if name == "hotcold_tokens_total" and ("served_by", "cache") in labels
    )  # fmt: skip
    assert cache_tokens > 0


async def browse(check: Callable[[Any, list[str]], Awaitable[None]]) -> list[str]:
    """Run ``check(page, errors)`` in a headless Chromium page; what the browser logged as an
    error (console errors, page errors, answers of 400 and above), which ``check`` may clear
    after a failure it expects."""
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "response",
                lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            await check(page, errors)
        finally:
            await browser.close()
    return errors


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt install chromium)")
async def test_dashboard_live_in_headless_chromium(
    stub: StubFactory, router: RouterFactory
) -> None:
    cloud = await stub()
    server = await router(
        [cloud.url, (await stub()).url],
        dashboard={"sample_interval_s": 0.2},
        admin={"token": "dashboard-admin-token"},
    )
    OUTPUT.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, tiny

    async def check(page: Any, errors: list[str]) -> None:
        # Without the admin token the page is refused; with it, the cookie carries it.
        refused = await page.goto(server.url + "/dashboard")
        assert refused is not None and refused.status == 401
        errors.clear()  # the browser logs the 401 itself
        await page.goto(server.url + "/dashboard?token=dashboard-admin-token")
        await page.wait_for_function("document.getElementById('stat-total').textContent === '0'")
        assert "live" in (await page.text_content("#status") or "")
        await drive(server.url, 120)

        async def moved() -> bool:
            total = await page.text_content("#stat-total")
            return total is not None and total.replace(",", "") == "120"

        await wait_for(moved, timeout_s=10, message="the page to show 120 requests")
        await page.wait_for_function("document.querySelectorAll('#chart-rps path').length >= 2")
        hit = await page.text_content("#stat-hit")
        assert hit is not None and hit.endswith("%") and float(hit[:-1]) > 50
        cloud_rows = await page.locator("#cloud tr").count()
        assert cloud_rows == 3  # header + two endpoints
        assert "healthy" in (await page.text_content("#cloud") or "")
        await page.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)

    errors = await browse(check)
    assert not errors, errors
    assert (OUTPUT / "dashboard.png").stat().st_size > 10_000


async def test_json_logs_carry_the_request_id_of_the_answer(
    stub: StubFactory, tmp_path: Path
) -> None:
    cloud = await stub()
    log_path = tmp_path / "router.log"
    router = ServiceProcess(
        "router", free_port(), "--cloud-endpoint", cloud.url, "--json-logs", log_path=log_path
    )
    await router.started()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                router.url + "/v1/chat/completions",
                json=chat("log me"),
                headers={"X-Request-Id": "trace-42"},
            ) as response,
        ):
            assert response.headers["X-Request-Id"] == "trace-42"

        def logged() -> bool:
            return "trace-42" in log_path.read_text()

        await wait_for(logged, timeout_s=10, message="the access line")
    finally:
        router.stop()
    lines = [orjson.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    access = [line for line in lines if line.get("request_id") == "trace-42"]
    assert access and access[0]["logger"] == "hotcold.access"
    assert access[0]["route"] == "cold" and access[0]["served_by"] == "cloud"
    assert access[0]["status"] == 200 and access[0]["latency_ms"] > 0


async def test_the_dashboard_login_cookie_is_a_session_not_the_token(
    stub: StubFactory, router: RouterFactory
) -> None:
    token = "dashboard-admin-token"
    server = await router([(await stub()).url], admin={"token": token})
    jar = aiohttp.CookieJar(unsafe=True)  # loopback addresses keep their cookies
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.get(
            server.url + "/dashboard?token=wrong-token-of-16+", allow_redirects=True
        ) as response:
            assert response.status == 401
        assert len(jar) == 0  # a wrong token gets no cookie
        async with session.get(
            server.url + f"/dashboard?token={token}", allow_redirects=False
        ) as response:
            assert response.status == 307  # the old address moved under /admin
            assert response.headers["Location"] == f"/admin/dashboard?token={token}"
        async with session.get(
            server.url + f"/admin/dashboard?token={token}", allow_redirects=False
        ) as response:
            assert response.status == 302 and response.headers["Location"] == "/admin/dashboard"
            cookie = response.cookies["hotcold_admin_session"]
            assert cookie.value != token and token not in cookie.value
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
            assert int(cookie["max-age"]) > 0 and cookie["path"] == "/admin"
        async with session.get(server.url + "/admin/dashboard/data") as response:
            assert response.status == 200  # the session cookie lets the page read its data
        async with session.get(server.url + "/admin/policy") as response:
            assert response.status == 200
    async with aiohttp.ClientSession() as stranger:
        forged = {"hotcold_admin_session": "9999999999.0000"}
        async with stranger.get(server.url + "/admin/policy", cookies=forged) as response:
            assert response.status == 401


def test_sessions_expire_and_cannot_be_forged() -> None:
    from router.sessions import AdminSessions

    sessions = AdminSessions(ttl_s=60, key=b"k" * 32)
    cookie = sessions.issue(now=1000.0)
    assert sessions.valid(cookie, 1059.0) and not sessions.valid(cookie, 1060.5)
    expiry, _, signature = cookie.rpartition(".")
    assert not sessions.valid(f"{float(expiry) + 3600}.{signature}", 1001.0)
    assert not AdminSessions(key=b"x" * 32).valid(cookie, 1001.0)
    assert not sessions.valid("not-a-cookie", 1001.0) and not sessions.valid(None, 1001.0)


async def test_readiness_details_and_metrics_are_for_operators(
    stub: StubFactory, router: RouterFactory
) -> None:
    token = "operator-token-0123456"
    server = await router([(await stub()).url], admin={"token": token})
    operator = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/readyz") as response:
            assert response.status == 200
            public = await response.json()
        assert public == {"ready": True}  # nothing internal: no URLs, no errors, no fleet
        async with session.get(server.url + "/readyz", headers=operator) as response:
            assert "pools" in (await response.json())["cloud"]
        async with session.get(server.url + "/metrics") as response:
            assert response.status == 401
        async with session.get(server.url + "/metrics", headers=operator) as response:
            assert response.status == 200 and "hotcold_requests" in await response.text()
        async with session.get(server.url + "/healthz") as response:
            assert await response.json() == {"status": "ok"}
    public_server = await router(
        [(await stub()).url],
        admin={"token": token, "public_metrics": True, "public_readiness_details": True},
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(public_server.url + "/metrics") as response:
            assert response.status == 200
        async with session.get(public_server.url + "/readyz") as response:
            assert "pools" in (await response.json())["cloud"]


# What the page draws: every line inside its chart's plot (data-plot: left top right bottom,
# in the svg's units), with a small allowance for the stroke; the violations, if any.
PATHS_OUTSIDE_THEIR_PLOT = """
() => {
  const bad = [];
  for (const svg of document.querySelectorAll("svg[data-plot]")) {
    const [l, t, r, b] = svg.dataset.plot.split(" ").map(Number);
    const box = svg.getBoundingClientRect();
    for (const shape of svg.querySelectorAll("path, circle")) {
      const g = shape.getBBox();
      const outside = g.x < l - 3 || g.y < t - 3 || g.x + g.width > r + 3 || g.y + g.height > b + 3;
      const client = shape.getBoundingClientRect();
      if (outside || client.bottom > box.bottom || client.top < box.top) {
        bad.push(`${svg.id}: ${g.x},${g.y} ${g.width}x${g.height} outside ${l} ${t} ${r} ${b}`);
      }
    }
  }
  return bad;
}
"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt install chromium)")
async def test_after_a_demo_like_load_every_line_stays_inside_its_chart(
    stub: StubFactory, router: RouterFactory
) -> None:
    """Hot and cold traffic, cache hits, an edge node, and an edge GPU priced so the saving
    starts below zero: the cost line must cross its zero axis inside the chart (it used to be
    drawn below the chart, into the legend). Time labels under every chart; the edge and the
    cloud tables name endpoint states alike."""
    cloud, edge = await stub(), await stub()
    server = await router(
        [cloud.url],
        edge={"endpoints": [edge.url], "release": {"enabled": False},
              "latency": {"cost_first": True}},
        dashboard={"sample_interval_s": 0.2},
        cost={"edge_gpu_per_hour": 500.0},
    )  # fmt: skip
    OUTPUT.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, tiny

    async def check(page: Any, errors: list[str]) -> None:
        await page.goto(server.url + "/admin/dashboard")
        await page.wait_for_function(
            "() => document.getElementById('stat-total').textContent === '0'"
        )
        await drive(server.url, 120)  # cold first sightings, then cache hits
        await drive(server.url, 40, distinct=4, temperature=0.8)  # hot misses: the edge
        await page.wait_for_function(
            "() => document.getElementById('stat-total').textContent.replace(',', '') === '160'"
            " && document.querySelectorAll('#chart-saved path, #chart-saved circle').length > 0"
            " && document.querySelectorAll('#chart-rps text.time').length === 3"
        )
        assert await page.evaluate(PATHS_OUTSIDE_THEIR_PLOT) == []
        labels = await page.locator("#chart-rps text.time").all_text_contents()
        assert all(re.fullmatch(r"\d{2}:\d{2}:\d{2}", label) for label in labels), labels
        edge_table = await page.text_content("#edge") or ""
        assert "healthy" in edge_table and "(closed)" not in edge_table
        assert "healthy" in (await page.text_content("#cloud") or "")
        await page.screenshot(path=str(OUTPUT / "dashboard-demo.png"), full_page=True)

    errors = await browse(check)
    assert not errors, errors
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.url + "/admin/dashboard/data") as response,
    ):
        history = (await response.json())["history"]
    assert min(point["saved"] for point in history) < 0  # the case this test is about was drawn
    assert any(point["edge_rps"] > 0 for point in history)  # the edge took hot misses


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt install chromium)")
async def test_the_fleet_page_shows_every_router_side_by_side(
    stub: StubFactory, router: RouterFactory, redis_servers: Any
) -> None:
    """Two routers on one Redis: either one's fleet page shows both, each with the figures
    its own heartbeat carried (read through Redis, not from the page's router)."""
    redis = await redis_servers().started()
    cloud = await stub()
    fleet = {"redis_url": redis.url, "name": "board", "heartbeat_interval_s": 0.2,
             "member_ttl_s": 1.0}  # fmt: skip
    first = await router([cloud.url], fleet={**fleet, "router_id": "gw-a"},
                         dashboard={"sample_interval_s": 0.2})  # fmt: skip
    second = await router([cloud.url], fleet={**fleet, "router_id": "gw-b"},
                          dashboard={"sample_interval_s": 0.2})  # fmt: skip
    await drive(first.url, 30)
    await drive(second.url, 50)

    async def both_counted() -> bool:
        async with (
            aiohttp.ClientSession() as session,
            session.get(first.url + "/admin/dashboard/fleet/data") as response,
        ):
            members = (await response.json())["members"]
        counts = {m["router_id"]: (m["figures"] or {}).get("requests") for m in members}
        return counts == {"gw-a": 30, "gw-b": 50}

    await wait_for(both_counted, timeout_s=15, message="both routers' figures through Redis")

    async def check(page: Any, errors: list[str]) -> None:
        await page.goto(first.url + "/admin/dashboard/fleet")
        await page.wait_for_function(
            "() => document.querySelectorAll('#members thead th').length === 4"
        )  # the labels' column, gw-a, gw-b, the fleet's total
        head = await page.text_content("#members thead") or ""
        assert "gw-a (this)" in head and "gw-b" in head
        first_row = await page.locator("#members tbody tr").first.all_text_contents()
        assert "30" in first_row[0] and "50" in first_row[0] and "80" in first_row[0]
        await page.screenshot(path=str(OUTPUT / "dashboard-fleet.png"), full_page=True)

    OUTPUT.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, tiny
    errors = await browse(check)
    assert not errors, errors
