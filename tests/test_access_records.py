"""Access-line records copied from a template (router.middlewares.AccessRecords) carry what
``Logger.makeRecord`` would have made, with their own time and arguments; a custom record
factory is honoured."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from router.middlewares import ACCESS_FORMAT, AccessRecords, access

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
