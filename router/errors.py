"""The router's own errors, each one of the public API errors of :mod:`hotcold.wire.errors`.

Lower-layer failures (aiohttp's ClientError, timeouts) are re-raised as one of these at the
upstream client, with the original as ``__cause__``; the error middleware turns them into
HTTP answers::

    ServiceUnavailable (503)
    ├── NoHealthyUpstream     every endpoint is ejected (circuit open) or busy
    └── UpstreamFailed        every attempt failed (connection refused, reset, 5xx)
    UpstreamTimeout (504)
    └── DeadlineExceeded      the request's deadline passed before an answer
"""

from __future__ import annotations

from hotcold.wire.errors import ServiceUnavailable, UpstreamTimeout


class NoHealthyUpstream(ServiceUnavailable):
    default_code = "no_healthy_upstream"


class UpstreamFailed(ServiceUnavailable):
    default_code = "upstream_failed"


class DeadlineExceeded(UpstreamTimeout):
    default_code = "deadline_exceeded"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the value."""
