"""The router's configuration: parsed once, validated, frozen.

Precedence, lowest first: built-in defaults < environment (``HOTCOLD_*``) < the YAML file
(``--config``; a ``null`` there leaves what the environment sets) < command-line flags. Every
key, its unit and its default are listed in ``configs/router.yaml``; an unknown key or a bad
value stops start-up with a message naming the key and the value.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from router.errors import ConfigError

MiB = 1024 * 1024


class _Frozen(BaseModel):
    # A field's docstring (the string under it) is its description: the one declaration that
    # the reference config, the flags' help and the docs are produced from (router/settings.py).
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def setting(
    default: Any = PydanticUndefined,
    *,
    env: str | None = None,
    flag: str | None = None,
    **constraints: Any,
) -> Any:
    """A field that a person also sets from the environment (``env``) or the command line
    (``flag``): both are derived from here (router/settings.py), nowhere else."""
    extra: dict[str, Any] = {}
    if env is not None:
        extra["env"] = env
    if flag is not None:
        extra["flag"] = flag
    return Field(default, json_schema_extra=extra or None, **constraints)


def _check_url(url: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url) < 10:
        raise ValueError(f"{url!r} is not an http(s) URL")
    return url.rstrip("/")


class ServerConfig(_Frozen):
    host: str = setting("127.0.0.1", env="HOTCOLD_HOST", flag="--host")
    """address to listen on (0.0.0.0 for all)"""
    port: int = setting(8080, ge=0, le=65535, env="HOTCOLD_PORT", flag="--port")
    """TCP port"""
    workers: int = setting(1, ge=1, le=64, flag="--workers")
    """router processes sharing the port (SO_REUSEPORT; Linux): more cores for forwarding, but
    each keeps its own cache, sketch, counters and /metrics (a fleet's Redis shares the policy
    and the frequencies, not the cache). See docs/benchmarks.md for when it pays"""
    front_door: bool = setting(True, env="HOTCOLD_FRONT_DOOR")
    """true: the inference routes are served by the front door (hotcold/front.py: httptools'
    parser, the body held whole, one write per answer; about 40 µs less CPU per request than
    aiohttp's server, docs/benchmarks.md); false: by aiohttp's server like every other route
    (the same answers; a fallback)"""
    max_body_bytes: int = Field(default=4 * MiB, ge=1024)
    """bytes (4 MiB); a larger request body is refused with 413 before it is read when it declares
    its length, while reading otherwise
    """
    request_deadline_s: float = Field(default=60.0, gt=0)
    """seconds from arrival to the full answer, all retries included; streams: to the first token.
    Past it: 504
    """
    stream_idle_timeout_s: float = Field(default=30.0, gt=0)
    """seconds a started stream may go without a byte from upstream; past it the client gets an SSE
    error event and the stream ends
    """
    shutdown_timeout_s: float = Field(default=15.0, ge=0)
    """seconds SIGTERM waits for in-flight requests to finish"""
    max_concurrent_requests: int = Field(default=2048, ge=1)
    """inference requests in flight; beyond, 503 "overloaded" + Retry-After at once (load shedding,
    before memory runs out)
    """
    body_timeout_s: float = Field(default=10.0, gt=0)
    """a client that has not sent its whole body by then gets 408"""
    max_header_bytes: int = Field(default=8190, ge=1024)
    """longest request line / header field (400 in the OpenAI error shape)"""
    max_headers: int = Field(default=100, ge=8, le=1000)
    """header fields in one request; more: 400 in the OpenAI error shape"""
    idle_timeout_s: float = Field(default=15.0, gt=0)
    """seconds a connection may wait for a complete request's headers (a new one, or the next
    request on a kept-alive one); then it is closed, so slow-header and idle clients cannot
    hold the gateway's connections"""
    header_timeout_s: float = Field(default=10.0, gt=0)
    """seconds a new connection may take to send its first request's headers (a client
    trickling them is closed then; later requests are bounded by idle_timeout_s)"""
    max_connections: int = Field(default=10_000, ge=1)
    """open client connections (file descriptors); beyond, a new connection gets an immediate
    503 too_many_connections and is closed. Lowered at start to the process's descriptor
    limit less a reserve for upstreams, Redis and files, with a warning"""
    max_prompt_chars: int = Field(default=200_000, ge=1)
    """a longer prompt is refused: 400 context_length_exceeded"""
    max_tokens_ceiling: int = Field(default=8192, ge=1)
    """a larger max_tokens is refused: 400 max_tokens_too_large"""


class BackoffConfig(_Frozen):
    base_s: float = Field(default=0.01, ge=0)
    """seconds"""
    cap_s: float = Field(default=0.25, ge=0)
    """seconds"""


class BreakerConfig(_Frozen):
    failure_threshold: int = Field(default=3, ge=1)
    """consecutive failures (transport errors, 5xx, timeouts) to eject"""
    open_s: float = Field(default=1.0, gt=0)
    """seconds ejected before a health probe may take it back; doubles after each failed probe..."""
    max_open_s: float = Field(default=30.0, gt=0)
    """...up to this many seconds (at least open_s)"""

    @model_validator(mode="after")
    def _open_within_max(self) -> BreakerConfig:
        if self.open_s > self.max_open_s:
            raise ValueError(f"open_s ({self.open_s:g}) is above max_open_s ({self.max_open_s:g})")
        return self


