"""API keys and tenant limits that change while routers run: created, listed, revoked and
given limits through the admin API (router/admin_tenants.py), in effect at once, no restart.

The effective set is the config file's (``tenants.api_keys``, ``tenants.overrides``) plus the
live one; :class:`TenantDirectory` holds both and hands the result to the authenticator and
the limiter after every change (a few dict builds: the request path never waits on it).

Where the live set is stored:

- a fleet: Redis (router/fleet_keys.py), in effect on every router within a second (pub/sub,
  and a poll that heals a lost message);
- a single router with a config file: the file itself (:class:`FileTenantStore`), rewritten
  atomically and reloaded, so it survives a restart (the rewrite drops the file's comments);
- a single router without one: this process (:class:`MemoryTenantStore`), gone at restart.

Only a key's SHA-256 is ever stored; the key is shown once, when it is made. A key's id is
the first 12 hex digits of its SHA-256: stable wherever the key is listed, and no help in
guessing the key.
"""

from __future__ import annotations

import io
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import SingleQuotedScalarString

from router.clock import Clock
from router.config import TenantLimits, TenantsConfig
from router.policy_manager import StoreUnavailable
from router.tenants import Authenticator, TenantLimiter, key_digest

KEY_PREFIX = "hc_"


class UnknownKey(LookupError):
    """No key with that id (or one the API cannot change: it is in a gateway's file)."""


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_id(sha256: str) -> str:
    return sha256[:12]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    tenant: str
    sha256: str
    name: str | None
    created_at: float | None  # wall time, for people
    source: str  # "fleet", "file" or "memory"

    @property
    def id(self) -> str:
        return key_id(self.sha256)

    def public(self) -> dict[str, Any]:
        """What the API lists: never the key, nor its full hash."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "created_at": self.created_at,
            "source": self.source,
        }

    def stored(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "sha256": self.sha256,
            "name": self.name,
            "created_at": self.created_at,
        }

    @classmethod
    def of_stored(cls, document: dict[str, Any], source: str) -> KeyRecord:
        return cls(
            str(document["tenant"]),
            str(document["sha256"]),
            document.get("name"),
            document.get("created_at"),
            source,
        )


def make_key(tenant: str, name: str | None, source: str) -> tuple[str, KeyRecord]:
    """A fresh key and its record (the record holds only the hash)."""
    secret = new_secret()
    return secret, KeyRecord(tenant, key_digest(secret), name, time.time(), source)


class TenantDirectory:
    """The effective keys and limits: the file's and the live ones, pushed to the
    authenticator and the limiter on every change."""

    def __init__(
        self,
        file_config: TenantsConfig,
        authenticator: Authenticator,
        limiter: TenantLimiter,
        clock: Clock,
    ) -> None:
        self.file_config = file_config
        self.authenticator = authenticator
        self.limiter = limiter
        self.clock = clock
        self.live_keys: dict[str, KeyRecord] = {}
        self.live_limits: dict[str, TenantLimits] = {}
        self.keys_managed = False  # a key was made through the API: never open mode again
        self.changes = 0

    def file_keys(self) -> list[KeyRecord]:
        return [
            KeyRecord(key.tenant, key.sha256, key.name, None, "file")
            for key in self.file_config.api_keys
        ]

    def keys(self) -> list[KeyRecord]:
        by_id = {record.id: record for record in self.file_keys()}
        by_id.update(self.live_keys)
        return sorted(by_id.values(), key=lambda record: (record.tenant, record.id))

    def effective(self) -> TenantsConfig:
        return self.file_config.model_copy(
            update={"overrides": {**self.file_config.overrides, **self.live_limits}}
        )

    def set_file(self, config: TenantsConfig) -> None:
        """The config file was reloaded."""
        self.file_config = config
        self._apply()

    def replace_live(
        self,
        keys: Iterable[KeyRecord],
        limits: dict[str, TenantLimits] | None = None,
        keys_managed: bool | None = None,
    ) -> None:
        self.live_keys = {record.id: record for record in keys}
        if limits is not None:
            self.live_limits = dict(limits)
        if keys_managed is not None:
            self.keys_managed = keys_managed
        self._apply()

    def _apply(self) -> None:
        require = self.file_config.require_keys or self.keys_managed
        self.authenticator.reconfigure(((r.tenant, r.sha256) for r in self.keys()), require)
        self.limiter.reconfigure(self.effective(), self.clock.now())
        self.changes += 1

    def describe_limits(self) -> dict[str, Any]:
        effective = self.effective()
        return {
            "default": effective.default.model_dump(),
            "overrides": {t: lim.model_dump() for t, lim in sorted(effective.overrides.items())},
            "live": sorted(self.live_limits),
        }


class TenantStore(Protocol):
    """Where the admin API's changes go; each applies to the directory once stored."""

    where: str

    async def create_key(self, record: KeyRecord) -> None: ...

    async def revoke_key(self, ident: str) -> KeyRecord:
        """The revoked key's record; :class:`UnknownKey` when there is no such key."""
        ...

    async def set_limits(self, tenant: str, limits: TenantLimits | None) -> None: ...


