"""Owns the live policy of one router: computes it from the start-up layers and the fleet's
document, applies it to the running classifier and threshold controller, reloads the config
file, and commits operator changes through a :class:`PolicyStore` (Redis, or this process).

Applying is synchronous and cheap (a few attribute swaps), so the request path only ever reads
the current values and never waits for a change, a reload or Redis.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from router.classify import Classifier, PinRule
from router.clock import Clock
from router.config import ConfigLayers, RouterConfig
from router.errors import ConfigError
from router.policy import (
    CONFIG_PATHS,
    FleetDocument,
    PolicyError,
    PolicyValues,
    effective_values,
    values_from_config,
)
from router.threshold import ThresholdParams

log = logging.getLogger("hotcold.policy")


class StoreUnavailable(RuntimeError):
    """The fleet store cannot be reached: nothing was changed."""


class VersionConflict(RuntimeError):
    """Someone else committed first; ``current`` is the version in the store."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"the policy is at version {current}, not {expected}")
        self.expected = expected
        self.current = current


class PolicyStore(Protocol):
    async def commit(self, document: FleetDocument, expected_version: int) -> None:
        """Store ``document`` if the stored version is ``expected_version``, else raise
        :class:`VersionConflict`; :class:`StoreUnavailable` when it cannot tell."""
        ...


class LocalStore:
    """Without Redis: changes live in this process (lost on restart), same conflict rules."""

    def __init__(self, manager: PolicyManager) -> None:
        self._manager = manager

    async def commit(self, document: FleetDocument, expected_version: int) -> None:
        current = self._manager.document.version
        if current != expected_version:
            raise VersionConflict(expected_version, current)


def threshold_params(values: PolicyValues, initial: float) -> ThresholdParams:
    """The controller's parameters for a policy (``initial`` clamped into its bounds)."""
    threshold, capacity = values.threshold, values.capacity
    return ThresholdParams(
        initial=min(max(initial, threshold.min), threshold.max),
        minimum=threshold.min,
        maximum=threshold.max,
        history_weight=threshold.history_weight,
        control_interval_s=capacity.control_interval_s,
        queue_delay_slo_ms=capacity.queue_delay_slo_ms,
        target_fraction=capacity.target_fraction,
        idle_fraction=capacity.idle_fraction,
        raise_factor=capacity.raise_factor,
        lower_factor=capacity.lower_factor,
    )


def pin_rules(values: PolicyValues) -> tuple[PinRule, ...]:
    return tuple(
        PinRule(pin.route, pin.model, re.compile(pin.pattern) if pin.pattern else None)
        for pin in values.pins
    )


# Sections a reload applies in full (the model catalog and its pools: router/models.py;
# the tenants' keys and limits: router/live_keys.py).
LIVE_SECTIONS = frozenset({("models",), ("pools",), ("cloud",), ("tenants",)})


def _restart_only_changes(old: RouterConfig, new: RouterConfig) -> list[str]:
    """Dotted keys that differ outside the live policy and live sections (need a restart)."""
    live = set(CONFIG_PATHS.values()) | {("policy", "threshold", "initial")} | LIVE_SECTIONS

    def flatten(
        tree: Mapping[str, Any], prefix: tuple[str, ...] = ()
    ) -> dict[tuple[str, ...], Any]:
        flat: dict[tuple[str, ...], Any] = {}
        for key, value in tree.items():
            path = (*prefix, key)
            if path in live:
                continue
            if isinstance(value, Mapping):
                flat.update(flatten(value, path))
            else:
                flat[path] = value
        return flat

    before, after = flatten(old.model_dump()), flatten(new.model_dump())
    return sorted(
        ".".join(path)
        for path in before.keys() | after.keys()
        if before.get(path) != after.get(path)
    )


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    message: str
    needs_restart: tuple[str, ...] = ()