class HealthConfig(_Frozen):
    probe_interval_s: float = Field(default=0.5, gt=0)
    """seconds between probes of ejected endpoints (GET health_path); healthy endpoints
    are not polled
    """
    probe_timeout_s: float = Field(default=1.0, gt=0)
    """seconds a probe may take"""
    stale_after_s: float = Field(default=10.0, gt=0)
    """/readyz probes an endpoint first when it has had no successful answer for this many
    seconds"""


class CredentialConfig(_Frozen):
    """Where an upstream's API key comes from: an environment variable or a file (a mounted
    secret). Only the reference is in the config; the key itself is read at start-up and on
    reload, and never logged or shown."""

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    """the name of an environment variable holding the key"""
    file: str | None = None
    """a file holding the key (a mounted secret)"""

    @model_validator(mode="after")
    def _one_source(self) -> CredentialConfig:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self


class PoolConfig(_Frozen):
    """An upstream pool: the cloud GPU servers, or the edge node (a pool of one)."""

    endpoints: tuple[str, ...] = ()
    """base URLs (no /v1) of the pool's OpenAI-compatible servers"""
    """base URLs (no /v1)"""
    api_key: SecretStr | None = None
    """a literal key sent as "Authorization: Bearer <key>" to every endpoint; prefer api_key_env or
    api_key_file (at most one of 3)
    """
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    """the name of an environment variable holding the key"""
    api_key_file: str | None = None
    """a file holding the key (a mounted secret); re-read on reload"""
    endpoint_keys: dict[str, CredentialConfig] = {}
    """per endpoint URL, a key that overrides the pool's, e.g.
    http://gpu-3:8000: {env: GPU3_KEY}   or {file: /run/secrets/k}
    A missing variable or file stops start-up (a reload keeps the last good config); keys are
    never logged or shown"""
    health_path: str = Field(default="/healthz", pattern=r"^/[A-Za-z0-9/._-]{0,200}$")
    """GET path that probes an ejected endpoint back in (200 = healthy): /health for vLLM and
    vllm-router, /v1/models for hosted APIs
    """
    max_attempts: int = Field(default=3, ge=1, le=10)
    """tries per request (1-10), each on another endpoint when one is left; retried: connection
    refused/reset, 5xx, 503/429 (busy)
    """
    connect_timeout_s: float = Field(default=2.0, gt=0)
    """seconds to open a TCP connection to an endpoint"""
    max_connections: int = Field(default=1024, ge=1)
    """upstream connections in use at once, for every upstream together (one client for the
    request path; the `cloud` section's value bounds it, the same key in other pools and the
    edge is not used yet); requests beyond wait for one. Idle kept-alive connections: at most
    64 per upstream, closed after 30 s"""
    backoff: BackoffConfig = BackoffConfig()
    """pause between attempts: uniform in [0, min(cap, base * 2^(n-1))]"""
    breaker: BreakerConfig = BreakerConfig()
    """circuit breaker per endpoint (passive ejection)"""
    health: HealthConfig = HealthConfig()
    """active health checks of ejected endpoints (on health_path)"""

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        urls = tuple(_check_url(url) for url in value)
        if len(set(urls)) != len(urls):
            raise ValueError("an endpoint is listed twice")
        return urls

    @field_validator("endpoint_keys")
    @classmethod
    def _key_urls(cls, value: dict[str, CredentialConfig]) -> dict[str, CredentialConfig]:
        return {_check_url(url): credential for url, credential in value.items()}

    @model_validator(mode="after")
    def _one_pool_key(self) -> PoolConfig:
        sources = [self.api_key, self.api_key_env, self.api_key_file]
        if sum(source is not None for source in sources) > 1:
            raise ValueError("give at most one of api_key, api_key_env, api_key_file")
        unknown = set(self.endpoint_keys) - set(self.endpoints)
        if unknown:
            raise ValueError(f"endpoint_keys names endpoints not in the pool: {sorted(unknown)}")
        return self


# Where a router with no cloud endpoint configured looks: the first cloud stub of `hotcold up`.
DEFAULT_CLOUD_ENDPOINT = "http://127.0.0.1:9001"


class CloudPoolConfig(PoolConfig):
    """The pool named "cloud" (the one the command-line flags set)."""

    # The default lives on the field, not on RouterConfig's section default: a file that sets
    # only `cloud: {breaker: ...}` keeps the default endpoint instead of dropping it.
    endpoints: tuple[str, ...] = setting(
        (DEFAULT_CLOUD_ENDPOINT,), env="HOTCOLD_CLOUD_ENDPOINTS", flag="--cloud-endpoint"
    )
    """base URLs (no /v1) of the pool's OpenAI-compatible servers (the flag repeats; the
    variable takes a comma-separated list)"""


