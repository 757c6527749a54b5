"""The admin API for API keys and tenant limits (live: router/live_keys.py), under ``/admin``.

- ``GET /admin/keys``: every key in effect (id, tenant, name, created, source), never the key
  nor its hash.
- ``POST /admin/keys`` ``{"tenant": "acme", "name": "thermostats"}``: 201 with the new key in
  ``"key"`` (shown this once) and its id; in effect on every router of a fleet within a second.
- ``DELETE /admin/keys/{id}``: revoke; refused on every router within a second. 404 for an
  unknown id (or a key in a gateway's own file, which only that file can remove).
- ``GET /admin/tenants``: the limits in effect (default, overrides; which are live).
- ``PUT /admin/tenants/{tenant}/limits`` ``{"requests_per_s": 10, "burst": 20, ...}`` (the
  fields of ``tenants.overrides``): the tenant's limits for the fleet; ``DELETE`` hands them
  back to each gateway's file.

Changes answer 503 ``fleet_unavailable`` when the fleet's Redis cannot be reached (nothing is
changed; keys in effect keep working).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from hotcold.http import read_document, respond
from hotcold.wire import InvalidSetting, NotFound, ServiceUnavailable
from router.config import TENANT_PATTERN, TenantLimits
from router.live_keys import UnknownKey, make_key
from router.parts import parts_of
from router.policy_manager import StoreUnavailable

_TENANT = re.compile(TENANT_PATTERN)


def _unavailable(exc: StoreUnavailable) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"{exc}; nothing was changed", code="fleet_unavailable", retry_after_s=1
    )


async def list_keys(request: web.Request) -> web.Response:
    parts = parts_of(request)
    keys = parts.tenants.keys()
    return respond(
        request,
        {
            "keys": [record.public() for record in keys],
            "stored_in": parts.tenant_store.where,
            "open_mode": parts.tenants.authenticator.open_mode,
        },
    )


async def create_key(request: web.Request) -> web.Response:
    parts = parts_of(request)
    body = await read_document(request)
    unknown = set(body) - {"tenant", "name"}
    if unknown:
        raise InvalidSetting(
            f"unknown field(s): {', '.join(sorted(unknown))}", code="unknown_field"
        )
    tenant, name = body.get("tenant"), body.get("name")
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise InvalidSetting("'tenant' must be 1-64 of [A-Za-z0-9._-]", param="tenant")
    if name is not None and (not isinstance(name, str) or len(name) > 100):
        raise InvalidSetting("'name' must be a string of at most 100 characters", param="name")
    secret, record = make_key(tenant, name, parts.tenant_store.where)
    try:
        await parts.tenant_store.create_key(record)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    except UnknownKey as exc:  # an id taken already: astronomically rare
        raise InvalidSetting(str(exc), code="key_exists") from None
    return respond(request, {"key": secret, **record.public()}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    parts = parts_of(request)
    ident = request.match_info["ident"]
    try:
        record = await parts.tenant_store.revoke_key(ident)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    except UnknownKey as exc:
        raise NotFound(str(exc), code="key_not_found") from None
    return respond(request, {"revoked": record.public()})


async def get_tenants(request: web.Request) -> web.Response:
    parts = parts_of(request)
    return respond(
        request, {**parts.tenants.describe_limits(), "stored_in": parts.tenant_store.where}
    )


def _tenant_of(request: web.Request) -> str:
    tenant = request.match_info["tenant"]
    if not _TENANT.match(tenant):
        raise InvalidSetting("the tenant must be 1-64 of [A-Za-z0-9._-]", param="tenant")
    return tenant


async def put_limits(request: web.Request) -> web.Response:
    parts = parts_of(request)
    tenant = _tenant_of(request)
    body: dict[str, Any] = await read_document(request)
    try:
        limits = TenantLimits.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidSetting(f"invalid limits: {problems}", code="invalid_limits") from None
    try:
        await parts.tenant_store.set_limits(tenant, limits)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    return respond(request, parts.tenants.describe_limits())


async def delete_limits(request: web.Request) -> web.Response:
    parts = parts_of(request)
    tenant = _tenant_of(request)
    try:
        await parts.tenant_store.set_limits(tenant, None)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    return respond(request, parts.tenants.describe_limits())


def add_routes(admin: web.Application) -> None:
    admin.router.add_get("/keys", list_keys)
    admin.router.add_post("/keys", create_key)
    admin.router.add_delete("/keys/{ident}", revoke_key)
    admin.router.add_get("/tenants", get_tenants)
    admin.router.add_put("/tenants/{tenant}/limits", put_limits)
    admin.router.add_delete("/tenants/{tenant}/limits", delete_limits)
