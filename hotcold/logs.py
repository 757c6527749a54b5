"""Logging set-up: plain lines for a person, or one JSON object per line for a collector.

Every line logged while a request is being handled carries its request id (the one the answer
carries in ``X-Request-Id``), through a context variable the router's middleware sets, so one
request's lines can be found across the router's log.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar

import orjson

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# Fields a log call may attach with ``extra=`` that the JSON lines carry as their own keys.
FIELDS = ("request_id", "tenant", "api", "route", "cache", "served_by", "status", "latency_ms")


class RequestIdFilter(logging.Filter):
    """Stamp the current request's id on every record logged while handling it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document).decode()


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [{request_id}]" if request_id else line


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if json_lines else PlainFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