class ReleaseConfig(_Frozen):
    """The edge model's gray release per catalog model (router/gray_release.py): it starts in
    shadow and earns each share of the hot misses on agreement with the cloud, error rate
    and latency; any of them regressing past its margin sends it back to shadow at once."""

    enabled: bool = True
    """false: the edge answers every hot miss it can take, unjudged (the behaviour before)"""
    shares: tuple[float, ...] = (0.05, 0.25, 1.0)
    """the share of hot misses the edge answers at each stage after shadow (increasing,
    the last 1.0)"""
    shadow_rate: float = Field(default=0.1, ge=0, le=1)
    """share of an edge-eligible model's hot requests also computed by the other side (the
    edge while the cloud serves, the cloud once the edge does) and scored for agreement"""
    min_samples: int = Field(default=50, ge=1)
    """comparisons since the last move needed to advance a stage"""
    min_rollback_samples: int = Field(default=20, ge=1)
    """observations since the last move needed before a regression rolls back"""
    window: int = Field(default=200, ge=10, le=100_000)
    """the most recent comparisons, edge outcomes and latencies judged (memory: 4 x window
    floats per model)"""
    min_agreement: float = Field(default=0.8, ge=0, le=1)
    """mean agreement (0..1) needed to advance"""
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    """edge errors per edge attempt allowed to advance"""
    max_latency_ratio: float = Field(default=3.0, gt=0)
    """the edge's median latency over the cloud's allowed to advance"""
    margin: float = Field(default=0.05, ge=0, lt=1)
    """how far past its threshold a measure may drop before a rollback (a share of it)"""
    scorer: Literal["f1", "json", "exact"] = "f1"
    """agreement measure: f1 (token F1, JSON compared parsed), json (parsed JSON equality,
    else exact), exact (after normalisation); router/agreement.py says why"""
    pinned: dict[str, int] = {}
    """a stage per catalog model that the evidence does not move, e.g. {chat-small: 3}
    (0 = shadow)"""
    max_shadow_inflight: int = Field(default=4, ge=0)
    """shadow computations in flight at once; beyond (or under load), samples are skipped:
    shadow work is shed first and never delays or fails a client's request"""

    @field_validator("shares")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0 < x <= 1 for x in value) or list(value) != sorted(value):
            raise ValueError("shares must be increasing values in (0, 1]")
        return value


class LatencyConfig(_Frozen):
    """The edge's latency budget (router/latency_model.py): a hot miss goes to the edge only
    when its predicted time for the tokens asked is within budget against the cloud's."""

    factor: float = Field(default=2.0, gt=0)
    """the edge may take at most this many times the cloud's predicted time"""
    ceiling_s: float | None = Field(default=None, gt=0)
    """and never more than this many seconds (null: no absolute ceiling)"""
    cost_first: bool = False
    """true: send hot misses to the edge whatever its predicted time (cost before latency)"""
    default_tokens: int = Field(default=64, ge=1)
    """tokens assumed for a request that sets no max_tokens"""


class EdgeConfig(PoolConfig):
    """The edge node(s): an upstream pool that takes hot misses."""

    endpoints: tuple[str, ...] = setting((), env="HOTCOLD_EDGE_ENDPOINT", flag="--edge-endpoint")
    """base URLs of the edge node(s). Empty: no edge node, hot misses are computed by the
    cloud"""

    max_attempts: int = Field(default=1, ge=1, le=10)
    """tries on the edge before the request falls back to the cloud"""
    timeout_s: float = Field(default=15.0, gt=0)
    """seconds an edge attempt may take before falling back to the cloud"""
    max_inflight: int = Field(default=32, ge=1)
    """requests outstanding to the edge; beyond, hot misses go to the cloud at once (the hard
    bound; the threshold is the soft one)
    """
    release: ReleaseConfig = ReleaseConfig()
    """the edge model's gray release: shadow, then shares of the hot misses, earned"""
    latency: LatencyConfig = LatencyConfig()
    """the latency budget of the edge against the cloud"""


class ThresholdConfig(_Frozen):
    initial: float = Field(default=2.0, gt=0)
    """starting value"""
    min: float = Field(default=2.0, gt=0)
    """never below: a key must recur within the window to be hot"""
    max: float = Field(default=17.0, gt=0)
    """never above; 17 is above any estimate, i.e. nothing is hot"""
    history_weight: float = Field(default=0.7, ge=0, lt=1)
    """weight of past intervals in the traffic baseline (EWMA, 0..1)"""

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdConfig:
        if not self.min <= self.initial <= self.max:
            raise ValueError(
                f"need min <= initial <= max, got {self.min}, {self.initial}, {self.max}"
            )
        return self


class CapacityConfig(_Frozen):
    queue_delay_slo_ms: float = Field(default=250.0, gt=0)
    """the edge node's queue delay SLO, ms (its X-Queue-Ms answers, or time to first byte when it
    sends none)
    """
    control_interval_s: float = Field(default=1.0, gt=0)
    """seconds between control steps"""
    target_fraction: float = Field(default=0.5, gt=0, le=1)
    """raise the threshold when the delay is above this share of the SLO"""
    idle_fraction: float = Field(default=0.25, gt=0, lt=1)
    """lower it when the delay is below this share (or no edge traffic)"""
    raise_factor: float = Field(default=1.3, gt=1)
    """multiplier per step when raising (> 1)"""
    lower_factor: float = Field(default=0.97, gt=0, lt=1)
    """multiplier per step when lowering (0..1)"""


