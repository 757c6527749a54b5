"""The router's configuration: parsed once, validated, frozen.

Precedence, lowest first: built-in defaults < environment (``HOTCOLD_*``) < the YAML file
(``--config``) < command-line flags. Every key, its unit and its default are listed in
``configs/router.yaml``; an unknown key or a bad value stops start-up with a message naming
the key and the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

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

from router.errors import ConfigError

MiB = 1024 * 1024


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_url(url: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url) < 10:
        raise ValueError(f"{url!r} is not an http(s) URL")
    return url.rstrip("/")


class ServerConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * MiB, ge=1024)
    request_deadline_s: float = Field(default=60.0, gt=0)
    stream_idle_timeout_s: float = Field(default=30.0, gt=0)
    shutdown_timeout_s: float = Field(default=15.0, ge=0)
    max_concurrent_requests: int = Field(default=2048, ge=1)  # beyond: 503 at once (shedding)
    body_timeout_s: float = Field(default=10.0, gt=0)  # a slow client gets 408
    max_header_bytes: int = Field(default=8190, ge=1024)  # per header line
    max_prompt_chars: int = Field(default=200_000, ge=1)
    max_tokens_ceiling: int = Field(default=8192, ge=1)  # a larger max_tokens is refused


class BackoffConfig(_Frozen):
    base_s: float = Field(default=0.01, ge=0)
    cap_s: float = Field(default=0.25, ge=0)


class BreakerConfig(_Frozen):
    failure_threshold: int = Field(default=3, ge=1)
    open_s: float = Field(default=1.0, gt=0)
    max_open_s: float = Field(default=30.0, gt=0)


class HealthConfig(_Frozen):
    probe_interval_s: float = Field(default=0.5, gt=0)
    probe_timeout_s: float = Field(default=1.0, gt=0)
    stale_after_s: float = Field(default=10.0, gt=0)


class CredentialConfig(_Frozen):
    """Where an upstream's API key comes from: an environment variable or a file (a mounted
    secret). Only the reference is in the config; the key itself is read at start-up and on
    reload, and never logged or shown."""

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CredentialConfig:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self


class PoolConfig(_Frozen):
    """An upstream pool: the cloud GPU servers, or the edge node (a pool of one)."""

    endpoints: tuple[str, ...] = ()
    api_key: SecretStr | None = None  # literal key for every endpoint (prefer api_key_env)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    api_key_file: str | None = None
    endpoint_keys: dict[str, CredentialConfig] = {}  # per endpoint URL; overrides the pool's
    health_path: str = Field(default="/healthz", pattern=r"^/[A-Za-z0-9/._-]{0,200}$")
    max_attempts: int = Field(default=3, ge=1, le=10)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    max_connections: int = Field(default=1024, ge=1)
    backoff: BackoffConfig = BackoffConfig()
    breaker: BreakerConfig = BreakerConfig()
    health: HealthConfig = HealthConfig()

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


class EdgeConfig(PoolConfig):
    """The edge node(s): an upstream pool that takes hot misses."""

    max_attempts: int = Field(default=1, ge=1, le=10)
    timeout_s: float = Field(default=15.0, gt=0)
    max_inflight: int = Field(default=32, ge=1)


class ThresholdConfig(_Frozen):
    initial: float = Field(default=2.0, gt=0)
    min: float = Field(default=2.0, gt=0)
    max: float = Field(default=17.0, gt=0)
    history_weight: float = Field(default=0.7, ge=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdConfig:
        if not self.min <= self.initial <= self.max:
            raise ValueError(
                f"need min <= initial <= max, got {self.min}, {self.initial}, {self.max}"
            )
        return self


class CapacityConfig(_Frozen):
    queue_delay_slo_ms: float = Field(default=250.0, gt=0)
    control_interval_s: float = Field(default=1.0, gt=0)
    target_fraction: float = Field(default=0.5, gt=0, le=1)
    idle_fraction: float = Field(default=0.25, gt=0, lt=1)
    raise_factor: float = Field(default=1.3, gt=1)
    lower_factor: float = Field(default=0.97, gt=0, lt=1)


class SketchConfig(_Frozen):
    width: int = Field(default=0, ge=0)
    window_factor: int = Field(default=10, ge=1)
    doorkeeper: bool = True


class PinConfig(_Frozen):
    route: Literal["hot", "cold"]
    model: str | None = None
    pattern: str | None = Field(default=None, max_length=512)

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
    capacity: CapacityConfig = CapacityConfig()
    sketch: SketchConfig = SketchConfig()
    pins: tuple[PinConfig, ...] = ()


# The cache's eviction policies (router/eviction.py), in the order the selector tries them.
EVICTION_POLICIES = ("w-tinylfu", "w-tinylfu-long", "s3-fifo", "s3-fifo-2", "arc")


class CacheConfig(_Frozen):
    entries: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=64 * MiB, ge=1024)
    max_entry_bytes: int = Field(default=1 * MiB, ge=64)
    ttl_s: float = Field(default=3600.0, gt=0)
    min_frequency: int = Field(default=1, ge=1, le=16)
    policies: tuple[str, ...] = EVICTION_POLICIES
    initial_policy: str = "s3-fifo"

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

    model: str | None = Field(default=None, max_length=256)  # None: the name the client sent


class ModelConfig(_Frozen):
    """One public model: what clients send, which pool serves it, and whether the edge may."""

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    aliases: tuple[str, ...] = ()  # other names clients may send; glob patterns allowed ("*")
    pool: str = "cloud"  # a key of ``pools``, or "cloud" for the ``cloud`` section
    upstream_model: str | None = Field(default=None, max_length=256)  # None: the public name
    apis: tuple[Literal["chat", "completion", "embeddings"], ...] = ("chat", "completion")
    edge: EdgeModelConfig | None = None  # None: never answered by the edge node
    owned_by: str = Field(default="hotcold", max_length=64)

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

    default: str | None = None  # a catalog name used when a request names no model
    catalog: tuple[ModelConfig, ...] = ()

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
    token: str | None = Field(default=None, min_length=16)
    watch_config_s: float = Field(default=2.0, ge=0)  # config file check period; 0: SIGHUP only


class FleetConfig(_Frozen):
    """Fleet policy sync over Redis; without ``redis_url`` the router runs alone."""

    redis_url: str | None = None
    name: str = Field(default="default", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    router_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    redis_timeout_s: float = Field(default=0.5, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    member_ttl_s: float = Field(default=5.0, gt=0)
    sketch_interval_s: float = Field(default=1.0, gt=0)

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
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str | None = Field(default=None, max_length=100)  # a label: which device fleet


class TenantLimits(_Frozen):
    requests_per_s: float | None = Field(default=None, gt=0)  # null: unlimited
    burst: int | None = Field(default=None, ge=1)  # bucket size (default: 1 s of requests)
    tokens_per_min: int | None = Field(default=None, ge=1)  # upstream tokens (cache: free)
    edge_weight: float = Field(default=1.0, gt=0)  # share of the edge under contention
    edge_share: float = Field(default=1.0, gt=0, le=1)  # at most this share of edge slots


class TenantsConfig(_Frozen):
    api_keys: tuple[ApiKeyConfig, ...] = ()  # none: open mode (X-Tenant names the tenant)
    default: TenantLimits = TenantLimits()
    overrides: dict[str, TenantLimits] = {}
    max_tracked: int = Field(default=10_000, ge=1)  # limiter state kept for this many tenants

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

    currency: str = Field(default="USD", max_length=8)
    cloud_input_per_1k_tokens: float = Field(default=0.00015, ge=0)
    cloud_output_per_1k_tokens: float = Field(default=0.0006, ge=0)
    edge_gpu_per_hour: float = Field(default=0.05, ge=0)


class DashboardConfig(_Frozen):
    sample_interval_s: float = Field(default=1.0, gt=0)
    history_points: int = Field(default=600, ge=10, le=86_400)  # bounded: 10 min at 1 s


class LoggingConfig(_Frozen):
    level: str = "INFO"
    json_lines: bool = False
    access_log: bool = True


class RouterConfig(_Frozen):
    server: ServerConfig = ServerConfig()
    cloud: PoolConfig = PoolConfig(endpoints=("http://127.0.0.1:9001",))
    pools: dict[str, PoolConfig] = {}  # named cloud pools for the model catalog
    models: ModelsConfig = ModelsConfig()
    edge: EdgeConfig = EdgeConfig()
    policy: PolicyConfig = PolicyConfig()
    cache: CacheConfig = CacheConfig()
    admin: AdminConfig = AdminConfig()
    fleet: FleetConfig = FleetConfig()
    tenants: TenantsConfig = TenantsConfig()
    cost: CostConfig = CostConfig()
    dashboard: DashboardConfig = DashboardConfig()
    logging: LoggingConfig = LoggingConfig()

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


# Environment variables and the config path each one sets (comma-separated lists allowed).
ENVIRONMENT = {
    "HOTCOLD_HOST": ("server", "host"),
    "HOTCOLD_PORT": ("server", "port"),
    "HOTCOLD_CLOUD_ENDPOINTS": ("cloud", "endpoints"),
    "HOTCOLD_EDGE_ENDPOINT": ("edge", "endpoints"),
    "HOTCOLD_CACHE_ENTRIES": ("cache", "entries"),
    "HOTCOLD_ADMIN_TOKEN": ("admin", "token"),
    "HOTCOLD_REDIS_URL": ("fleet", "redis_url"),
    "HOTCOLD_FLEET": ("fleet", "name"),
    "HOTCOLD_ROUTER_ID": ("fleet", "router_id"),
    "HOTCOLD_LOG_LEVEL": ("logging", "level"),
}
_LIST_KEYS = {("cloud", "endpoints"), ("edge", "endpoints")}


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
            problems.append(f"'{key}' = {error.get('input')!r}: {message}")
    return "; ".join(problems)


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
        return build_config(self.environment, self.file, self.flags)

    def with_file_reloaded(self) -> ConfigLayers:
        """The same layers with the file read again (ConfigError when it cannot be)."""
        return replace(self, file=read_yaml(self.path) if self.path else {})

    def source_of(self, path: tuple[str, ...]) -> str:
        """Which layer set this value: flag, file, environment or default."""
        for name, layer in ((self.flags_label, self.flags), (f"file {self.path}", self.file)):
            if _has_path(layer, path):
                return name
        if _has_path(self.environment, path):
            return "environment"
        return "default"


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
