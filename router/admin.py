"""The admin API, behind the admin bearer token (open mode, with a warning, when none is set).

- ``GET /admin/policy``: the effective policy, where each value came from (default,
  environment, file, flag, or the fleet change that set it: version, who, when, why), the
  threshold and why it moved, cache, sketch, edge. ``ETag`` is the policy version.
- ``PUT /admin/policy``: replace the policy for the whole fleet with the document ``GET``
  returned, edited (its ``policy.values`` are the new policy, its ``policy.version`` the
  version it was read at: compare-and-set). A value equal to this router's file is handed
  back to the file; the read-only parts of the document are ignored. The older envelope is
  still accepted::

      {"changes": {"threshold": {"max": 8}, "cache": {"ttl_s": null}},
       "by": "alice", "reason": "evening peak"}

- ``PATCH /admin/policy`` with ``Content-Type: application/merge-patch+json``: a JSON merge
  patch (RFC 7396) of ``policy.values``, e.g. ``{"threshold": {"max": 8}}``; ``null`` hands a
  value back to each gateway's file. ``?by=alice&reason=...`` say who and why.

  Compare-and-set on the version: send ``If-Match: "<version>"`` (or ``"expected_version"``
  in the envelope) to change only what you read; an edit based on an older version gets 409
  ``version_conflict`` with the current version and nothing is written. 422 names a bad key
  or value; 503 when the fleet's Redis cannot be reached (nothing changed).
- ``GET /admin/fleet``: Redis state, this router's id, the live members and their versions.
- ``POST /admin/reload``: re-read the config file now (as SIGHUP does).
- ``/admin/keys``, ``/admin/tenants``: API keys and tenant limits, live (router/admin_tenants.py).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from hotcold.http import Handler, read_document, respond
from hotcold.wire import (
    BadRequest,
    Conflict,
    InvalidSetting,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from hotcold.wire.codec import media_type
from router.access import is_admin, valid_token
from router.admin_tenants import add_routes as add_tenant_routes
from router.dashboard import (
    common_script,
    dashboard_data,
    dashboard_page,
    fleet_data,
    fleet_page,
)
from router.parts import parts_of
from router.policy import PolicyError, replacement_patch
from router.policy_manager import StoreUnavailable, VersionConflict
from router.sessions import COOKIE

MERGE_PATCH_TYPE = "application/merge-patch+json"
_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,18})"?\s*$')


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def policy_document(request: web.Request) -> dict[str, Any]:
    state = parts_of(request)
    state.controller.maybe_tick(state.clock.now())
    return {
        "policy": state.manager.describe(),
        "threshold": state.controller.snapshot(),
        "cache": state.cache.snapshot(),
        "sketch": {
            "width": state.sketch.width,
            "window_requests": state.sketch.sample_size,
            "memory_bytes": state.sketch.memory_bytes,
            "agings": state.sketch.resets,
        },
        "edge": {
            "endpoints": state.edge.snapshot() if state.edge else [],
            "outstanding": state.edge.outstanding if state.edge else 0,
            "max_inflight": state.config.edge.max_inflight,
            "takes_hot_traffic": state.dispatcher.edge_can_take(),
            "release": state.dispatcher.release.snapshot(),
        },
        "fleet": state.fleet_status(),
        "mode": "open (no admin token configured)" if state.config.admin.token is None else "token",
    }


async def get_policy(request: web.Request) -> web.Response:
    state = parts_of(request)
    return respond(request, policy_document(request), headers=_etag(state.manager.document.version))


def _expected_version(request: web.Request, body: dict[str, Any]) -> int | None:
    header = request.headers.get("If-Match")
    if header is not None and header.strip() != "*":
        match = _ETAG.match(header)
        if match is None:
            raise BadRequest('If-Match must be a policy version such as "7"', param="If-Match")
        return int(match.group(1))
    expected = body.get("expected_version")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
        raise InvalidSetting("expected_version must be an integer", param="expected_version")
    return expected


def _who(request: web.Request, by: Any) -> str:
    if by is None:
        fleet = parts_of(request).fleet
        by = f"admin api on {fleet.router_id if fleet else 'this router'}"
    if not isinstance(by, str) or not 0 < len(by) <= 200:
        raise InvalidSetting("'by' must be a string of 1-200 characters", param="by")
    return by


def _why(reason: Any) -> str:
    if not isinstance(reason, str) or len(reason) > 500:
        raise InvalidSetting("'reason' must be a string of at most 500 characters", param="reason")
    return reason


async def _commit(
    request: web.Request, changes: dict[str, Any], by: str, reason: str, expected: int | None
) -> web.Response:
    """Commit a merge patch of the live policy fleet-wide; answer with the new document."""
    state = parts_of(request)
    try:
        if changes:
            await state.manager.change(changes, by, reason, expected)
        elif expected is not None and expected != state.manager.document.version:
            raise VersionConflict(expected, state.manager.document.version)
    except PolicyError as exc:
        raise InvalidSetting(f"invalid policy change: {exc}", code="invalid_policy") from None
    except VersionConflict as exc:
        raise Conflict(
            f"{exc}: read the policy again and re-apply your change (nothing was written)",
            code="version_conflict",
        ) from None
    except StoreUnavailable as exc:
        raise ServiceUnavailable(
            f"{exc}; the change was not applied", code="fleet_unavailable", retry_after_s=1
        ) from None
    return respond(request, policy_document(request), headers=_etag(state.manager.document.version))


async def put_policy(request: web.Request) -> web.Response:
    body = await read_document(request)
    if "changes" in body or not {"policy", "values"} & set(body):
        return await _put_changes(request, body)  # the envelope; names what is unknown
    # The document GET returns (or its "policy" part): a replacement of the live values.
    described = body.get("policy", body)
    values = described.get("values") if isinstance(described, dict) else None
    if not isinstance(values, dict):
        raise InvalidSetting(
            "send the document GET /admin/policy returns with policy.values edited (or"
            ' {"changes": <merge patch>}; PATCH takes a merge patch)',
            param="policy.values",
        )
    version = described.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise InvalidSetting("policy.version must be an integer", param="policy.version")
    expected = _expected_version(request, {}) if "If-Match" in request.headers else version
    manager = parts_of(request).manager
    changes = replacement_patch(manager.base, manager.document.changes, values)
    by, reason = _who(request, body.get("by")), _why(body.get("reason", "policy replaced (PUT)"))
    return await _commit(request, changes, by, reason, expected)


async def _put_changes(request: web.Request, body: dict[str, Any]) -> web.Response:
    unknown = set(body) - {"changes", "by", "reason", "expected_version"}
    if unknown:
        raise InvalidSetting(
            f"unknown field(s): {', '.join(sorted(unknown))}", code="unknown_field"
        )
    changes = body.get("changes")
    if not isinstance(changes, dict) or not changes:
        raise InvalidSetting("'changes' must be a non-empty object of settings", param="changes")
    by, reason = _who(request, body.get("by")), _why(body.get("reason", ""))
    return await _commit(request, changes, by, reason, _expected_version(request, body))


async def patch_policy(request: web.Request) -> web.Response:
    """A JSON merge patch of the live values (``policy.values`` of GET)."""
    if media_type(request.headers.get("Content-Type")) != MERGE_PATCH_TYPE:
        raise UnsupportedMediaType(
            f"PATCH /admin/policy takes Content-Type: {MERGE_PATCH_TYPE}, e.g."
            ' {"threshold": {"max": 8}}'
        )
    patch = await read_document(request)
    if not patch:
        raise InvalidSetting("the merge patch changes nothing", param="body")
    by = _who(request, request.query.get("by"))
    reason = _why(request.query.get("reason", ""))
    return await _commit(request, patch, by, reason, _expected_version(request, {}))


async def get_fleet(request: web.Request) -> web.Response:
    return respond(request, parts_of(request).fleet_status())


async def memory(request: web.Request) -> web.Response:
    """Where the router's Python memory is, for hunting growth: the largest allocation sites
    when the router runs with ``PYTHONTRACEMALLOC=1`` (tracing costs CPU: not for every day)."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return respond(
            request, {"tracing": False, "hint": "start the router with PYTHONTRACEMALLOC=1"}
        )
    snapshot = tracemalloc.take_snapshot()
    top = snapshot.statistics("lineno")[:25]
    current, peak = tracemalloc.get_traced_memory()
    return respond(
        request,
        {
            "tracing": True,
            "traced_bytes": current,
            "peak_bytes": peak,
            "top": [
                {"where": str(stat.traceback[0]), "bytes": stat.size, "blocks": stat.count}
                for stat in top
            ],
        },
    )


