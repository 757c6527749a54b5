"""Per request: decide where it goes, get the answer, and hand it back with the route headers.

Every answer carries ``X-Route`` (hot|cold), ``X-Cache`` (hit|miss|bypass) and ``X-Served-By``
(cache|edge|cloud; ``router`` when the router itself answered with an error).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from hotcold.wire import (
    ApiError,
    InferenceRequest,
    encode_body,
    error_body,
    sse_event,
    wants_msgpack,
)
from hotcold.wire.sse import SSE_HEADERS
from router.clock import Clock
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.upstream import StreamBroken, UpstreamPool, UpstreamReply

log = logging.getLogger("hotcold.dispatch")


@dataclass(frozen=True, slots=True)
class Decision:
    route: str  # "hot" | "cold"
    cache: str  # "hit" | "miss" | "bypass"
    served_by: str  # "cache" | "edge" | "cloud"

    def headers(self) -> dict[str, str]:
        return {"X-Route": self.route, "X-Cache": self.cache, "X-Served-By": self.served_by}


REQUEST_ID = web.RequestKey("request_id", str)
DECISION = web.RequestKey("decision", Decision)


class Dispatcher:
    def __init__(
        self, config: RouterConfig, cloud: UpstreamPool, metrics: RouterMetrics, clock: Clock
    ) -> None:
        self._config = config
        self._cloud = cloud
        self._metrics = metrics
        self._clock = clock

    async def serve(self, http: web.Request, request: InferenceRequest) -> web.StreamResponse:
        decision = Decision(route="cold", cache="bypass", served_by="cloud")
        http[DECISION] = decision
        deadline_at = self._clock.now() + self._config.server.request_deadline_s
        body = orjson.dumps(request.body)
        headers = {"X-Request-Id": http.get(REQUEST_ID, "")}
        try:
            if request.stream:
                return await self._stream(http, request, decision, body, deadline_at, headers)
            reply = await self._cloud.complete(request.path, body, deadline_at, headers)
        except ApiError:
            # No upstream produced a body: the router answers the error itself.
            http[DECISION] = replace(decision, served_by="router")
            raise
        return self._reply(http, reply, decision)

    def _reply(self, http: web.Request, reply: UpstreamReply, decision: Decision) -> web.Response:
        headers = decision.headers()
        try:
            document: Any = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            document = None
        if reply.status >= 400:
            if not (isinstance(document, dict) and isinstance(document.get("error"), dict)):
                document = error_body(
                    f"upstream answered {reply.status}", "upstream_error", "upstream_error"
                )
            body, content_type = encode_body(document, as_msgpack=False)
            response = web.Response(body=body, status=reply.status, headers=headers)
            response.content_type = content_type
            return response
        if not isinstance(document, dict):
            log.warning("upstream %s sent a body that is not a JSON object", reply.endpoint)
            document = error_body(
                "upstream sent an unreadable answer", "upstream_error", "bad_upstream_answer"
            )
            body, content_type = encode_body(document, as_msgpack=False)
            response = web.Response(body=body, status=502, headers=headers)
            response.content_type = content_type
            return response
        self._count_tokens(document, decision)
        if wants_msgpack(http.headers.get("Accept")):
            body, content_type = encode_body(document, as_msgpack=True)
        else:
            body, content_type = reply.body, "application/json"
        response = web.Response(body=body, headers=headers)
        response.content_type = content_type
        return response

    async def _stream(
        self,
        http: web.Request,
        request: InferenceRequest,
        decision: Decision,
        body: bytes,
        deadline_at: float,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        upstream = await self._cloud.open_stream(request.path, body, deadline_at, headers)
        if isinstance(upstream, UpstreamReply):
            return self._reply(http, upstream, decision)
        response = web.StreamResponse(
            headers={**SSE_HEADERS, **decision.headers(), "X-Request-Id": http.get(REQUEST_ID, "")}
        )
        try:
            await response.prepare(http)
            try:
                async for chunk in upstream.chunks(self._config.server.stream_idle_timeout_s):
                    await response.write(chunk)
            except StreamBroken as exc:
                log.warning("stream from %s broke: %s", upstream.endpoint, exc)
                await response.write(
                    sse_event(error_body(str(exc), "upstream_error", "stream_broken"))
                )
            await response.write_eof()
        finally:
            upstream.close()  # no-op after a clean end; frees the upstream slot otherwise
        return response

    def _count_tokens(self, document: dict[str, Any], decision: Decision) -> None:
        usage = document.get("usage")
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens")
            completion = usage.get("completion_tokens")
            if isinstance(prompt, int) and prompt >= 0:
                self._metrics.tokens.labels("in", decision.served_by).inc(prompt)
            if isinstance(completion, int) and completion >= 0:
                self._metrics.tokens.labels("out", decision.served_by).inc(completion)
