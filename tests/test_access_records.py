"""Access-line records copied from a template (router.middlewares.AccessRecords) carry what
``Logger.makeRecord`` would have made, with their own time and arguments; a custom record
factory is honoured."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from hotcold.logs import (
    BatchedStreamHandler,
    JsonLinesFormatter,
    PlainFormatter,
    RequestIdFilter,
    direct_handler,
)
from router import create_app
from router.config import build_config
from router.middlewares import ACCESS_FORMAT, AccessRecords, access
from tests.conftest import StubFactory, router_settings

ARGS = ("POST", "/v1/chat/completions", "200", "m", "hot", "hit", "cache", 1.25)
TIMES = {"created", "msecs", "relativeCreated"}


@pytest.fixture
def factory() -> Iterator[None]:
    before = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(before)


def test_a_copied_record_is_the_record_makeRecord_makes() -> None:
    records = AccessRecords()
    records.make(("first",) * 8)  # the template
    before = time.time()
    copied = records.make(ARGS)
    made = access.makeRecord(access.name, logging.INFO, __file__, 0, ACCESS_FORMAT, ARGS, None)
    ours = {k: v for k, v in copied.__dict__.items() if k not in TIMES}
    theirs = {k: v for k, v in made.__dict__.items() if k not in TIMES}
    theirs["pathname"], theirs["filename"], theirs["module"] = (
        ours["pathname"],
        ours["filename"],
        ours["module"],
    )  # the same origin: router/middlewares.py, whatever file asks
    assert ours == theirs
    assert ours["filename"] == "middlewares.py" and ours["module"] == "middlewares"
    assert type(copied) is logging.LogRecord
    assert before <= copied.created <= made.created
    assert copied.msecs == int((copied.created - int(copied.created)) * 1000)
    assert copied.relativeCreated == pytest.approx(made.relativeCreated, abs=50)
    assert (
        copied.getMessage()
        == made.getMessage()
        == ("POST /v1/chat/completions 200 m hot/hit/cache 1.2 ms")
    )
    assert records.make(("x",) * 7 + (2.0,)).getMessage().endswith("2.0 ms")


def test_a_custom_record_factory_makes_every_record(factory: None) -> None:
    made: list[Any] = []
    standard = logging.getLogRecordFactory()

    def custom(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = standard(*args, **kwargs)
        record.custom = True
        made.append(record)
        return record

    records = AccessRecords()
    records.make(ARGS)  # a template exists
    logging.setLogRecordFactory(custom)
    assert records.make(ARGS).__dict__.get("custom") is True
    assert records.make(ARGS).__dict__.get("custom") is True
    assert len(made) == 2


# ---- the direct path: a plain line written without a record (hotcold.logs.direct_handler) ----


@settings(max_examples=300, deadline=None)
@given(
    created=st.floats(min_value=1e9, max_value=4e9, allow_nan=False),
    message=st.text(max_size=80),
    request_id=st.one_of(st.none(), st.text(alphabet="0123456789abcdef", max_size=20)),
)
def test_a_direct_line_is_the_line_the_formatter_makes(
    created: float, message: str, request_id: str | None
) -> None:
    formatter = PlainFormatter()
    record = access.makeRecord(access.name, logging.INFO, __file__, 0, "%s", (message,), None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    record.request_id = request_id
    expected = formatter.format(record)
    assert formatter.info_line(access.name, message, request_id, created) == expected


@pytest.fixture
def plain_logging() -> Iterator[BatchedStreamHandler]:
    """setup_logging's plain set-up, writing to memory; the root's handlers restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = BatchedStreamHandler(io.BytesIO())
    handler.setFormatter(PlainFormatter())
    handler.addFilter(RequestIdFilter())
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    yield handler
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def test_only_the_plain_set_up_is_written_directly(
    plain_logging: BatchedStreamHandler, factory: None
) -> None:
    logging.getLogger().handlers[:] = [plain_logging]  # without pytest's capture handler
    assert direct_handler(access) is plain_logging
    plain_logging.setFormatter(JsonLinesFormatter())
    assert direct_handler(access) is None, "JSON lines carry fields only a record has"
    plain_logging.setFormatter(PlainFormatter())
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    assert direct_handler(access) is None, "another handler (a test's capture) sees records"
    logging.getLogger().removeHandler(other)
    access.addFilter(RequestIdFilter())
    assert direct_handler(access) is None
    access.filters.clear()
    logging.setLogRecordFactory(lambda *a, **k: logging.LogRecord(*a, **k))
    assert direct_handler(access) is None, "a custom record factory makes every record"


async def test_the_routers_access_line_is_written_directly(
    plain_logging: BatchedStreamHandler, stub: StubFactory
) -> None:
    upstream = await stub()
    app = create_app(build_config(router_settings([upstream.url])))
    logging.getLogger().handlers[:] = [plain_logging]  # without pytest's capture handler
    assert direct_handler(access) is plain_logging
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    async with TestServer(app) as server, TestClient(server) as client:
        for _ in range(2):
            answer = await client.post("/v1/chat/completions", json=body)
            assert answer.status == 200
            request_id = answer.headers["X-Request-Id"]
    plain_logging.flush()
    stream = plain_logging._stream
    assert isinstance(stream, io.BytesIO)
    lines = [ln for ln in stream.getvalue().decode().splitlines() if "hotcold.access" in ln]
    assert len(lines) == 2
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO hotcold\.access: "
        r"POST /v1/chat/completions 200 \S+ hot/hit/cache \d+\.\d ms \[" + request_id + r"\]",
        lines[1],
    ), lines[1]
