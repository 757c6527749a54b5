"""Validated requests remembered by their exact bytes, so a repeated request (a cache hit, by
definition a request the router has seen) skips decoding, validation and canonicalisation.

Decoding and validation depend only on the endpoint (chat, text, embeddings), the body's
media type and its bytes: the same bytes that passed once pass again with the same result, so
remembering the result skips nothing a valid twin did not already prove. A body that fails is
never remembered: every invalid request is decoded and validated again and gets its 400. The
checks that depend on the live configuration (the token ceiling, the prompt length, the
catalog) stay in the dispatcher and run on every request.

Bounded: at most :data:`ENTRIES` bodies of at most :data:`MAX_BODY_BYTES` each (larger ones
are parsed every time, never kept), the least recently used dropped first; each entry keeps at
most :data:`KEYS_PER_ENTRY` request keys (one per tenant, model and producers it was asked
as). The remembered request is shared by every request with those bytes, so nothing may
change an :class:`~hotcold.wire.InferenceRequest` or its body after parsing (nothing does:
forwarding copies the body).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hotcold.wire import InferenceRequest
from hotcold.wire.codec import decode_body
from hotcold.wire.schema import (
    Kind,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
)
from router.keys import RequestKey, canonical_bytes, key_of

ENTRIES = 1024  # remembered bodies
MAX_BODY_BYTES = 8192  # bodies above this are parsed every time (memory: <= 8 MiB of bytes)
KEYS_PER_ENTRY = 4  # request keys kept per body (tenants x models asking with it)

_PARSERS: dict[Kind, Callable[[dict[str, Any]], InferenceRequest]] = {
    "chat": parse_chat_request,
    "completion": parse_completion_request,
    "embeddings": parse_embedding_request,
}


class ParsedRequest:
    """A validated request with what the dispatcher derives from it on every request,
    derived once: its canonical form (the output-deciding fields, serialised), its prompt
    text, its output bounds, and the request keys computed from it. Read-only after parsing."""

    __slots__ = ("_keys", "canonical", "output_fields", "prompt", "request")

    def __init__(self, request: InferenceRequest) -> None:
        self.request = request
        self.canonical = canonical_bytes(request)
        self.prompt = request.prompt_text()
        self.output_fields = request.params.output_fields()
        self._keys: dict[tuple[str, str, str], RequestKey] = {}

    def key(self, tenant: str, model: str, producers: str = "") -> RequestKey:
        """The request's key for this tenant and the catalog's resolution of its model (the
        same value :func:`router.keys.request_key` gives)."""
        asked = (tenant, model, producers)
        found = self._keys.get(asked)
        if found is not None:
            return found
        key = key_of(tenant, model, producers, self.canonical)
        if len(self._keys) < KEYS_PER_ENTRY:
            self._keys[asked] = key
        return key


class ParsedRequests:
    """The remembered bodies (see the module's docstring for what that may skip)."""

    __slots__ = ("_entries", "_limit", "hits")

    def __init__(self, entries: int = ENTRIES) -> None:
        self._limit = entries
        self._entries: dict[tuple[Kind, str | None, bytes], ParsedRequest] = {}
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def parse(self, kind: Kind, content_type: str | None, raw: bytes) -> ParsedRequest:
        """Decode and validate ``raw`` (raising the same 4xx errors as the parsers), or give
        back what the same bytes gave before."""
        if len(raw) > MAX_BODY_BYTES:
            return ParsedRequest(_PARSERS[kind](decode_body(raw, content_type)))
        entries = self._entries
        asked = (kind, content_type, raw)
        found = entries.pop(asked, None)
        if found is not None:
            self.hits += 1
            entries[asked] = found  # the most recently used last
            return found
        parsed = ParsedRequest(_PARSERS[kind](decode_body(raw, content_type)))
        if len(entries) >= self._limit:
            del entries[next(iter(entries))]  # the least recently used
        entries[asked] = parsed
        return parsed
