"""Request and response bodies as JSON or msgpack.

IoT clients often prefer msgpack (smaller, no float-to-text cost). The media type of the
request body picks the decoder; the ``Accept`` header picks the encoder. Both decoders must
yield a JSON-shaped document (str keys, no bytes), so the rest of the system never needs to
know which one the client used.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgpack
import orjson

from hotcold.wire.errors import BadRequest, UnsupportedMediaType

JSON_TYPE = "application/json"
MSGPACK_TYPE = "application/msgpack"
_MSGPACK_ALIASES = frozenset({MSGPACK_TYPE, "application/x-msgpack", "application/vnd.msgpack"})
# A JSON merge patch (RFC 7396, PATCH /admin/policy) is JSON too.
_JSON_ALIASES = frozenset({JSON_TYPE, "text/json", "application/merge-patch+json"})
# Nesting deeper than this is refused (JSON and msgpack alike), 400 at parse time: a body is a
# handful of levels deep (tool schemas, response formats, metadata reach a dozen), and a deep
# one is either a mistake or an attack on whatever recurses over it later (orjson's encoder
# stops at 254 levels: a 253-deep `metadata` used to answer 500).
MAX_NESTING = 64


def media_type(content_type: str | None) -> str:
    """The bare media type, lower-cased, without parameters such as ``charset``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def decode_body(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """Decode a request body into a JSON-shaped dict.

    A missing Content-Type is read as JSON, as curl and many small clients send none.
    """
    kind = media_type(content_type)
    if kind in _MSGPACK_ALIASES:
        document = _decode_msgpack(raw)
    elif kind in _JSON_ALIASES or kind == "":
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"malformed JSON body: {exc}", code="malformed_json") from exc
        # Every object or array opens with a bracket, so a body with at most MAX_NESTING of
        # them (brackets inside strings count too) cannot nest deeper: no walk needed.
        if raw.count(b"[") + raw.count(b"{") > MAX_NESTING:
            check_depth(document)
    else:
        raise UnsupportedMediaType(
            f"Content-Type {content_type!r} is not supported: send {JSON_TYPE} or {MSGPACK_TYPE}"
        )
    if not isinstance(document, dict):
        raise BadRequest(
            f"the body must be an object, got {type(document).__name__}", code="not_an_object"
        )
    return document


def check_depth(document: Any, limit: int = MAX_NESTING) -> None:
    """400 ``too_deep`` past ``limit`` levels of objects and arrays; iterative, so the check
    itself cannot run out of stack however deep the document is."""
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth >= limit:
            raise BadRequest(f"the body is nested deeper than {limit} levels", code="too_deep")
        stack.extend((child, depth + 1) for child in children)


def _decode_msgpack(raw: bytes) -> Any:
    try:
        document = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise BadRequest(f"malformed msgpack body: {exc}", code="malformed_msgpack") from exc
    except TypeError as exc:  # e.g. an unhashable map key
        raise BadRequest(f"malformed msgpack body: {exc}", code="malformed_msgpack") from exc
    _check_json_shaped(document, depth=0)
    return document


def _check_json_shaped(value: Any, depth: int) -> None:
    """msgpack can carry bytes, extension types and non-string keys; JSON cannot."""
    if depth > MAX_NESTING:
        raise BadRequest("msgpack body is nested too deeply", code="malformed_msgpack")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadRequest(
                    f"msgpack map keys must be strings, got {type(key).__name__}",
                    code="malformed_msgpack",
                )
            _check_json_shaped(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json_shaped(item, depth + 1)
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise BadRequest(
            f"msgpack value of type {type(value).__name__} has no JSON equivalent",
            code="malformed_msgpack",
        )


def decompressor(content_encoding: str | None) -> Any:
    """A zlib decompressor for a body's ``Content-Encoding`` (gzip, x-gzip, deflate), None
    for none or identity; ValueError for any other (each side says it its own way)."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("identity", ""):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise ValueError(f"content-encoding {encoding!r} is not supported (gzip or deflate)")


def wants_msgpack(accept: str | None) -> bool:
    """True when the client's Accept header names msgpack (ahead of nothing else we serve)."""
    if not accept:
        return False
    return any(media_type(part) in _MSGPACK_ALIASES for part in accept.split(","))


def accepts_only_msgpack(accept: str | None) -> bool:
    """True when msgpack is the only thing the client reads (no JSON, no wildcard): errors
    are JSON for everyone else, since every client can read that."""
    if not wants_msgpack(accept):
        return False
    readable = {media_type(part) for part in (accept or "").split(",")}
    return not readable & {JSON_TYPE, "*/*", "application/*"}


def encode_body(document: Any, as_msgpack: bool) -> tuple[bytes, str]:
    """Encode a response document; returns (body, content type)."""
    if as_msgpack:
        return msgpack.packb(document, use_bin_type=True), MSGPACK_TYPE
    return orjson.dumps(document), JSON_TYPE
