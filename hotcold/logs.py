"""Logging set-up: plain lines for a person, or one JSON object per line for a collector.

Every line logged while a request is being handled carries its request id (the one the answer
carries in ``X-Request-Id``), through a context variable the router's middleware sets, so one
request's lines can be found across the router's log.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import BinaryIO

import orjson

from hotcold.loops import RunningLoop

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# The W3C trace id (32 hex) of the request being handled, when it is traced (hotcold/otel.py):
# a log line and its trace are found from each other.
TRACE_ID: ContextVar[str | None] = ContextVar("trace_id", default=None)
# A fresh request id is this process's random prefix and a counter: unique within the process
# by construction, across processes and restarts by the 48 random bits (uuid4 cost a system
# call's worth of entropy per request for the same guarantee in practice).
_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """An id for a request that did not bring a usable one (``X-Request-Id``)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


# Fields a log call may attach with ``extra=`` that the JSON lines carry as their own keys.
FIELDS = (
    "request_id",
    "trace_id",
    "tenant",
    "api",
    "route",
    "cache",
    "served_by",
    "status",
    "latency_ms",
)


class RequestIdFilter(logging.Filter):
    """Stamp the current request's id on every record logged while handling it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        if not hasattr(record, "trace_id"):
            record.trace_id = TRACE_ID.get()
        return True


class _SecondCache:
    """The formatted second of a log line, computed once per second instead of once per line
    (``strftime`` was a third of an access line's cost)."""

    __slots__ = ("_convert", "_format", "_last")

    def __init__(self, format_: str, convert: Callable[[float], time.struct_time]) -> None:
        self._format = format_
        self._convert = convert
        self._last = (-1, "")  # (second, its text): one tuple, so no thread sees half of it

    def __call__(self, created: float) -> str:
        second = int(created)
        last = self._last
        if second != last[0]:
            last = self._last = (second, time.strftime(self._format, self._convert(second)))
        return last[1]


class JsonLinesFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = _SecondCache("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": f"{self._second(record.created)}.{int(record.msecs):03d}Z",
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
        self._second = _SecondCache(self.default_time_format, time.localtime)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._second(record.created)},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [{request_id}]" if request_id else line

    def info_line(self, logger: str, message: str, request_id: str | None, created: float) -> str:
        """What :meth:`format` makes of an INFO record of ``logger`` with this message, made
        at ``created`` (``time.time()``), without the record (see :func:`direct_handler`)."""
        msecs = int((created - int(created)) * 1000)  # as LogRecord computes it
        line = f"{self._second(created)},{msecs:03d} INFO {logger}: {message}"
        return f"{line} [{request_id}]" if request_id else line


class BatchedStreamHandler(logging.Handler):
    """Lines written to a binary stream in batches rather than one system call per line.

    A router at INFO logs an access line per request; a ``StreamHandler`` on stderr (line
    buffered since Python 3.9) makes each a ``write`` system call. Here, a line logged on a
    running event loop waits at most ``FLUSH_AFTER_S`` (or until ``MAX_PENDING_BYTES`` are
    pending) and goes out with the others; a WARNING or worse, a line from a thread without
    a running loop, and ``logging.shutdown`` at exit write at once (and everything pending
    before them). Bound: ``MAX_PENDING_BYTES`` of lines; a SIGKILL loses at most the last
    ``FLUSH_AFTER_S`` of INFO lines."""

    FLUSH_AFTER_S = 0.05
    MAX_PENDING_BYTES = 64 * 1024

    def __init__(self, stream: BinaryIO, encoding: str = "utf-8") -> None:
        super().__init__()
        self._stream = stream
        self._encoding = encoding
        self._pending: list[str] = []
        self._pending_chars = 0
        self._timer_loop: asyncio.AbstractEventLoop | None = None  # where a flush is due
        self._loop = RunningLoop()  # asked on every line (hotcold/loops.py)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self._add(line, urgent=record.levelno >= logging.WARNING)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._write()

    def write_line(self, line: str) -> None:
        """A formatted INFO line, as :meth:`emit` would add it."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._add(line + "\n", urgent=False)

    def _add(self, line: str, urgent: bool) -> None:
        """Queue a line (the caller holds the lock); write now when it is urgent, the batch
        is full, or no running loop would flush it later; otherwise make sure a flush is
        scheduled on *this* loop (one scheduled on a loop that has since stopped would never
        run, and would hold every later line)."""
        self._pending.append(line)
        self._pending_chars += len(line)
        if urgent or self._pending_chars >= self.MAX_PENDING_BYTES:
            self._write()
            return
        try:
            loop = self._loop.get()
        except RuntimeError:  # no loop in this thread: nobody would flush later
            self._write()
            return
        if self._timer_loop is loop:
            return
        self._timer_loop = loop
        loop.call_later(self.FLUSH_AFTER_S, self.flush)

    def _write(self) -> None:
        self._timer_loop = None
        if not self._pending:
            return
        data = "".join(self._pending).encode(self._encoding, "backslashreplace")
        self._pending.clear()
        self._pending_chars = 0
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr: nothing better to do
            pass


def direct_handler(logger: logging.Logger) -> BatchedStreamHandler | None:
    """The handler an INFO line of ``logger`` may be written to directly, skipping the
    record, filters and formatter (an access line costs a third as much), when the logging
    set-up is exactly the one :func:`setup_logging` makes with plain lines: one batched
    handler with a :class:`PlainFormatter` and a :class:`RequestIdFilter` on the root, and
    nothing else on the way. Any other set-up (JSON lines, a test's capture handler, a
    custom record factory, more handlers or filters) gets None: log the standard way."""
    root = logging.root
    if logger.handlers or logger.filters or not logger.propagate or root.filters:
        return None
    parent = logger.parent
    while parent is not None and parent is not root:
        if parent.handlers or parent.filters or not parent.propagate:
            return None
        parent = parent.parent
    handlers = root.handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if (
        type(handler) is not BatchedStreamHandler
        or type(handler.formatter) is not PlainFormatter
        or handler.level > logging.INFO
        or len(handler.filters) != 1
        or type(handler.filters[0]) is not RequestIdFilter
        or logging.getLogRecordFactory() is not logging.LogRecord
    ):
        return None
    return handler


def _stderr_handler() -> logging.Handler:
    binary = getattr(sys.stderr, "buffer", None)
    if binary is None:  # stderr replaced by a text-only object (some test harnesses)
        return logging.StreamHandler(sys.stderr)
    return BatchedStreamHandler(binary, sys.stderr.encoding or "utf-8")


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    handler = _stderr_handler()
    handler.setFormatter(JsonLinesFormatter() if json_lines else PlainFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
