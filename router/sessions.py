"""Dashboard login sessions: a browser cannot send a bearer header when it opens a page, so
``?token=<admin token>`` is exchanged, once and only when valid, for a session cookie that is
*not* the token: ``<expiry>.<HMAC-SHA256(key, expiry)>`` under a random key that this router
process draws at start. A stolen cookie expires and dies with the process; the token never
sits in the browser. Pure: the caller gives the time (the router's injected clock).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

COOKIE = "hotcold_admin_session"
DEFAULT_TTL_S = 8 * 3600.0  # a working day


class AdminSessions:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S, key: bytes | None = None) -> None:
        self.ttl_s = ttl_s
        self._key = key if key is not None else secrets.token_bytes(32)

    def _sign(self, expiry: str) -> str:
        return hmac.new(self._key, expiry.encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float) -> str:
        expiry = f"{now + self.ttl_s:.3f}"
        return f"{expiry}.{self._sign(expiry)}"

    def valid(self, cookie: str | None, now: float) -> bool:
        if not cookie or cookie.count(".") < 1:
            return False
        expiry, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(expiry).encode()):
            return False
        try:
            return now < float(expiry)
        except ValueError:
            return False