class MemoryTenantStore:
    """A single router without a config file: the live set in this process only."""

    where = "memory"

    def __init__(self, directory: TenantDirectory) -> None:
        self.directory = directory

    async def create_key(self, record: KeyRecord) -> None:
        self.directory.replace_live([*self.directory.live_keys.values(), record], keys_managed=True)

    async def revoke_key(self, ident: str) -> KeyRecord:
        record = self.directory.live_keys.get(ident)
        if record is None:
            raise UnknownKey(_unknown_or_file(self.directory, ident))
        rest = [r for r in self.directory.live_keys.values() if r.id != ident]
        self.directory.replace_live(rest)
        return record

    async def set_limits(self, tenant: str, limits: TenantLimits | None) -> None:
        live = dict(self.directory.live_limits)
        if limits is None:
            live.pop(tenant, None)
        else:
            live[tenant] = limits
        self.directory.replace_live(self.directory.live_keys.values(), live)


def _unknown_or_file(directory: TenantDirectory, ident: str) -> str:
    if any(record.id == ident for record in directory.file_keys()):
        return f"key {ident} is in this router's config file: remove it there"
    return f"no key with id {ident}"


def _quoted(value: str) -> str:
    """A string written in quotes: ruamel.yaml writes by YAML 1.2, where ``yes``, ``no``,
    ``on`` and ``off`` are plain strings, but the config is read by PyYAML (YAML 1.1), which
    reads them unquoted as booleans; a tenant named ``yes`` would break the file."""
    quoted: str = SingleQuotedScalarString(value)
    return quoted


class FileTenantStore:
    """A single router with a config file: keys and limits are written into the file
    (``tenants.api_keys``, ``tenants.overrides``), atomically, then the file is reloaded."""

    where = "file"

    def __init__(self, path: Path, directory: TenantDirectory, reload: Callable[[], Any]) -> None:
        """``reload``: the policy manager's file reload (it applies the tenants section)."""
        self.path = path
        self.directory = directory
        self.reload = reload

    def _edit(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Change the file's tenants section, keeping the rest of the file as the operator
        wrote it: comments, order and quoting survive (ruamel.yaml's round trip; PyYAML
        dropped every comment of the file at the first key made). The strings written are
        quoted (:func:`_quoted`), and a file the reload refuses is put back as it was, so an
        edit can never leave a file the router would not start with. A file that cannot be
        read or written is a 503 with the reason, not an internal error."""
        round_trip = YAML(typ="rt")
        round_trip.preserve_quotes = True
        existed = self.path.exists()
        try:
            text = self.path.read_text() if existed else ""
            document: Any = round_trip.load(text) if text.strip() else None
        except OSError as exc:
            raise StoreUnavailable(f"{self.path} cannot be read: {exc.strerror}") from exc
        except YAMLError as exc:
            raise StoreUnavailable(f"{self.path} is not valid YAML: {exc}") from exc
        only_comments = document is None and bool(text.strip())
        if document is None:
            document = CommentedMap()
        if not isinstance(document, dict):
            raise StoreUnavailable(f"{self.path} is not a mapping of settings")
        tenants = document.get("tenants")
        if tenants is None:
            tenants = document["tenants"] = CommentedMap()
        if not isinstance(tenants, dict):
            raise StoreUnavailable(f"{self.path}: tenants is not a mapping")
        change(tenants)
        out = io.StringIO()
        round_trip.dump(document, out)
        new_text = out.getvalue()
        if only_comments:  # a file of comments alone loads as nothing: keep them above
            new_text = text.rstrip("\n") + "\n" + new_text
        self._write(new_text)
        result = self.reload()
        if getattr(result, "ok", True):
            return
        if existed:
            self._write(text)
        else:
            self.path.unlink(missing_ok=True)
        self.reload()
        raise StoreUnavailable(
            f"the config file did not reload, so it was put back as it was: {result.message}"
        )

    def _write(self, text: str) -> None:
        """Replace the file's content atomically (a reader sees the old or the new file)."""
        try:
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".hotcold-")
        except OSError as exc:
            raise StoreUnavailable(
                f"the config file's directory {self.path.parent} is not writable: {exc.strerror}"
            ) from exc
        try:
            with os.fdopen(handle, "w") as out:
                out.write(text)
            os.replace(temporary, self.path)
        except OSError as exc:
            Path(temporary).unlink(missing_ok=True)
            raise StoreUnavailable(f"{self.path} cannot be written: {exc.strerror}") from exc
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    async def create_key(self, record: KeyRecord) -> None:
        entry = {"tenant": _quoted(record.tenant), "sha256": _quoted(record.sha256)}
        if record.name:
            entry["name"] = _quoted(record.name)

        def add(tenants: dict[str, Any]) -> None:
            tenants["require_keys"] = True  # revoking the last key must not open the router
            tenants["api_keys"] = [*(tenants.get("api_keys") or []), entry]

        self._edit(add)

    async def revoke_key(self, ident: str) -> KeyRecord:
        found = [record for record in self.directory.file_keys() if record.id == ident]
        if not found:
            raise UnknownKey(f"no key with id {ident}")

        def remove(tenants: dict[str, Any]) -> None:
            keys = tenants.get("api_keys") or []
            tenants["api_keys"] = [
                key for key in keys if key_id(str(key.get("sha256", ""))) != ident
            ]

        self._edit(remove)
        return found[0]

    async def set_limits(self, tenant: str, limits: TenantLimits | None) -> None:
        def change(tenants: dict[str, Any]) -> None:
            overrides = tenants.setdefault("overrides", {}) or {}
            if limits is None:
                overrides.pop(tenant, None)
            else:
                overrides[_quoted(tenant)] = limits.model_dump(exclude_defaults=True)
            tenants["overrides"] = overrides

        self._edit(change)
