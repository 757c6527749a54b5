"""Bookkeeping (router/bookkeeping.py): work an answer owes runs at the router's next idle
moment, in order, in the context it was queued in, bounded, never lost; and whoever reads
what it updates (/metrics) sees every answer already sent. Nothing here waits for time to
pass except the timer's own test, which waits for a condition with a deadline."""

from __future__ import annotations

import asyncio
import contextvars
import logging

import orjson
import pytest
from aiohttp import ClientSession

from hotcold.serving import serving
from router import bookkeeping, create_app
from router.bookkeeping import MAX_PENDING, Bookkeeping
from router.config import build_config
from router.parts import PARTS
from tests.conftest import StubFactory, router_settings
from tests.support import metric, scrape, wait_for

WHO = contextvars.ContextVar("who", default="nobody")


async def test_queued_work_waits_for_an_idle_moment_then_runs_in_order_in_its_context() -> None:
    book = Bookkeeping()
    ran: list[tuple[int, str]] = []
    for n in range(3):
        token = WHO.set(f"request {n}")
        book.defer(lambda n: ran.append((n, WHO.get())), n)
        WHO.reset(token)
    assert ran == [] and len(book) == 3
    book.run_soon()
    assert ran == []  # not now: in the loop's next turn
    await asyncio.sleep(0)
    assert ran == [(0, "request 0"), (1, "request 1"), (2, "request 2")] and len(book) == 0


async def test_without_an_idle_moment_the_timer_runs_it() -> None:
    book = Bookkeeping()
    ran: list[int] = []
    book.defer(ran.append, 1)
    await wait_for(lambda: ran == [1], timeout_s=10, message="the timer's run")


async def test_the_queue_is_bounded_the_item_past_the_bound_runs_them_all() -> None:
    book = Bookkeeping()
    ran: list[int] = []
    for n in range(MAX_PENDING - 1):
        book.defer(ran.append, n)
    assert ran == [] and len(book) == MAX_PENDING - 1
    book.defer(ran.append, MAX_PENDING - 1)
    assert ran == list(range(MAX_PENDING)) and len(book) == 0


async def test_a_failing_item_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    book = Bookkeeping()
    ran: list[int] = []

    def broken() -> None:
        raise RuntimeError("a bug in a counter")

    book.defer(ran.append, 1)
    book.defer(broken)
    book.defer(ran.append, 2)
    book.run()
    assert ran == [1, 2]
    assert any("bookkeeping failed" in r.getMessage() for r in caplog.records)
    assert [r.levelno for r in caplog.records if r.exc_info] == [logging.ERROR]


async def test_metrics_count_a_forwarded_answer_before_any_idle_moment(
    stub: StubFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forwarded answer's counters wait for the next upstream wait; with no timer in
    sight (an hour), /metrics still counts it: reading the metrics runs the bookkeeping."""
    monkeypatch.setattr(bookkeeping, "MAX_DELAY_S", 3600.0)
    cloud = await stub()
    app = create_app(build_config(router_settings([cloud.url])))
    sampled = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1}
    async with serving(app) as server, ClientSession() as session:
        async with session.post(
            server.url + "/v1/chat/completions", data=orjson.dumps(sampled),
            headers={"Content-Type": "application/json"},
        ) as answer:  # fmt: skip
            assert answer.status == 200 and answer.headers["X-Served-By"] == "cloud"
            await answer.read()
        owed = server.app[PARTS].dispatcher.bookkeeping
        assert len(owed) > 0  # the answer's counters wait for an idle moment
        samples = await scrape(server.url)
        assert len(owed) == 0
        assert metric(samples, "hotcold_requests_total", served_by="cloud") == 1
        assert metric(samples, "hotcold_tokens_total", direction="out", served_by="cloud") > 0
