"""A pool of OpenAI-compatible upstream servers: balancing, ejection, retries, streaming.

Used twice: for the cloud GPU pool, and for the edge node (a pool of one, so its breaker and
health checks come for free).

Balancing: least outstanding requests, ties broken by the latency EWMA and then at random.
With a handful of GPU servers, looking at every member is cheap, and outstanding count is the
best signal of a GPU server's queue we have without asking it.

Ejection: a circuit breaker per endpoint (:mod:`router.breaker`) counts transport errors, 5xx
and timeouts. An ejected endpoint is probed back in by :mod:`router.health` on the pool's
``health_path`` (``/healthz`` by default, ``/health`` for vLLM and its router, ``/v1/models``
for hosted APIs that have neither, with the endpoint's credentials); it is only ever probed
while ejected, and ``/readyz`` probes members that have been quiet for ``stale_after_s``:
health checking is passive first and lazy (redis-py's health-check habit).

Retries: the router retries on another endpoint, with full-jitter backoff, when

- the connection could not be made (refused, DNS, connect timeout): the request never left;
- the server refused it (503 or 429: busy or draining): it was not worked on; the endpoint
  is skipped for its Retry-After (at most 5 s), but not ejected, as it is alive;
- the server failed it (other 5xx) or the connection broke before any byte of the answer was
  relayed to the client. Inference has no side effect, so redoing it costs only GPU time.

A timeout is different: the request's deadline covers all attempts, so when it passes
mid-generation there is no time left for another; the client gets 504 and the endpoint a
failure. We do not hedge (send a second copy early): it doubles cloud cost for the tail.
Once a stream has started relaying to the client, a break cannot be retried without
duplicating text, so the client gets an SSE error event and the stream ends cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import aiohttp

from hotcold.deadline import deadline
from router import http1
from router.breaker import BreakerParams, CircuitBreaker
from router.clock import Clock
from router.config import PoolConfig
from router.endpoint import Endpoint, Lease
from router.errors import DeadlineExceeded, NoHealthyUpstream, UpstreamFailed
from router.health import PoolHealth
from router.retry import Backoff, FullJitterBackoff
from router.tracing import NO_TRACING, Tracing

log = logging.getLogger("hotcold.upstream")

MAX_BUSY_S = 5.0  # never skip a busy endpoint for longer than this, whatever it asks
DEFAULT_BUSY_S = 1.0  # when a 503/429 carries no usable Retry-After

# Called once per attempt: (pool name, endpoint url, outcome).
AttemptObserver = Callable[[str, str, str], None]


class _Retryable(Exception):
    """An attempt failed in a way another endpoint may not."""


class StreamBroken(Exception):
    """The upstream stream ended abnormally after relaying had started."""


class UpstreamReply(NamedTuple):  # one per answer: a tuple costs a third of a dataclass
    status: int
    body: bytes
    content_type: str
    endpoint: str
    attempts: int
    queue_ms: float | None = None  # the server's own report of its queue wait (X-Queue-Ms)


class UpstreamStream:
    """An SSE answer whose first chunk has arrived; relay the rest with :meth:`chunks`."""

    def __init__(
        self,
        pool: UpstreamPool,
        endpoint: Endpoint,
        lease: Lease,
        response: http1.Response,
        first: bytes,
        attempts: int,
    ) -> None:
        self.endpoint = endpoint.url
        self.attempts = attempts
        self.queue_ms = _queue_ms(response)
        self._pool = pool
        self._endpoint = endpoint
        self._lease = lease
        self._response = response
        self._first = first
        self._closed = False

    async def chunks(self, idle_timeout_s: float) -> AsyncIterator[bytes]:
        yield self._first
        while True:
            try:
                with deadline(idle_timeout_s):
                    chunk = await self._response.readany()
            except TimeoutError as exc:
                self._finish(f"no data for {idle_timeout_s}s mid-stream")
                raise StreamBroken(f"upstream sent nothing for {idle_timeout_s}s") from exc
            except http1.ClientError as exc:
                self._finish(f"stream broke: {exc!r}")
                raise StreamBroken("upstream connection broke mid-stream") from exc
            if not chunk:
                self._finish(None)
                return
            yield chunk

    def _finish(self, error: str | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._lease.release()
        if error is None:
            self._endpoint.breaker.record_success()
            self._response.release()
            self._pool.observe(self._endpoint.url, "ok")
        else:
            self._endpoint.observe_failure(error)
            self._response.close()
            self._pool.observe(self._endpoint.url, "stream_broken")

    def close(self) -> None:
        """Stop relaying (client gone, or done): the upstream connection is closed, which
        tells the server to stop generating and frees its slot."""
        if self._closed:
            return
        self._closed = True
        self._lease.release()
        self._endpoint.breaker.release_trial()
        self._response.close()
        self._pool.observe(self._endpoint.url, "cancelled")


class UpstreamPool:
    def __init__(
        self,
        name: str,
        config: PoolConfig,
        session: aiohttp.ClientSession,
        client: http1.Http1Client,
        clock: Clock,
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        observer: AttemptObserver | None = None,
        api_keys: dict[str, str] | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        """``api_keys``: each endpoint's key (router/pools.py resolves them from the config's
        environment variables and files); ``config.api_key`` is the literal fallback.
        ``client`` carries the requests (router/http1.py); ``session`` the health probes."""
        self.name = name
        self.config = config
        self._client = client
        self._clock = clock
        self._backoff = backoff or FullJitterBackoff(config.backoff.base_s, config.backoff.cap_s)
        self._rng = rng or random.Random()
        self._observer = observer
        self._tracing = tracing
        params = BreakerParams(
            config.breaker.failure_threshold, config.breaker.open_s, config.breaker.max_open_s
        )
        keys = api_keys or {}
        literal = config.api_key.get_secret_value() if config.api_key is not None else None
        self.endpoints = [
            Endpoint(url, CircuitBreaker(params, clock), _headers(keys.get(url) or literal))
            for url in config.endpoints
        ]
        self.health = PoolHealth(name, self.endpoints, config, session, clock, self.observe)

    # ---- selection -------------------------------------------------------------------

    def pick(self, exclude: set[str]) -> Endpoint | None:
        now = self._clock.now()
        best: Endpoint | None = None
        best_key: tuple[int, float, float] | None = None
        for endpoint in self.endpoints:
            if endpoint.url in exclude or endpoint.busy_until > now:
                continue
            if not endpoint.breaker.allows_request():
                continue
            key = (endpoint.outstanding, endpoint.latency_ewma_s or 0.0, self._rng.random())
            if best_key is None or key < best_key:
                best, best_key = endpoint, key
        return best

    def available(self) -> bool:
        return self.pick(set()) is not None

    @property
    def outstanding(self) -> int:
        return sum(endpoint.outstanding for endpoint in self.endpoints)

    def seconds_until_available(self) -> float:
        now = self._clock.now()
        waits = [max(e.breaker.seconds_until_trial(), e.busy_until - now) for e in self.endpoints]
        return max(0.0, min(waits)) if waits else 1.0

    def observe(self, url: str, outcome: str) -> None:
        if self._observer is not None:
            self._observer(self.name, url, outcome)

    # ---- requests ----------------------------------------------------------------------

    async def complete(
        self, path: str, body: bytes, deadline_at: float, headers: dict[str, str] | None = None
    ) -> UpstreamReply:
        result = await self._with_retries(path, body, deadline_at, headers, stream=False)
        assert isinstance(result, UpstreamReply)
        return result

    async def open_stream(
        self, path: str, body: bytes, deadline_at: float, headers: dict[str, str] | None = None
    ) -> UpstreamStream | UpstreamReply:
        """An SSE stream, or a plain reply when the upstream answered with an error."""
        return await self._with_retries(path, body, deadline_at, headers, stream=True)

    async def _with_retries(
        self,
        path: str,
        body: bytes,
        deadline_at: float,
        headers: dict[str, str] | None,
        *,
        stream: bool,
    ) -> UpstreamReply | UpstreamStream:
        if not self.endpoints:
            raise NoHealthyUpstream(f"the {self.name} pool has no endpoints configured")
        tried: set[str] = set()
        last_error = ""
        attempt = 0
        while attempt < self.config.max_attempts:
            endpoint = self.pick(tried) or self.pick(set())
            if endpoint is None:
                break
            attempt += 1
            tried.add(endpoint.url)
            remaining = deadline_at - self._clock.now()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"the request's deadline passed after {attempt - 1} attempts"
                )
            try:
                return await self._attempt(
                    endpoint, path, body, remaining, headers, stream, attempt
                )
            except _Retryable as exc:
                last_error = f"{endpoint.url}: {exc}"
                log.info("%s attempt %d failed: %s", self.name, attempt, last_error)
            if attempt < self.config.max_attempts:
                pause = self._backoff.compute(attempt)
                pause = min(pause, max(0.0, deadline_at - self._clock.now()))
                if pause > 0:
                    await asyncio.sleep(pause)
        if attempt == 0:
            raise NoHealthyUpstream(
                f"every {self.name} endpoint is ejected or busy",
                retry_after_s=self.seconds_until_available() or 1.0,
            )
        # The client learns how it ended, never where: endpoint addresses stay in the log.
        log.warning("%s pool gave up after %d attempt(s); last: %s", self.name, attempt, last_error)
        raise UpstreamFailed(
            f"the {self.name} pool could not answer after {attempt} attempt(s)",
            retry_after_s=self.seconds_until_available() or 1.0,
        )

    async def _attempt(
        self,
        endpoint: Endpoint,
        path: str,
        body: bytes,
        remaining_s: float,
        headers: dict[str, str] | None,
        stream: bool,
        attempt: int,
    ) -> UpstreamReply | UpstreamStream:
        head = endpoint.head_for(path)  # before the lease: a bad header value holds nothing
        if headers:
            head += http1.encode_headers(headers)
        lease = Lease(endpoint)
        endpoint.breaker.on_attempt()
        started = self._clock.now()
        response: http1.Response | None = None
        handed_over = False
        outcome = "failed"
        traced = None
        if self._tracing.enabled:  # a CLIENT span per attempt; its traceparent goes upstream
            traced = self._tracing.attempt(self.name, endpoint.url, attempt, path)
            if traced is not None:
                head += http1.encode_headers(traced.headers)
        try:
            # The whole attempt is bounded by the request's deadline; the client bounds only a
            # new connection's set-up.
            with deadline(remaining_s):
                response = await self._client.post(
                    endpoint.origin, head, body, connect_timeout_s=self.config.connect_timeout_s
                )
                status = response.status
                if status in (429, 503):
                    endpoint.busy_until = self._clock.now() + _retry_after(response)
                    endpoint.breaker.release_trial()
                    outcome = "refused"
                    raise _Retryable(f"refused with {status}")
                if status >= 500 or status in (401, 403):
                    # 401/403: the endpoint refused *our* credentials (a bad or rotated key),
                    # not the client's request: eject it and try another, never tell the
                    # client its own key is wrong.
                    outcome = "failed"
                    endpoint.observe_failure(f"status {status}")
                    raise _Retryable(f"answered {status}")
                if stream and status == 200:
                    first = await response.readany()
                    if not first:
                        endpoint.observe_failure("empty stream")
                        raise _Retryable("stream ended before its first event")
                    endpoint.observe_ok(self._clock.now() - started, self._clock.now())
                    handed_over = True
                    outcome = "ok"
                    return UpstreamStream(self, endpoint, lease, response, first, attempt)
                payload = await response.read()
            if status < 400:
                endpoint.observe_ok(self._clock.now() - started, self._clock.now())
                outcome = "ok"
            else:  # the request was bad, not the server
                endpoint.breaker.record_success()
                outcome = "client_error"
            return UpstreamReply(
                status,
                payload,
                response.content_type or "application/json",
                endpoint.url,
                attempt,
                _queue_ms(response),
            )
        except TimeoutError as exc:
            outcome = "timeout"
            endpoint.observe_failure("timed out")
            raise DeadlineExceeded(
                f"no answer from the {self.name} pool within the request's deadline"
            ) from exc
        except http1.ConnectFailed as exc:
            outcome = "connect_failed"
            endpoint.observe_failure(f"cannot connect: {exc.os_error}")
            raise _Retryable(f"cannot connect ({exc.os_error})") from exc
        except http1.ClientError as exc:
            outcome = "broken"
            endpoint.observe_failure(f"connection broke: {exc!r}")
            raise _Retryable(f"connection broke: {exc!r}") from exc
        except asyncio.CancelledError:
            outcome = "cancelled"
            endpoint.breaker.release_trial()
            raise
        finally:
            if not handed_over:
                lease.release()
                if response is not None:
                    if outcome in ("ok", "client_error"):
                        response.release()
                    else:
                        response.close()
            self.observe(endpoint.url, outcome)
            if traced is not None:
                self._tracing.end_attempt(
                    traced, outcome, response.status if response is not None else None
                )

    # ---- health (router/health.py) --------------------------------------------------------

    async def probe(self, endpoint: Endpoint) -> bool:
        return await self.health.probe(endpoint)

    async def run_prober(self) -> None:
        await self.health.run_prober()

    async def check_ready(self) -> bool:
        return await self.health.check_ready()

    def snapshot(self) -> list[dict[str, Any]]:
        return [endpoint.snapshot() for endpoint in self.endpoints]


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _queue_ms(response: http1.Response) -> float | None:
    raw = response.headers.get("x-queue-ms")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def _retry_after(response: http1.Response) -> float:
    raw = response.headers.get("retry-after", "")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = DEFAULT_BUSY_S
    return min(max(seconds, 0.0), MAX_BUSY_S)