class PolicyManager:
    def __init__(
        self,
        layers: ConfigLayers,
        config: RouterConfig,
        classifier: Classifier,
        clock: Clock,
        on_reload: Callable[[RouterConfig], None] | None = None,
        store: PolicyStore | None = None,
    ) -> None:
        """``on_reload`` applies a reloaded config's live sections (the catalog and its
        pools); it raises ConfigError, changing nothing, when it cannot. ``store``: where
        changes are committed (the fleet's Redis); None keeps them in this process."""
        self.on_reload = on_reload
        self.layers = layers
        self.config = config  # the running start-up configuration
        self.classifier = classifier
        self.clock = clock
        self.base: dict[str, Any] = values_from_config(config)
        self.document = FleetDocument.empty(config.fleet.name)
        self.values: PolicyValues = effective_values(self.base, {})
        self.store: PolicyStore = store if store is not None else LocalStore(self)
        self.refused = 0  # fleet documents refused (their changes did not validate here)
        self.reloads = {"ok": 0, "failed": 0}
        self._apply(self.values, "initial policy from the start-up configuration")

    # ---- applying ----------------------------------------------------------------------------

    def _apply(self, values: PolicyValues, why: str) -> None:
        controller = self.classifier.controller
        controller.reconfigure(
            threshold_params(values, controller.params.initial), self.clock.now(), why
        )
        self.classifier.pins = pin_rules(values)
        self.values = values

    def adopt(self, document: FleetDocument) -> bool:
        """Apply a fleet document (already decoded and validated as a document). Refused,
        with a log line, when its changes do not make a valid policy over this router's
        start-up values; the last good policy stays. True when applied."""
        try:
            values = effective_values(self.base, document.changes)
        except PolicyError as exc:
            self.refused += 1
            log.error(
                "fleet policy version %d refused, keeping version %d: %s",
                document.version,
                self.document.version,
                exc,
            )
            return False
        previous = self.document.version
        self.document = document
        self._apply(values, f"fleet policy version {document.version} by {document.updated_by}")
        if document.version != previous:
            log.info(
                "policy version %d -> %d (%s%s)",
                previous,
                document.version,
                document.updated_by,
                f": {document.reason}" if document.reason else "",
            )
        return True

    # ---- operator changes --------------------------------------------------------------------

    async def change(
        self,
        patch: Mapping[str, Any],
        by: str,
        reason: str,
        expected_version: int | None = None,
    ) -> FleetDocument:
        """Validate, commit to the store (compare-and-set on the version), then apply here
        at once. Raises PolicyError (bad change), VersionConflict, StoreUnavailable."""
        base_document = self.document
        if expected_version is not None and expected_version != base_document.version:
            raise VersionConflict(expected_version, base_document.version)
        document = base_document.amended(patch, by, reason, time.time())
        effective_values(self.base, document.changes)  # raises PolicyError, names the key
        await self.store.commit(document, base_document.version)
        self.adopt(document)
        return document

    # ---- the config file ---------------------------------------------------------------------

    def reload_file(self) -> ReloadResult:
        """Re-read the config file; a bad file keeps the last good policy and says why."""
        if self.layers.path is None:
            return ReloadResult(False, "no config file to reload (started without --config)")
        try:
            layers = self.layers.with_file_reloaded()
            config = layers.build()
            base = values_from_config(config)
            values = effective_values(base, self.document.changes)
            if self.on_reload is not None:
                self.on_reload(config)
        except (ConfigError, PolicyError) as exc:
            self.reloads["failed"] += 1
            log.error("config reload failed, keeping the last good policy: %s", exc)
            return ReloadResult(False, f"reload failed, last good policy kept: {exc}")
        needs_restart = tuple(_restart_only_changes(self.config, config))
        self.layers, self.base = layers, base
        self._apply(values, f"config file {layers.path} reloaded")
        self.reloads["ok"] += 1
        message = f"reloaded {layers.path}"
        if needs_restart:
            message += "; these changes need a restart and were not applied: " + ", ".join(
                needs_restart
            )
            log.warning("%s", message)
        else:
            log.info("%s", message)
        return ReloadResult(True, message, needs_restart)

    # ---- introspection -----------------------------------------------------------------------

    def source_of(self, path: str) -> dict[str, Any]:
        change = self.document.history.get(path)
        if change is not None and _set_in(self.document.changes, path):
            return {"layer": "fleet", **change.model_dump()}
        return {"layer": self.layers.source_of(CONFIG_PATHS[path])}

    def describe(self) -> dict[str, Any]:
        document = self.document
        return {
            "version": document.version,
            "updated_by": document.updated_by,
            "updated_at": document.updated_at,
            "reason": document.reason,
            "values": self.values.model_dump(mode="json", exclude_none=True),
            "sources": {path: self.source_of(path) for path in CONFIG_PATHS},
            "fleet_changes": document.changes,
            "refused_documents": self.refused,
            "precedence": "default < environment < file < flag < fleet change (PUT /admin/policy)",
        }


def _set_in(tree: Mapping[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
