"""Who is asking, and how much they may ask: API keys, rate limits, token quotas, edge shares.

- **Keys.** Clients send ``Authorization: Bearer <key>``. The config holds only each key's
  SHA-256; a presented key is hashed and looked up, and the match confirmed with a
  constant-time comparison. With no keys configured the router is in *open mode* (it warns at
  start-up): the ``X-Tenant`` header names the tenant, which is fine behind a gateway that
  authenticates, and nowhere else. With keys, ``X-Tenant`` is ignored: the key decides.
- **Rate limits.** A token bucket per tenant for requests per second (``burst`` deep) and one
  for upstream tokens per minute; an empty bucket answers 429 with ``Retry-After`` (the time
  until it refills). Tokens are debited after the answer, from its ``usage``, so a tenant can
  overdraw by one answer and then waits; cache hits cost no upstream tokens and are free.
- **Edge shares.** Under contention (the edge more than half full) a tenant holds at most its
  weighted fair share of the edge's in-flight slots (``edge_weight`` against the weights of the
  tenants holding slots), and never more than ``edge_share`` of them; the rest of its hot
  misses go to the cloud. One tenant's burst cannot take the edge from the others.

State per tenant is bounded: at most ``tenants.max_tracked`` tenants are tracked, the least
recently seen forgotten first (in open mode anyone can invent tenant names).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from hotcold.http import HttpRequest
from hotcold.wire import BadRequest, RateLimited, Unauthorized
from router.config import TENANT_PATTERN, TenantLimits, TenantsConfig

DEFAULT_TENANT = "default"
_TENANT = re.compile(TENANT_PATTERN)
_BEARER = re.compile(r"^Bearer\s+(\S+)$", re.IGNORECASE)
MAX_KEY_CHARS = 512


def bearer_token(http: HttpRequest) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    match = _BEARER.match(http.headers.get("Authorization", ""))
    return match.group(1) if match else None


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, config: TenantsConfig) -> None:
        self._by_digest = {key.sha256: (key.tenant, key.sha256) for key in config.api_keys}
        self._require_keys = config.require_keys

    def reconfigure(self, keys: Iterable[tuple[str, str]], require_keys: bool) -> None:
        """The keys in effect now, as (tenant, sha256): the file's and the live ones
        (router/live_keys.py). Swapped in one assignment: a request sees the old or the new."""
        self._by_digest = {digest: (tenant, digest) for tenant, digest in keys}
        self._require_keys = require_keys

    @property
    def open_mode(self) -> bool:
        return not self._by_digest and not self._require_keys

    def tenant(self, http: HttpRequest) -> str:
        """The request's tenant, or 401 in the OpenAI shape."""
        if self.open_mode:
            offered = http.headers.get("X-Tenant")
            if offered is None:
                return DEFAULT_TENANT
            if not _TENANT.match(offered):
                raise BadRequest(
                    "X-Tenant must be 1-64 characters of letters, digits, '.', '_', '-'",
                    code="bad_tenant",
                    param="X-Tenant",
                )
            return offered
        key = bearer_token(http)
        if key is None or len(key) > MAX_KEY_CHARS:
            raise Unauthorized("send your API key as 'Authorization: Bearer <key>'")
        digest = key_digest(key)
        entry = self._by_digest.get(digest)
        # The lookup is by digest (its timing says nothing about the key); the match is
        # confirmed in constant time, so no path compares secrets byte by byte.
        if entry is None or not hmac.compare_digest(digest, entry[1]):
            raise Unauthorized("unknown API key")
        return entry[0]


@dataclass
class TokenBucket:
    rate_per_s: float
    capacity: float
    level: float
    updated_at: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated_at) * self.rate_per_s)
        self.updated_at = now

    def wait_s(self, now: float, amount: float = 1.0) -> float:
        """0 when ``amount`` is available now, else seconds until it is."""
        self.refill(now)
        if self.level >= amount:
            return 0.0
        return (amount - self.level) / self.rate_per_s


@dataclass
class TenantState:
    limits: TenantLimits
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    edge_inflight: int = 0
    throttled: dict[str, int] = field(default_factory=dict)


def _buckets(limits: TenantLimits, now: float) -> tuple[TokenBucket | None, TokenBucket | None]:
    """Full buckets for requests/s (``burst`` deep) and tokens/min, None where unlimited."""
    requests = tokens = None
    if limits.requests_per_s is not None:
        burst = float(limits.burst or max(1, math.ceil(limits.requests_per_s)))
        requests = TokenBucket(limits.requests_per_s, burst, burst, now)
    if limits.tokens_per_min is not None:
        per_min = float(limits.tokens_per_min)
        tokens = TokenBucket(per_min / 60.0, per_min, per_min, now)
    return requests, tokens


