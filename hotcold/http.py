"""aiohttp glue shared by the three services: body reading, content negotiation, errors.

The one error middleware here is the only place an exception becomes an HTTP answer, so every
service answers bad input and internal faults the same way: the OpenAI error shape, the right
status, and never a traceback on the wire (the traceback goes to the log).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hotcold.front import FrontRequest
from hotcold.wire.codec import accepts_only_msgpack, decode_body, encode_body, wants_msgpack
from hotcold.wire.errors import (
    ApiError,
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    error_body,
)

log = logging.getLogger("hotcold.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A request from either transport: aiohttp's, or the front door's for the routes it serves
# (hotcold/front.py). What the request path reads of one is common to both.
HttpRequest = web.Request | FrontRequest

# Each service puts its body limit here (and gives the same value to the Application's
# client_max_size, which enforces it while reading).
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)
BODY_TIMEOUT_S = web.AppKey("body_timeout_s", float)  # optional: a slow client gets 408

_HTTP_STATUS_TYPES = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    if "X-Request-Id" not in response.headers:
        offered = request.headers.get("X-Request-Id", "")
        response.headers["X-Request-Id"] = (
            offered if _CLIENT_ID.match(offered) else uuid.uuid4().hex
        )


def install_request_ids(app: web.Application) -> None:
    """Every answer of the app names its request (the client's ``X-Request-Id`` when it sent
    a well-formed one, else a fresh one), errors and streams included: the header is set as
    the response is prepared. The router sets its own (with logging context) first."""
    app.on_response_prepare.append(_add_request_id)


def respond(
    request: web.Request,
    document: Any,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Answer with JSON, or msgpack when the client's Accept header asks for it."""
    body, content_type = encode_body(document, wants_msgpack(request.headers.get("Accept")))
    response = web.Response(body=body, status=status, headers=headers)
    response.content_type = content_type
    return response


def error_response(request: HttpRequest, exc: ApiError) -> web.Response:
    return _error(request, exc.body(), exc.status, exc.headers())


def _error(
    request: HttpRequest, document: dict[str, Any], status: int, headers: dict[str, str]
) -> web.Response:
    """Errors are JSON (every client reads it), msgpack for a client that reads only that."""
    as_msgpack = accepts_only_msgpack(request.headers.get("Accept"))
    body, content_type = encode_body(document, as_msgpack=as_msgpack)
    response = web.Response(body=body, status=status, headers=headers)
    response.content_type = content_type
    return response


async def read_document(request: web.Request) -> dict[str, Any]:
    """Read and decode the body, refusing an oversized one before reading it when we can."""
    return decode_body(await read_body(request), request.headers.get("Content-Type"))


async def read_body(request: HttpRequest) -> bytes:
    """Read the body's bytes (not empty), refusing an oversized one before reading it when
    we can, and a slow one past the app's ``BODY_TIMEOUT_S``; for either transport."""
    # Sub-applications read the root's settings; a front-door request names its app.
    root = request.app if isinstance(request, FrontRequest) else request.match_info.apps[0]
    limit = root[MAX_BODY_BYTES]
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit}")
    timeout_s = root.get(BODY_TIMEOUT_S)
    try:
        if isinstance(request, FrontRequest):
            raw = await request.read(limit, timeout_s)  # no wait when all of it has arrived
        elif (content := request.content).is_eof():  # all here: no wait, timer or read loop
            raw = content.read_nowait()
            if len(raw) > limit:  # a body without a Content-Length, over the limit
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        else:
            async with asyncio.timeout(timeout_s):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"request body is over the limit of {limit} bytes") from exc
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    if not raw:
        raise BadRequest("the request has no body", code="empty_body")
    return raw


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to the OpenAI error shape; log unexpected ones with their traceback."""
    return await answer_errors(request, handler)


async def answer_errors(
    request: HttpRequest, handler: Callable[[Any], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """:func:`error_middleware`'s work for a request from either transport."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind, code = _HTTP_STATUS_TYPES.get(exc.status, ("invalid_request_error", "http_error"))
        message = exc.reason
        if exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        elif exc.status == 413:
            message = "request body is over the size limit"
        kept = {h: exc.headers[h] for h in ("Allow", "Retry-After") if h in exc.headers}
        return _error(request, error_body(message, kind, code), exc.status, kept)
    except (ConnectionResetError, OSError) as exc:
        # The client went away while we were writing: nothing left to answer.
        log.debug("client connection lost on %s: %s", request.path, exc)
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        document = error_body(
            "internal error; it has been logged", "server_error", "internal_error"
        )
        return _error(request, document, 500, {})
