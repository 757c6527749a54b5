"""The OpenAI-compatible wire format shared by the router, the edge node and the cloud stub.

Only the stdlib, msgpack, orjson and pydantic are imported here, so the router can use it
without pulling in torch.
"""

from hotcold.wire.codec import (
    JSON_TYPE,
    MSGPACK_TYPE,
    decode_body,
    encode_body,
    wants_msgpack,
)
from hotcold.wire.errors import (
    ApiError,
    BadRequest,
    Conflict,
    InvalidField,
    InvalidSetting,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamTimeout,
    error_body,
)
from hotcold.wire.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    InferenceRequest,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
)
from hotcold.wire.sse import SSE_DONE, iter_sse_events, sse_event

__all__ = [
    "JSON_TYPE",
    "MSGPACK_TYPE",
    "SSE_DONE",
    "ApiError",
    "BadRequest",
    "ChatCompletionRequest",
    "CompletionRequest",
    "Conflict",
    "EmbeddingRequest",
    "InferenceRequest",
    "InvalidField",
    "InvalidSetting",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamTimeout",
    "decode_body",
    "encode_body",
    "error_body",
    "iter_sse_events",
    "parse_chat_request",
    "parse_completion_request",
    "parse_embedding_request",
    "sse_event",
    "wants_msgpack",
]
