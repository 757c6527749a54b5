"""The live policy: what an operator may change while the router runs, where each value came
from, and the fleet's versioned document of changes.

Layers, lowest first (each value comes from the highest layer that sets it)::

    built-in default < environment < config file < command-line flag < fleet change

- The first four are this gateway's start-up configuration (``router.config``); the file is
  re-read on SIGHUP, ``POST /admin/reload`` or a change of its modification time.
- *Fleet changes* are made with ``PUT /admin/policy`` and apply to every router of the fleet
  (through Redis; to this router alone without Redis). They are stored as a sparse JSON merge
  patch (RFC 7396) over the start-up layers: a change of ``threshold.max`` leaves every other
  value to each gateway's own file, and setting a value to ``null`` hands it back to the file.

The live values exclude what needs a restart (sizes, endpoints, the sketch's shape) and the
threshold's *initial* value, which only matters at start-up. To pin the threshold, set
``threshold.min`` and ``threshold.max`` to the same value.

The fleet document is msgpack, validated on every read: a document from another fleet, of
another schema, or whose changes do not validate is refused and the last good policy stays.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router.config import CapacityConfig, PinConfig, RouterConfig, explain

SCHEMA = "hotcold.policy/1"
MAX_DOCUMENT_BYTES = 256 * 1024  # a policy is a few hundred bytes; pins are bounded too
MAX_PINS = 256


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ThresholdBounds(_Frozen):
    min: float = Field(gt=0)
    max: float = Field(gt=0)
    history_weight: float = Field(ge=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdBounds:
        if self.min > self.max:
            raise ValueError(f"need min <= max, got {self.min} > {self.max}")
        return self


class CacheRules(_Frozen):
    ttl_s: float = Field(gt=0)
    min_frequency: int = Field(ge=1, le=16)


class PolicyValues(_Frozen):
    """The effective live policy."""

    threshold: ThresholdBounds
    capacity: CapacityConfig
    pins: tuple[PinConfig, ...] = Field(max_length=MAX_PINS)
    cache: CacheRules


# Live path -> the start-up configuration path it comes from.
CONFIG_PATHS: dict[str, tuple[str, ...]] = {
    "threshold.min": ("policy", "threshold", "min"),
    "threshold.max": ("policy", "threshold", "max"),
    "threshold.history_weight": ("policy", "threshold", "history_weight"),
    **{f"capacity.{name}": ("policy", "capacity", name) for name in CapacityConfig.model_fields},
    "pins": ("policy", "pins"),
    "cache.ttl_s": ("cache", "ttl_s"),
    "cache.min_frequency": ("cache", "min_frequency"),
}


def values_from_config(config: RouterConfig) -> dict[str, Any]:
    """The live part of a start-up configuration, as a plain tree."""
    threshold = config.policy.threshold
    return {
        "threshold": {
            "min": threshold.min,
            "max": threshold.max,
            "history_weight": threshold.history_weight,
        },
        "capacity": config.policy.capacity.model_dump(),
        "pins": [pin.model_dump(exclude_none=True) for pin in config.policy.pins],
        "cache": {"ttl_s": config.cache.ttl_s, "min_frequency": config.cache.min_frequency},
    }


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7396: objects merge key by key, ``None`` deletes, anything else replaces."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping):
            below = merged.get(key)
            merged[key] = merge_patch(below if isinstance(below, Mapping) else {}, value)
            if not merged[key]:
                del merged[key]
        else:
            merged[key] = value
    return merged


def leaf_paths(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the values in a change tree (``pins`` is one value)."""
    paths = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and path != "pins":
            paths.extend(leaf_paths(value, path + "."))
        else:
            paths.append(path)
    return paths


def _at(tree: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def replacement_patch(
    base: Mapping[str, Any], changes: Mapping[str, Any], desired: Mapping[str, Any]
) -> dict[str, Any]:
    """The merge patch of the fleet's changes that makes the effective policy ``desired``
    (what HTTP's PUT means: the whole policy replaced, e.g. by the edited ``values`` of
    ``GET /admin/policy``). A value equal to this router's start-up value, or left out, is
    handed back to the file (``null``); any other value becomes a fleet change. Unknown keys
    are kept in the patch so that validation names them."""
    patch: dict[str, Any] = {}

    def put(dotted: str, value: Any) -> None:
        node = patch
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    live = set(CONFIG_PATHS)
    for path in live:
        given, value = _at(desired, path)
        _, start_up = _at(base, path)
        changed, _ = _at(changes, path)
        if given and value != start_up:
            put(path, value)
        elif changed:
            put(path, None)
    for path in leaf_paths(desired):
        if path not in live:
            put(path, _at(desired, path)[1])
    return patch


class PolicyError(ValueError):
    """Changes that do not make a valid policy; the message names the key and the value."""


def effective_values(base: Mapping[str, Any], changes: Mapping[str, Any]) -> PolicyValues:
    try:
        return PolicyValues.model_validate(merge_patch(base, changes))
    except ValidationError as exc:
        raise PolicyError(explain(exc, "not a live policy setting:")) from None


class Change(_Frozen):
    """Who changed one value, in which version, when and why."""

    version: int = Field(ge=1)
    by: str = Field(max_length=200)
    at: float
    reason: str = Field(default="", max_length=500)


class FleetDocument(_Frozen):
    """The fleet's policy: its changes over each gateway's start-up values, versioned."""

    schema_: Literal["hotcold.policy/1"] = Field(alias="schema")
    fleet: str
    version: int = Field(ge=0)
    updated_by: str = Field(default="", max_length=200)
    updated_at: float = 0.0
    reason: str = Field(default="", max_length=500)
    changes: dict[str, Any] = {}
    history: dict[str, Change] = {}  # path -> its latest change

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @classmethod
    def empty(cls, fleet: str) -> FleetDocument:
        return cls.model_validate({"schema": SCHEMA, "fleet": fleet, "version": 0})

    def amended(
        self, patch: Mapping[str, Any], by: str, reason: str, now: float | None = None
    ) -> FleetDocument:
        """The next version: ``patch`` merged into the changes, each touched path recorded."""
        at = time.time() if now is None else now
        version = self.version + 1
        history = dict(self.history)
        for path in leaf_paths(patch):
            history[path] = Change(version=version, by=by, at=at, reason=reason)
        return self.model_copy(
            update={
                "version": version,
                "updated_by": by,
                "updated_at": at,
                "reason": reason,
                "changes": merge_patch(self.changes, patch),
                "history": history,
            }
        )

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(self.model_dump(mode="json", by_alias=True))
        return packed


class RefusedDocument(ValueError):
    """A fleet document that must not be applied; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def decode_document(raw: bytes, fleet: str) -> FleetDocument:
    """Decode and validate a stored document; refuse anything malformed or foreign."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise RefusedDocument("too_large", f"policy document of {len(raw)} bytes")
    try:
        tree = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise RefusedDocument("malformed", f"not msgpack: {exc}") from None
    if not isinstance(tree, dict):
        raise RefusedDocument("malformed", "not a msgpack map")
    if tree.get("schema") != SCHEMA:
        raise RefusedDocument("foreign", f"schema {tree.get('schema')!r}, expected {SCHEMA!r}")
    if tree.get("fleet") != fleet:
        raise RefusedDocument("foreign", f"document of fleet {tree.get('fleet')!r}, not {fleet!r}")
    try:
        return FleetDocument.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RefusedDocument("invalid", f"'{where}': {first['msg']}") from None
