"""Helpers for tests: wait for a condition with a deadline, run services as real processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


async def wait_for(
    condition: Callable[[], Awaitable[bool] | bool],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    message: str = "condition",
) -> None:
    """Poll until the condition holds; fail with the message when the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        await asyncio.sleep(interval_s)


_AT_TEST_END: list[Callable[[], object]] = []


def close_at_test_end(close: Callable[[], object]) -> None:
    """Call ``close`` (awaiting what it returns, if anything) when the current test ends, in
    its loop: for modules that use the ``closes_at_test_end`` fixture (tests/conftest.py).
    A connection left to the garbage collector warns at some later test's moment instead,
    and on CPython 3.11 that can break ``ast.parse`` (see tests/test_layers.py)."""
    _AT_TEST_END.append(close)


async def close_all_at_test_end() -> None:
    while _AT_TEST_END:
        done = _AT_TEST_END.pop()()
        if isinstance(done, Awaitable):
            await done


async def is_up(url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=0.5)) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def scrape(
    url: str, token: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A service's /metrics as {(sample name, sorted labels): value} (``token``: the admin
    token a router with one asks for)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/metrics", headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """Sum of the samples of one name whose labels include the given ones."""
    total = 0.0
    for (sample_name, sample_labels), value in samples.items():
        if sample_name == name and all(item in sample_labels for item in labels.items()):
            total += value
    return total
