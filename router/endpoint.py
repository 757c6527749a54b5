"""One upstream server and what the router knows of its health and load."""

from __future__ import annotations

from typing import Any

from router import http1
from router.breaker import CircuitBreaker

EWMA_ALPHA = 0.2  # weight of the newest latency sample


class Endpoint:
    """One upstream server and what we know of its health and load."""

    def __init__(
        self, url: str, breaker: CircuitBreaker, headers: dict[str, str] | None = None
    ) -> None:
        self.url = url
        self.breaker = breaker
        self.headers = headers or {"Content-Type": "application/json"}  # credentials included
        self.outstanding = 0  # requests on it now; changed only through a Lease
        self.latency_ewma_s: float | None = None
        self.busy_until = 0.0
        self.last_ok_at: float | None = None
        self.last_error: str | None = None
        self.origin = http1.Origin.parse(url)
        self._heads: dict[str, bytes] = {}  # one per API path used: a handful

    def head_for(self, path: str) -> bytes:
        """The head of a POST of ``path`` to this endpoint with its own headers (credentials
        included), built once: per-request headers are appended to it."""
        head = self._heads.get(path)
        if head is None:
            head = self._heads[path] = http1.request_head(self.origin, path, self.headers)
        return head

    def observe_ok(self, latency_s: float, now: float) -> None:
        self.breaker.record_success()
        self.last_ok_at = now
        if self.latency_ewma_s is None:
            self.latency_ewma_s = latency_s
        else:
            self.latency_ewma_s += EWMA_ALPHA * (latency_s - self.latency_ewma_s)

    def observe_failure(self, reason: str) -> None:
        self.breaker.record_failure()
        self.last_error = reason

    def snapshot(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.breaker.state.value,
            "outstanding": self.outstanding,
            "latency_ewma_ms": None
            if self.latency_ewma_s is None
            else round(self.latency_ewma_s * 1000, 2),
            "times_ejected": self.breaker.times_opened,
            "last_error": self.last_error,
        }


class Lease:
    """One request's hold on an endpoint: counted in ``outstanding`` from creation until
    :meth:`release`, which may be called any number of times (the first one counts), so every
    way an attempt or a stream can end releases it exactly once."""

    __slots__ = ("_endpoint", "_held")

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._held = True
        endpoint.outstanding += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._endpoint.outstanding -= 1