class SketchConfig(_Frozen):
    width: int = Field(default=0, ge=0)
    """counters per row; 0 = max(1024, 4 x cache.entries rounded up to a power of two): 10,000
    entries -> 65,536 -> 288 KiB
    """
    window_factor: int = Field(default=10, ge=1)
    """the frequency window: counts halve every window_factor x cache.entries requests"""
    doorkeeper: bool = True
    """a Bloom filter absorbs each key's first occurrence"""


class PinConfig(_Frozen):
    route: Literal["hot", "cold"]
    """where matching requests go"""
    model: str | None = None
    """a glob on the public model name"""
    pattern: str | None = Field(default=None, max_length=512)
    """a regular expression searched in the prompt text (512 characters at most)"""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class PolicyConfig(_Frozen):
    threshold: ThresholdConfig = ThresholdConfig()
    """in estimated occurrences per sketch window (see sketch below)"""
    capacity: CapacityConfig = CapacityConfig()
    """the loop that keeps the edge node inside its SLO"""
    sketch: SketchConfig = SketchConfig()
    """the frequency sketch: memory 4.5 x width bytes, fixed"""
    pins: tuple[PinConfig, ...] = ()
    """force routes whatever the frequency, first match wins, e.g.
    - {route: cold, pattern: "(?i)emergency|alarm"}
    - {route: hot, model: "tiny-*"}"""


# The cache's eviction policies (router/eviction.py), in the order the selector tries them.
EVICTION_POLICIES = ("w-tinylfu", "w-tinylfu-long", "s3-fifo", "s3-fifo-2", "arc")


class CacheConfig(_Frozen):
    entries: int = setting(10_000, ge=1, env="HOTCOLD_CACHE_ENTRIES", flag="--cache-entries")
    """at most this many answers"""
    max_bytes: int = Field(default=64 * MiB, ge=1024)
    """at most this many bytes of answers (64 MiB)"""
    max_entry_bytes: int = Field(default=1 * MiB, ge=64)
    """a larger answer is not cached (1 MiB)"""
    ttl_s: float = Field(default=3600.0, gt=0)
    """seconds an answer may be served from the cache"""
    min_frequency: int = Field(default=1, ge=1, le=16)
    """offer an answer only when its key was seen this many times in the sketch window: 1 = every
    deterministic answer (best hit ratio: the eviction policy decides); 2 = strict, a one-off
    never enters (see docs/benchmarks.md for the cost)
    """
    policies: tuple[str, ...] = EVICTION_POLICIES
    """eviction policies the cache chooses among by measuring them on a key sample (shadow memory:
    about 5 x entries / R keys, R = 1 below 2048 entries, else about entries / 1024, <= 64)
    """
    initial_policy: str = "s3-fifo"
    """the one it starts with (the most frequent winner)"""

    @model_validator(mode="after")
    def _known_policies(self) -> CacheConfig:
        known = set(EVICTION_POLICIES)
        unknown = set(self.policies) - known
        if unknown or not self.policies:
            raise ValueError(f"policies must be a non-empty subset of {sorted(known)}")
        if self.initial_policy not in self.policies:
            raise ValueError(f"initial_policy {self.initial_policy!r} is not in policies")
        return self


MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}$"


class EdgeModelConfig(_Frozen):
    """The catalog's permission for the edge node to answer a model, and as which edge model."""

    model: str | None = Field(default=None, max_length=256)
    """the edge model's name (null: the name the client sent)"""


