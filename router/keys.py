"""Request keys: which requests are "the same" for the cache and the frequency sketch.

A key is tenant + public model + the canonical request: the kind (chat, text or embeddings)
and every other field of the body, so that any field that can change the answer (known or
forwarded unread: ``tools``, ``response_format``, ``guided_json`` ...) separates entries.
Fields that do not change the output (``stream``, ``stream_options``, ``user``, ``metadata``,
``store``, ``service_tier``, ``prompt_cache_key``, ``safety_identifier``) are left out, so a
streamed and a plain request share an entry. The model is the catalog's public name, not the
name sent: aliases of one model share its entries (router/catalog.py).

The canonical form is serialised with sorted keys and hashed with BLAKE2b to 128 bits: the
fingerprint feeds the sketch's four 32-bit row indexes, and the hex digest names the cache
entry. The tenant is hashed in, so one tenant's key can never equal another's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from hotcold.wire import InferenceRequest

# Body fields that do not change what the model answers.
OUTPUT_NEUTRAL_FIELDS = frozenset(
    {
        "model",  # keyed by its public name instead (aliases share)
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    }
)


@dataclass(frozen=True, slots=True)
class RequestKey:
    tenant: str
    model: str
    fingerprint: int  # 128 bits
    digest: str  # hex of the fingerprint

    @property
    def cache_key(self) -> str:
        return self.digest


def canonical_document(request: InferenceRequest) -> dict[str, Any]:
    """The parts of the request that decide the answer, in a stable shape."""
    document = {
        name: value for name, value in request.body.items() if name not in OUTPUT_NEUTRAL_FIELDS
    }
    document["_kind"] = request.kind
    if request.kind == "chat":
        # Normalise message content: a plain string and a single text part are the same.
        document["messages"] = [_canonical_message(m) for m in request.body["messages"]]
    return document


def _canonical_message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list) and len(content) == 1 and content[0].get("type") == "text":
        message = {**message, "content": content[0].get("text")}
    return message


def fingerprint_of(*parts: bytes) -> tuple[int, str]:
    hasher = hashlib.blake2b(digest_size=16)
    for part in parts:
        hasher.update(len(part).to_bytes(4, "big"))
        hasher.update(part)
    digest = hasher.digest()
    return int.from_bytes(digest, "big"), digest.hex()


def request_key(
    tenant: str, model: str, request: InferenceRequest, producers: str = ""
) -> RequestKey:
    """``model``: the public name the catalog resolved the request's model to; ``producers``:
    who may compute it (pool, upstream model, edge model), so that a catalog change never
    serves answers another producer made for the old entry."""
    return key_of(tenant, model, producers, canonical_bytes(request))


def canonical_bytes(request: InferenceRequest) -> bytes:
    """The canonical document serialised with sorted keys: what the fingerprint hashes."""
    return orjson.dumps(canonical_document(request), option=orjson.OPT_SORT_KEYS)


def key_of(tenant: str, model: str, producers: str, canonical: bytes) -> RequestKey:
    """The key of a request whose :func:`canonical_bytes` are ``canonical``."""
    fingerprint, digest = fingerprint_of(
        tenant.encode(), model.encode(), producers.encode(), canonical
    )
    return RequestKey(tenant, model, fingerprint, digest)


def int_fingerprint(key: int) -> int:
    """A 128-bit fingerprint of an integer key (for trace replay): two rounds of splitmix64."""
    return (_splitmix64(key) << 64) | _splitmix64(key ^ 0x9E3779B97F4A7C15)


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)