async def reload_config(request: web.Request) -> web.Response:
    state = parts_of(request)
    result = state.manager.reload_file()
    document = {
        "reloaded": result.ok,
        "message": result.message,
        "needs_restart": list(result.needs_restart),
        "policy": state.manager.describe(),
    }
    return respond(request, document, status=200 if result.ok else 422)


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One check for every admin route and the dashboard: the admin bearer token, or the
    session cookie a browser got for it (router/sessions.py). ``?token=<admin token>`` logs a
    browser in: a valid token gets a session cookie and a redirect to the same page without
    the token in its address; an invalid one gets 401 and no cookie. Open mode without a
    token."""
    if is_admin(request):
        return await handler(request)
    parts = parts_of(request)
    token = parts.config.admin.token
    if "token" in request.query and token is not None:
        if not valid_token(request.query["token"], token):
            raise Unauthorized("the admin token is not valid")
        response = web.HTTPFound(request.path)
        response.set_cookie(
            COOKIE,
            parts.sessions.issue(parts.clock.now()),
            max_age=int(parts.sessions.ttl_s),
            path="/admin",
            httponly=True,
            samesite="Strict",
            secure=request.secure or None,
        )
        raise response
    raise Unauthorized("the admin API needs 'Authorization: Bearer <admin token>'")


async def put_release(request: web.Request) -> web.Response:
    """Pin a model's edge-release stage (or unpin it: ``"stage": null``), for the whole fleet:
    ``{"model": "chat-small", "stage": 0, "by": "alice", "reason": "bad answers seen"}``."""
    parts = parts_of(request)
    body = await read_document(request)
    name, stage = body.get("model"), body.get("stage", "missing")
    resolved = parts.routes.catalog.find(name) if isinstance(name, str) else None
    if resolved is None:
        raise InvalidSetting("'model' must name a catalog model", param="model")
    if stage is not None and (not isinstance(stage, int) or isinstance(stage, bool)):
        raise InvalidSetting("'stage' must be an integer stage or null", param="stage")
    by = body.get("by") if isinstance(body.get("by"), str) else "admin api"
    what = "unpinned" if stage is None else f"pinned at stage {stage}"
    reason = f"{what} by {by}: {body.get('reason', '')}".rstrip(": ")
    release = parts.dispatcher.release
    try:
        release.pin(resolved.entry.name, stage, reason)
    except ValueError as exc:
        raise InvalidSetting(str(exc), param="stage") from None
    return respond(request, release.snapshot())


def admin_app() -> web.Application:
    """The admin API and the dashboard, mounted under ``/admin`` behind :func:`admin_auth`."""
    admin = web.Application(middlewares=[admin_auth])
    admin.router.add_get("/dashboard", dashboard_page)
    admin.router.add_get("/dashboard/data", dashboard_data)
    admin.router.add_get("/dashboard/common.js", common_script)
    admin.router.add_get("/dashboard/fleet", fleet_page)
    admin.router.add_get("/dashboard/fleet/data", fleet_data)
    admin.router.add_get("/policy", get_policy)
    admin.router.add_put("/policy", put_policy)
    admin.router.add_patch("/policy", patch_policy)
    admin.router.add_get("/fleet", get_fleet)
    admin.router.add_post("/reload", reload_config)
    admin.router.add_put("/release", put_release)
    admin.router.add_get("/memory", memory)
    add_tenant_routes(admin)  # /admin/keys, /admin/tenants (router/admin_tenants.py)
    return admin