class ModelConfig(_Frozen):
    """One public model: what clients send, which pool serves it, and whether the edge may."""

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    """the public name: /v1/models, answers' "model", the metrics' model label"""
    aliases: tuple[str, ...] = ()
    """other names clients may send; glob patterns too ("llama-*" answers as sent)"""
    pool: str = "cloud"
    """"cloud" or a key of `pools`"""
    upstream_model: str | None = Field(default=None, max_length=256)
    """what the pool's servers are asked for (null: the public name)"""
    apis: tuple[Literal["chat", "completion", "embeddings"], ...] = ("chat", "completion")
    """the APIs it serves: chat, completion, embeddings"""
    edge: EdgeModelConfig | None = None
    """{model: NAME}: the edge node may answer its hot misses, as this edge model; null: it
    never does"""
    owned_by: str = Field(default="hotcold", max_length=64)
    """shown in /v1/models"""

    @field_validator("aliases")
    @classmethod
    def _alias_shape(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for alias in value:
            if not 0 < len(alias) <= 256:
                raise ValueError(f"alias {alias!r} must have 1-256 characters")
        return value


class ModelsConfig(_Frozen):
    """The model catalog. Empty: the ``cloud`` (and ``edge``) sections are a one-model
    catalog that answers any model name, as the router did before it had a catalog."""

    default: str | None = None
    """the catalog name used when a request names no model"""
    catalog: tuple[ModelConfig, ...] = ()
    """empty: the `cloud` section is one model, "default", answering any name as sent. An
    unknown model: 404 model_not_found. As many entries as configured (bounded by the file)"""

    @model_validator(mode="after")
    def _names_unique(self) -> ModelsConfig:
        seen: set[str] = set()
        for entry in self.catalog:
            for name in (entry.name, *entry.aliases):
                if name in seen:
                    raise ValueError(f"model name {name!r} is given twice in the catalog")
                seen.add(name)
        if self.default is not None and self.default not in seen:
            raise ValueError(f"default model {self.default!r} is not in the catalog")
        return self


class AdminConfig(_Frozen):
    token: str | None = setting(
        None, min_length=16, env="HOTCOLD_ADMIN_TOKEN", flag="--admin-token"
    )
    """bearer token of the admin API, 16+ characters"""
    public_metrics: bool = False
    """true: /metrics answers anyone (a scraper on a trusted network); false: it needs the
    admin token (Prometheus sends it with authorization: {credentials: ...})"""
    public_readiness_details: bool = False
    """true: /readyz shows pools, endpoints and the fleet to anyone; false: anyone gets only
    {ready} and its status, the admin token the details"""
    watch_config_s: float = Field(default=2.0, ge=0)
    """re-read this file when it changes, checked every N seconds (0: only on SIGHUP or POST
    /admin/reload). Only the live policy (policy.threshold min/max/history_weight,
    policy.capacity, policy.pins, cache.ttl_s, cache.min_frequency) and the model catalog
    (models, pools, cloud) are reloaded; other keys need a restart and a reload says which. A
    bad file keeps the last good one.
    """


class FleetConfig(_Frozen):
    """Fleet policy sync over Redis; without ``redis_url`` the router runs alone."""

    redis_url: str | None = setting(None, env="HOTCOLD_REDIS_URL", flag="--redis-url")
    """null: run alone. redis://[:password@]host:port[/db], rediss:// (TLS), unix:///path,
    redis+sentinel://host:port [,host:port]/service, redis+cluster://host:port
    """
    name: str = setting(
        "default", pattern=r"^[A-Za-z0-9._-]{1,64}$", env="HOTCOLD_FLEET", flag="--fleet"
    )
    """the fleet: namespace of its keys"""
    router_id: str | None = setting(
        None, pattern=r"^[A-Za-z0-9._:-]{1,128}$", env="HOTCOLD_ROUTER_ID", flag="--router-id"
    )
    """this router's name in the fleet (null: hostname-pid)"""
    redis_timeout_s: float = Field(default=0.5, gt=0)
    """bound on every Redis call; nothing in the request path waits"""
    poll_interval_s: float = Field(default=1.0, gt=0)
    """the policy is also polled (a lost pub/sub message heals)"""
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    """membership heartbeat"""
    member_ttl_s: float = Field(default=5.0, gt=0)
    """a router silent this long leaves the fleet; a router that cannot sync its sketch this long
    falls back to local counts
    """
    sketch_interval_s: float = Field(default=1.0, gt=0)
    """one exchange of the hot-key view per period. shared: push this router's most counted keys,
    read the fleet's hottest (~18 KB a router whatever the fleet's size). all_to_all: publish
    this router's sketch and sum the others' (memory: a view of 8 x sketch width bytes, 512 KiB
    at the default; Redis holds one compressed sketch per router, up to ~75 KiB when busy, and
    each router reads the others' every period)
    """

    hot_key_view: Literal["shared", "all_to_all"] = "shared"
    """how the fleet learns what is hot. shared: each router pushes its most counted keys into
    one decaying sorted set in Redis and reads its top back (traffic linear in the fleet);
    all_to_all: each router reads every other router's sketch (quadratic; the reference)
    """
    hot_keys_push: int = Field(default=1024, ge=1, le=100_000)
    """shared view: a router pushes at most this many keys per sketch_interval_s, 12 bytes each
    (it counts at most 4x as many distinct keys between pushes: ~100 bytes each)
    """
    hot_keys_summary: int = Field(default=1024, ge=1, le=100_000)
    """shared view: the fleet's hottest keys each router reads back per interval (12 bytes
    each on the wire, ~100 in the router)
    """
    hot_keys_capacity: int = Field(default=32_768, ge=1)
    """shared view: members kept in Redis's sorted set (~100 bytes each; the coldest go)"""
    hot_keys_decay_s: float = Field(default=10.0, gt=0)
    """shared view: every score is multiplied by hot_keys_decay_factor this often"""
    hot_keys_decay_factor: float = Field(default=0.5, gt=0, lt=1)
    """shared view: the decay (0.5 every 10 s: a key's count fades with a 10 s half-life)"""
    limits_timeout_s: float = Field(default=0.05, gt=0)
    """bound on the one Redis call a request with tenant limits makes (the fleet-wide limits:
    one Lua script, one round trip); past it, or on any error, the router judges by its local
    buckets at once and asks Redis again only after a PING answers
    """
    limits_max_inflight: int = Field(default=64, ge=1)
    """limit calls to Redis in flight at once (bounds connections); waiting counts against
    limits_timeout_s
    """
    limits_flush_interval_s: float = Field(default=1.0, gt=0)
    """tokens used are sent with the tenant's next request or by this flush; while Redis is
    away, it is PINGed this often to go back to fleet-wide limits. The fleet can overdraw a
    tokens/min quota by the tokens used in one interval (docs/architecture.md)
    """

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        schemes = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")
        if value is not None and not value.startswith(schemes):
            raise ValueError(f"must start with one of {', '.join(schemes)}")
        return value

    @model_validator(mode="after")
    def _expiry_after_heartbeats(self) -> FleetConfig:
        if self.member_ttl_s < 2 * self.heartbeat_interval_s:
            raise ValueError("member_ttl_s must be at least two heartbeat intervals")
        return self


TENANT_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class ApiKeyConfig(_Frozen):
    """One client key: its tenant and the SHA-256 of the key (the key itself is never stored;
    ``hotcold key new --tenant NAME`` makes one)."""

    tenant: str = Field(pattern=TENANT_PATTERN)
    """the tenant the key belongs to"""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """the SHA-256 of the key, hex"""
    name: str | None = Field(default=None, max_length=100)
    """a label: which devices use it"""


class TenantLimits(_Frozen):
    requests_per_s: float | None = Field(default=None, gt=0)
    """token bucket; null: unlimited. Over it: 429 + Retry-After"""
    burst: int | None = Field(default=None, ge=1)
    """bucket depth (null: one second of requests_per_s)"""
    tokens_per_min: int | None = Field(default=None, ge=1)
    """upstream tokens (prompt + completion; cache hits are free); over it: 429 quota_exceeded +
    Retry-After
    """
    edge_weight: float = Field(default=1.0, gt=0)
    """the tenant's weight in the edge's fair share under contention"""
    edge_share: float = Field(default=1.0, gt=0, le=1)
    """never more than this share of the edge's in-flight slots"""


class TenantsConfig(_Frozen):
    api_keys: tuple[ApiKeyConfig, ...] = ()
    """clients send "Authorization: Bearer <key>"; only the key's SHA-256 is stored (hotcold
    key new --tenant acme makes both). Empty: OPEN MODE (a warning at start-up): X-Tenant
    names the tenant, so run behind a gateway that authenticates"""
    default: TenantLimits = TenantLimits()
    """limits of every tenant not in overrides"""
    overrides: dict[str, TenantLimits] = {}
    """per tenant, e.g. acme: {requests_per_s: 50, edge_share: 0.5}"""
    max_tracked: int = Field(default=10_000, ge=1)
    """limiter state kept for this many tenants (least recent go)"""
    require_keys: bool = False
    """true: never open mode; with no keys every request is refused (401). Set by the first key
    made through the admin API (in the file, or in the fleet's Redis), so revoking the last key
    never opens the gateway
    """
    max_live_keys: int = Field(default=100_000, ge=1)
    """API keys the admin API may create (POST /admin/keys), in Redis for a fleet: ~150 bytes
    each on every router and in Redis. Keys and limits changed through the API apply live, on
    every router of a fleet within a second; so does a reload of this section
    """

    @field_validator("overrides")
    @classmethod
    def _names(cls, value: dict[str, TenantLimits]) -> dict[str, TenantLimits]:
        for name in value:
            if not re.match(TENANT_PATTERN, name):
                raise ValueError(f"tenant name {name!r} is not 1-64 of [A-Za-z0-9._-]")
        return value

    @field_validator("api_keys")
    @classmethod
    def _unique(cls, value: tuple[ApiKeyConfig, ...]) -> tuple[ApiKeyConfig, ...]:
        if len({key.sha256 for key in value}) != len(value):
            raise ValueError("an API key is listed twice")
        return value


class CostConfig(_Frozen):
    """Prices that turn token counts into an estimated cost (and what all-cloud would cost)."""

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    """the currency of the prices below (ISO 4217 code); /metrics names it in the cost
    series (hotcold_estimated_cost_usd_total)"""
    cloud_input_per_1k_tokens: float = Field(default=0.00015, ge=0)
    """what the cloud bills per 1,000 prompt tokens"""
    cloud_output_per_1k_tokens: float = Field(default=0.0006, ge=0)
    """... and per 1,000 completion tokens"""
    edge_gpu_per_hour: float = Field(default=0.05, ge=0)
    """the edge GPU's cost per hour (amortised hardware + power), counted while an edge node is
    configured, busy or idle
    """


class DashboardConfig(_Frozen):
    sample_interval_s: float = Field(default=1.0, gt=0)
    """one point per interval ..."""
    history_points: int = Field(default=600, ge=10, le=86_400)
    """... of which this many are kept (bounded: 10 min at 1 s)"""


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LoggingConfig(_Frozen):
    level: str = setting("INFO", env="HOTCOLD_LOG_LEVEL", flag="--log-level")
    """DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)"""
    json_lines: bool = setting(False, flag="--json-logs")
    """true: one JSON object per log line (each with the request id the answer carries in
    X-Request-Id)
    """
    access_log: bool = True
    """one line per inference answer (logger hotcold.access): method, path, status,
    route/cache/served-by, latency. Lines below WARNING are written to stderr in batches, at
    most 50 ms or 64 KiB pending (a SIGKILL loses at most that); warnings go out at once
    """

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level


class MetricsConfig(_Frozen):
    tenant_labels: int = Field(default=20, ge=0, le=10_000)
    """tenants with their own `tenant` label on hotcold_requests_total and
    hotcold_tokens_total (the first ones seen); the others are counted as tenant="other", so
    the series stay bounded whatever clients send"""


class TracingConfig(_Frozen):
    """OpenTelemetry traces (router/tracing.py): a span per inference request with the GenAI
    semantic conventions, child spans for the cache, the edge and each upstream attempt, and
    W3C traceparent sent upstream. Needs the otel extra: pip install 'hotcold[otel]'."""

    enabled: bool = setting(False, flag="--tracing")
    """true: trace every sampled request (start-up fails when the otel extra is missing)"""
    endpoint: str | None = None
    """OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces; null: the SDK's
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT, else
    http://localhost:4318/v1/traces"""
    service_name: str = Field(default="hotcold-router", min_length=1, max_length=100)
    """service.name of the router's spans"""
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    """share of new traces recorded; a request that arrives with a traceparent follows its
    caller's sampling decision"""
    max_queue: int = Field(default=2048, ge=1)
    """finished spans waiting for export (bounded memory: beyond, spans are dropped and
    counted by the SDK)"""

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("enabled")
    @classmethod
    def _extra_installed(cls, value: bool) -> bool:
        # Said at start-up, as a config error, not at the first request.
        if value and not _installed("opentelemetry.sdk"):
            raise ValueError("tracing needs the otel extra: pip install 'hotcold[otel]'")
        return value


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (a missing parent package raises, not None)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class RouterConfig(_Frozen):
    server: ServerConfig = ServerConfig()
    """the HTTP server and the limits it puts on requests"""
    cloud: CloudPoolConfig = CloudPoolConfig()
    """the pool named "cloud": OpenAI-compatible servers. Without models.catalog, this pool
    is the whole catalog, one model ("default") that answers any model name, forwarded as
    sent. Reloads live."""
    pools: dict[str, PoolConfig] = {}
    """more cloud pools by name, each with every key of `cloud` above, e.g.
    gpu-a: {endpoints: [http://10.0.0.5:8000], api_key_env: A_KEY, health_path: /health}
    Only pools a catalog model names are started. Reloads live: an unchanged pool keeps its
    breakers; a changed one is rebuilt"""
    models: ModelsConfig = ModelsConfig()
    """the catalog: what clients may ask for. Reloads live (SIGHUP, POST /admin/reload, or saving
    the file)
    """
    edge: EdgeConfig = EdgeConfig()
    """the edge node(s): an OpenAI-compatible server on this gateway's GPU"""
    policy: PolicyConfig = PolicyConfig()
    """hot or cold: see docs/architecture.md"""
    cache: CacheConfig = CacheConfig()
    """the edge response cache (answers to deterministic requests)"""
    admin: AdminConfig = AdminConfig()
    """the admin API (/admin/*) and the dashboard"""
    fleet: FleetConfig = FleetConfig()
    """one policy for many gateways, through one Redis per fleet"""
    tenants: TenantsConfig = TenantsConfig()
    """who may ask, and how much"""
    cost: CostConfig = CostConfig()
    """prices for the cost estimate (metrics, dashboard, demo summary)"""
    dashboard: DashboardConfig = DashboardConfig()
    """GET /dashboard (admin token: /dashboard?token=... sets a cookie)"""
    logging: LoggingConfig = LoggingConfig()
    """what the router logs"""
    metrics: MetricsConfig = MetricsConfig()
    """what /metrics exports"""
    tracing: TracingConfig = TracingConfig()
    """OpenTelemetry traces (off by default; the otel extra)"""

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, value: dict[str, PoolConfig]) -> dict[str, PoolConfig]:
        for name in value:
            if not re.match(r"^[A-Za-z0-9._-]{1,64}$", name) or name == "cloud":
                raise ValueError(f"pool name {name!r}: 1-64 of [A-Za-z0-9._-], not 'cloud'")
        return value

    @model_validator(mode="after")
    def _catalog_pools_exist(self) -> RouterConfig:
        known = {"cloud", *self.pools}
        for entry in self.models.catalog:
            if entry.pool not in known:
                raise ValueError(
                    f"model {entry.name!r} names pool {entry.pool!r}, which is not configured"
                    f" (pools: {', '.join(sorted(known))})"
                )
        return self


