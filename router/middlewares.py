"""The router's middleware: a request id on every answer, route headers on every inference
answer, the request counters and latency histogram, the access log, errors in the OpenAI
shape, and shedding past the concurrency limit."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from hotcold.http import Handler, HttpRequest, answer_errors, error_response
from hotcold.logs import REQUEST_ID as REQUEST_ID_CONTEXT
from hotcold.logs import PlainFormatter, direct_handler, new_request_id
from hotcold.wire import ServiceUnavailable
from hotcold.wire.schema import PATHS
from router.dispatch import DECISION, FIRST_TOKEN_AT, REQUEST_ID, TENANT, Decision
from router.metrics import OTHER
from router.parts import RouterParts, parts_of
from router.tracing import RequestTrace

access = logging.getLogger("hotcold.access")  # one line per inference answer
_INFERENCE_PATHS = {path: api for api, path in PATHS.items()}
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Answers the router gives itself (bad input, no upstream) before or instead of routing.
ROUTER_ANSWER = Decision(route="cold", cache="bypass", served_by="router")
_UPSTREAMS = frozenset({"cloud", "edge"})  # answers after which the router waited for one


def _request_id(request: HttpRequest) -> str:
    offered = request.headers.get("X-Request-Id")
    return offered if offered is not None and _CLIENT_ID.match(offered) else new_request_id()


class AccessRecords:
    """Access-line records made from a template instead of ``Logger.makeRecord``.

    Every access record has the same logger, level, origin, thread and process; only its
    time, arguments and fields differ. ``LogRecord.__init__`` recomputes all of it per line
    (file name and module from the path, the thread's and process's names: a third of a
    line's cost), so the first record of a thread and process is made the standard way and
    later ones copy its attributes and set their own time, exactly as ``LogRecord`` does.
    A custom record factory (``logging.setLogRecordFactory``) is always honoured: with one
    installed, every record is made by it."""

    __slots__ = ("_owner", "_template")

    _TIMES = ("created", "msecs", "relativeCreated")

    def __init__(self) -> None:
        self._owner: tuple[int, int] = (0, 0)
        self._template: dict[str, Any] | None = None

    def make(self, args: tuple[Any, ...], created: float | None = None) -> logging.LogRecord:
        """A record of ``args`` made at ``created`` (``time.time()``; None: now). The first
        record of a thread and process is made now, by ``Logger.makeRecord``."""
        template = self._template
        owner = (os.getpid(), threading.get_ident())
        if (
            template is None
            or owner != self._owner
            or logging.getLogRecordFactory() is not logging.LogRecord
        ):
            record = access.makeRecord(
                access.name, logging.INFO, __file__, 0, ACCESS_FORMAT, args, None
            )
            if created is not None:  # the answer's time
                _retime(record.__dict__, created)
            if type(record) is logging.LogRecord:
                self._template = dict(record.__dict__)
                self._owner = owner
            return record
        record = _new_record(logging.LogRecord)
        fields = record.__dict__
        fields.update(template)
        _retime(fields, time.time() if created is None else created)
        fields["args"] = args
        if "taskName" in fields:  # Python 3.12+: the asyncio task handling this request
            task = asyncio.current_task()
            fields["taskName"] = task.get_name() if task is not None else None
        return record


def _retime(fields: dict[str, Any], created: float) -> None:
    """A record's fields moved to the time ``created``, its other times kept as LogRecord
    sets them (``relativeCreated`` moves by as much; ``msecs`` as LogRecord computes it)."""
    fields["relativeCreated"] += (created - fields["created"]) * 1000
    fields["created"] = created
    fields["msecs"] = int((created - int(created)) * 1000) + 0.0


ACCESS_FORMAT = "%s %s %s %s %s/%s/%s %.1f ms"
_new_record = object.__new__
_access_records = AccessRecords()


def _log_access(
    request: HttpRequest,
    api: str,
    decision: Decision,
    status: str,
    latency_s: float,
    answered_at: float,
) -> None:
    """One access line. Called only when ``hotcold.access`` is enabled for INFO, so a router
    with the access log off (``logging.access_log: false`` or a level above INFO) builds
    nothing for it. The record is made (:class:`AccessRecords`) and handed to the handlers
    directly: ``Logger.info`` would first walk the stack to find the caller's file and line,
    two thirds of a line's cost, for a line whose origin is always this function. With the
    plain-lines set-up :func:`hotcold.logs.direct_handler` allows, the line is formatted
    here and written to the handler directly: the same bytes, no record at all."""
    args = (
        request.method,
        request.path,
        status,
        decision.model,
        decision.route,
        decision.cache,
        decision.served_by,
        latency_s * 1000,
    )
    handler = direct_handler(access)
    if handler is not None:
        formatter = cast(PlainFormatter, handler.formatter)
        message = ACCESS_FORMAT % args
        handler.write_line(
            formatter.info_line(access.name, message, REQUEST_ID_CONTEXT.get(), answered_at)
        )
        return
    record = _access_records.make(args, answered_at)
    fields = record.__dict__
    fields["api"] = api
    fields["model"] = decision.model
    fields["route"] = decision.route
    fields["cache"] = decision.cache
    fields["served_by"] = decision.served_by
    fields["status"] = int(status) if status.isdigit() else status
    fields["latency_ms"] = round(latency_s * 1000, 2)
    access.handle(record)


def _account(
    parts: RouterParts,
    request: HttpRequest,
    api: str,
    decision: Decision,
    status: str,
    latency_s: float,
    finished: float,
    first_token_s: float | None,
    answered_at: float,
) -> None:
    """An answered inference request's counters, latency histograms and access line
    (``answered_at``: the answer's wall-clock time, the access line's time)."""
    parts.metrics.count_answer(
        api,
        (decision.route, decision.cache, decision.served_by, decision.model),
        status,
        latency_s,
        finished,
        request.get(TENANT, OTHER),
        first_token_s,
    )
    if access.isEnabledFor(logging.INFO):  # a dictionary lookup when off
        _log_access(request, api, decision, status, latency_s, answered_at)


def _refuse_overload() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the router is at its concurrent request limit; retry shortly",
        code="overloaded",
        retry_after_s=1,
    )


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The router's one aiohttp middleware (one layer, not three: each layer is a coroutine
    and a wrapper per request). Inference requests go through :func:`answer_inference`;
    everything else gets a request id (on the answer and on every log line) and errors in
    the OpenAI shape. (The front door, hotcold/front.py, calls :func:`answer_inference`
    itself for the inference requests it serves.) Before any other route, the bookkeeping
    still owed is done: /metrics, the admin API and the dashboard count every answer sent."""
    api = _INFERENCE_PATHS.get(request.path)
    if api is not None:
        return await answer_inference(request, api, handler)
    parts_of(request).dispatcher.bookkeeping.run()
    request[REQUEST_ID] = request_id = _request_id(request)
    context = REQUEST_ID_CONTEXT.set(request_id)
    try:
        response = await answer_errors(request, handler)
    finally:
        REQUEST_ID_CONTEXT.reset(context)
    if not response.prepared and "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = request_id
    return response


async def answer_inference(
    request: HttpRequest, api: str, handler: Callable[[Any], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """An inference request, whichever transport brought it; three jobs in order:

    1. context: a request id (the client's ``X-Request-Id`` when well-formed) on the answer and
       on every log line, the route headers, the request counters and latency histogram, and
       the access line;
    2. errors: every failure becomes the OpenAI error shape (:func:`hotcold.http.answer_errors`);
    3. shedding: past ``server.max_concurrent_requests`` inference requests in flight, 503 at
       once: a fast refusal the client can retry beats queueing until memory runs out. Health,
       metrics and admin are never shed.
    """
    request[REQUEST_ID] = request_id = _request_id(request)
    context = REQUEST_ID_CONTEXT.set(request_id)  # every log line of this request carries it
    started = time.perf_counter()
    status = "cancelled"
    recorded: RequestTrace | None = None
    response: web.StreamResponse
    parts = parts_of(request)
    try:
        if parts.tracing.enabled:  # the request's span, current while it is handled
            recorded = parts.tracing.start(request, api)
        in_flight = parts.in_flight
        if in_flight.count >= parts.config.server.max_concurrent_requests:
            parts.metrics.count_refused("overloaded")
            response = error_response(request, _refuse_overload())
        else:
            in_flight.count += 1
            try:
                response = await answer_errors(request, handler)
            finally:
                in_flight.count -= 1
        status = str(response.status)
    finally:
        decision: Decision = request.get(DECISION, ROUTER_ANSWER)
        finished = time.perf_counter()
        first_token_at = request.get(FIRST_TOKEN_AT)  # set by a relayed stream
        # The counters and the access line change nothing the client gets: bookkeeping
        # (router/bookkeeping.py), in a copy of this context (its log lines keep the request
        # id). An answer from an upstream leaves it for the router's next wait for one;
        # any other answer has it done in the loop's next turn, before anything new is read.
        bookkeeping = parts.dispatcher.bookkeeping
        bookkeeping.defer(
            _account,
            parts,
            request,
            api,
            decision,
            status,
            finished - started,
            finished,
            None if first_token_at is None else first_token_at - started,
            time.time(),
        )
        if decision.served_by not in _UPSTREAMS:
            bookkeeping.run_soon()
        if recorded is not None:
            parts.tracing.finish(
                recorded,
                (decision.route, decision.cache, decision.served_by, decision.model),
                status,
                request.get(TENANT, OTHER),
            )
        REQUEST_ID_CONTEXT.reset(context)
    if not response.prepared:
        headers = response.headers
        if "X-Request-Id" not in headers:
            headers["X-Request-Id"] = request_id
        if "X-Route" not in headers:  # the dispatcher's own answers carry all three already
            for name, value in decision.headers().items():
                headers.setdefault(name, value)
    return response
