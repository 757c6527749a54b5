"""Who is an operator: the admin bearer token, or a dashboard session cookie exchanged for
it (router/sessions.py). Everyone is, in open mode (no admin token configured)."""

from __future__ import annotations

import hmac

from aiohttp import web

from router.parts import parts_of
from router.sessions import COOKIE
from router.tenants import bearer_token


def valid_token(offered: str | None, token: str) -> bool:
    """Constant-time comparison with the admin token."""
    return offered is not None and hmac.compare_digest(offered.encode(), token.encode())


def is_admin(request: web.Request) -> bool:
    """The admin token (bearer) or a dashboard session; everyone in open mode (no token)."""
    parts = parts_of(request)
    token = parts.config.admin.token
    if token is None or valid_token(bearer_token(request), token):
        return True
    return parts.sessions.valid(request.cookies.get(COOKIE), parts.clock.now())