@dataclass(frozen=True, slots=True)
class Setting:
    """One leaf of the configuration, as declared: its path, type, default, description
    (the field's docstring), and the environment variable and flag that set it, if any."""

    path: tuple[str, ...]
    info: FieldInfo

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def extra(self) -> dict[str, Any]:
        extra = self.info.json_schema_extra
        return extra if isinstance(extra, dict) else {}

    @property
    def env(self) -> str | None:
        value = self.extra.get("env")
        return value if isinstance(value, str) else None

    @property
    def flag(self) -> str | None:
        value = self.extra.get("flag")
        return value if isinstance(value, str) else None

    @property
    def is_list(self) -> bool:
        return get_origin(self.info.annotation) is tuple


def _section(annotation: Any) -> type[BaseModel] | None:
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def declared_settings(
    model: type[BaseModel] | None = None, prefix: tuple[str, ...] = ()
) -> list[Setting]:
    """Every leaf setting in declaration order; sections (nested models) are walked into."""
    settings: list[Setting] = []
    for name, info in (model or RouterConfig).model_fields.items():
        section = _section(info.annotation)
        if section is not None:
            settings.extend(declared_settings(section, (*prefix, name)))
        else:
            settings.append(Setting((*prefix, name), info))
    return settings


# Environment variables and the config path each one sets (lists: comma-separated), derived
# from the declarations above.
ENVIRONMENT = {s.env: s.path for s in declared_settings() if s.env is not None}
_LIST_KEYS = {s.path for s in declared_settings() if s.is_list}


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, path in ENVIRONMENT.items():
        if name in environ and environ[name] != "":
            raw = environ[name]
            value: Any = (
                [part.strip() for part in raw.split(",") if part.strip()]
                if (path in _LIST_KEYS)
                else raw
            )
            _set_path(tree, path, value)
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return document