class TenantLimiter:
    def __init__(self, config: TenantsConfig, edge_slots: int) -> None:
        self._config = config
        self._edge_slots = edge_slots
        self._states: OrderedDict[str, TenantState] = OrderedDict()
        self.edge_inflight = 0

    def limits_of(self, tenant: str) -> TenantLimits:
        """The tenant's limits as configured now."""
        return self._config.overrides.get(tenant, self._config.default)

    def reconfigure(self, config: TenantsConfig, now: float) -> None:
        """New limits, live: a tenant whose limits changed starts on fresh buckets (its edge
        slots are carried over, so the count of slots held stays true)."""
        self._config = config
        for tenant, state in self._states.items():
            limits = self.limits_of(tenant)
            if state.limits != limits:
                state.limits = limits
                state.requests, state.tokens = _buckets(limits, now)

    def state(self, tenant: str, now: float) -> TenantState:
        state = self._states.get(tenant)
        if state is not None:
            self._states.move_to_end(tenant)
            return state
        limits = self.limits_of(tenant)
        state = TenantState(limits, *_buckets(limits, now))
        self._states[tenant] = state
        while len(self._states) > self._config.max_tracked:
            oldest, dropped = next(iter(self._states.items()))
            if dropped.edge_inflight:  # still holds edge slots: keep it, try the next
                self._states.move_to_end(oldest)
                break
            del self._states[oldest]
        return state

    def admit(self, tenant: str, now: float) -> None:
        """Take one request from the tenant's buckets, or raise 429 with Retry-After."""
        state = self.state(tenant, now)
        if state.requests is not None:
            wait = state.requests.wait_s(now)
            if wait > 0:
                self.throttled(state, "requests")
                raise RateLimited(
                    f"tenant {tenant!r} is over its {state.limits.requests_per_s:g} requests/s",
                    code="rate_limited",
                    retry_after_s=wait,
                )
            state.requests.level -= 1
        if state.tokens is not None:
            wait = state.tokens.wait_s(now, amount=1.0)
            if wait > 0:
                self.throttled(state, "tokens")
                raise RateLimited(
                    f"tenant {tenant!r} used its {state.limits.tokens_per_min} tokens/min",
                    code="quota_exceeded",
                    retry_after_s=wait,
                )

    @staticmethod
    def throttled(state: TenantState, why: str) -> None:
        state.throttled[why] = state.throttled.get(why, 0) + 1

    def debit_tokens(self, tenant: str, count: int, now: float) -> None:
        """Tokens an answer used, against the tenant's token bucket. Every answer from an
        upstream calls this: a tenant without a token limit costs one lookup."""
        if count <= 0 or self.limits_of(tenant).tokens_per_min is None:
            return
        state = self.state(tenant, now)
        if state.tokens is not None:
            state.tokens.refill(now)
            state.tokens.level -= count  # may go below zero: the tenant waits it off

    # ---- the edge's slots --------------------------------------------------------------------

    def take_edge_slot(self, tenant: str, now: float) -> bool:
        """A slot on the edge for this tenant's hot miss, or False (it goes to the cloud)."""
        slots = self._edge_slots
        if self.edge_inflight >= slots:
            return False
        state = self.state(tenant, now)
        limits = state.limits
        if state.edge_inflight >= max(1, math.floor(limits.edge_share * slots)):
            return False
        if self.edge_inflight >= slots / 2:  # contention: weighted fair share
            holders = [s for s in self._states.values() if s.edge_inflight > 0]
            weights = sum(s.limits.edge_weight for s in holders if s is not state)
            weights += limits.edge_weight
            fair = slots * limits.edge_weight / weights
            if state.edge_inflight >= max(1.0, fair):
                return False
        state.edge_inflight += 1
        self.edge_inflight += 1
        return True

    def release_edge_slot(self, tenant: str) -> None:
        state = self._states.get(tenant)
        if state is not None and state.edge_inflight > 0:
            state.edge_inflight -= 1
        self.edge_inflight = max(0, self.edge_inflight - 1)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            tenant: {
                "edge_inflight": state.edge_inflight,
                "throttled": dict(state.throttled),
                "requests_available": None
                if state.requests is None
                else round(state.requests.level, 2),
                "tokens_available": None if state.tokens is None else round(state.tokens.level),
            }
            for tenant, state in self._states.items()
        }