def build_config(*layers: Mapping[str, Any]) -> RouterConfig:
    """Merge layers (later wins) and validate; errors name the key and the bad value."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer)
    try:
        return RouterConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError("invalid configuration: " + explain(exc, "unknown key")) from None


def explain(exc: ValidationError, unknown: str) -> str:
    """A validation error as one line that names each bad key and its value."""
    problems = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            problems.append(f"{unknown} '{key}'")
        else:
            problems.append(f"'{key}' = {_shown(key, error.get('input'))}: {message}")
    return "; ".join(problems)


_SECRET_KEYS = re.compile(r"(api_key|token|redis_url|password|secret)", re.IGNORECASE)


def _shown(key: str, value: Any) -> str:
    """A bad value as an error message may show it: scalars only, and never a secret (a
    section's value would carry every key and token in it into logs and answers)."""
    if _SECRET_KEYS.search(key):
        return "(hidden)"
    if isinstance(value, dict | list | tuple):
        return "(a section; see the problem named)"
    return repr(value)


@dataclass(frozen=True)
class ConfigLayers:
    """The start-up layers kept apart, so a reload re-reads only the file and every value can
    say where it came from."""

    environment: Mapping[str, Any]
    file: Mapping[str, Any]
    flags: Mapping[str, Any]
    path: str | None = None
    flags_label: str = "flag"

    @classmethod
    def of(cls, config: RouterConfig) -> ConfigLayers:
        """Layers for a configuration built in code (tests, embedding): no file to reload."""
        return cls({}, {}, config.model_dump(exclude_defaults=True), None, "application")

    def build(self) -> RouterConfig:
        return build_config(self.environment, self.file_over_environment(), self.flags)

    def file_over_environment(self) -> dict[str, Any]:
        """The file's values as they override the environment: a ``null`` in the file leaves
        a value the environment sets. The reference config lists every key, the secrets'
        ``admin.token: null`` and ``fleet.redis_url: null`` included, and the deploy docs
        put secrets in the environment (systemd ``EnvironmentFile=``, Kubernetes Secrets): a
        copied reference file silently dropped them, leaving the admin API open."""
        return _nulls_dropped(self.file, self.environment)

    def with_file_reloaded(self) -> ConfigLayers:
        """The same layers with the file read again (ConfigError when it cannot be)."""
        return replace(self, file=read_yaml(self.path) if self.path else {})

    def source_of(self, path: tuple[str, ...]) -> str:
        """Which layer set this value: flag, file, environment or default."""
        file = self.file_over_environment()
        for name, layer in ((self.flags_label, self.flags), (f"file {self.path}", file)):
            if _has_path(layer, path):
                return name
        if _has_path(self.environment, path):
            return "environment"
        return "default"


def _nulls_dropped(over: Mapping[str, Any], under: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` without the ``None`` values whose key ``under`` sets (at any depth)."""
    kept: dict[str, Any] = {}
    for key, value in over.items():
        below = under.get(key)
        if value is None and below is not None:
            continue
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            value = _nulls_dropped(value, below)
        kept[key] = value
    return kept


def _has_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = tree
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def load_layers(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConfigLayers:
    return ConfigLayers(
        environment=environment_overrides(os.environ if environ is None else environ),
        file=read_yaml(path) if path else {},
        flags=overrides or {},
        path=str(path) if path else None,
    )


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RouterConfig:
    return load_layers(path, overrides, environ).build()
