"""Validation of OpenAI chat, text completion and embedding requests.

Strict about what it understands: a wrong type is an error (``"max_tokens": "10"`` is refused,
not coerced) and the answer names the field (400 ``invalid_request_error`` with ``param``, so
the SDKs raise ``BadRequestError``). Open about the rest: fields the router does not need to
understand (``tools``, ``response_format``, ``prompt_cache_key``, vLLM's ``guided_json`` or
``chat_template_kwargs``, whatever the next API release adds) are kept and forwarded verbatim,
since a gateway that refuses them breaks clients on every release; every such field is part
of the cache key (router/keys.py), so two requests that differ in one never share an answer.

Messages are lenient about extra keys (``tool_calls``, ``name``, ``refusal`` ...) for the same
reason. ``model`` may be left out when the router's catalog names a default model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hotcold.wire.errors import InvalidField

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256
MAX_MODEL_NAME = 256
MAX_CHOICES = 128  # OpenAI's bound on ``n``
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's bound on the inputs of one embeddings request
MAX_OUTPUT_TOKENS = 1 << 31  # a parse-time sanity bound; the gateway's own ceiling is lower


class _Strict(BaseModel):
    """Known fields are typed strictly; unknown ones are kept (``model_extra``) and forwarded."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow")


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatMessage(BaseModel):
    """One chat message. Extra keys are kept and forwarded."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _parts_have_types(
        cls, value: str | list[dict[str, Any]] | None
    ) -> str | list[dict[str, Any]] | None:
        if isinstance(value, list):
            for index, part in enumerate(value):
                if not isinstance(part.get("type"), str):
                    raise ValueError(f"content part {index} needs a string 'type'")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise ValueError(f"content part {index} of type 'text' needs a string 'text'")
        return value

    def text(self) -> str:
        """The message's text, with non-text parts reduced to a stable marker."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for part in self.content:
            if part["type"] == "text":
                pieces.append(part["text"])
            else:
                pieces.append(f"<{part['type']}>")
        return "\n".join(pieces)


class _Sampling(_Strict):
    """Fields shared by chat and text completions."""

    model: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL_NAME)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Common extensions of open-model servers (vLLM, TGI, llama.cpp).
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        for item in items:
            if not item or len(item) > MAX_STOP_LENGTH:
                raise ValueError(f"each stop sequence needs 1 to {MAX_STOP_LENGTH} characters")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def is_deterministic(self) -> bool:
        """Greedy decoding or a fixed seed: the same request gives the same answer."""
        return self.temperature == 0 or self.seed is not None

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def choices(self) -> int:
        return self.n or 1


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    modalities: list[str] | None = None

    def output_limit(self) -> int | None:
        """The output bound the client gets: the smaller of ``max_completion_tokens`` (the
        current API's name) and ``max_tokens`` (the older one) when both are given, since
        an upstream may honour either."""
        limits = [x for x in (self.max_completion_tokens, self.max_tokens) if x is not None]
        return min(limits) if limits else None

    def output_fields(self) -> dict[str, int]:
        """The output bounds the client sent, by field name."""
        fields = {
            "max_tokens": self.max_tokens,
            "max_completion_tokens": self.max_completion_tokens,
        }
        return {name: value for name, value in fields.items() if value is not None}


class CompletionRequest(_Sampling):
    # A single prompt; token-id prompts are accepted too (list of ints).
    prompt: str | list[str] | list[int]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=20)
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, value: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            if isinstance(value[0], str) and len(value) != 1:
                raise ValueError("only one prompt per request is supported (got a batch)")
        return value

    def output_limit(self) -> int | None:
        return self.max_tokens

    def output_fields(self) -> dict[str, int]:
        return {} if self.max_tokens is None else {"max_tokens": self.max_tokens}

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if isinstance(self.prompt[0], str):
            return str(self.prompt[0])
        return " ".join(str(token) for token in self.prompt)


class EmbeddingRequest(_Strict):
    """``POST /v1/embeddings``: deterministic by nature, so every answer is cacheable."""

    model: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL_NAME)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _bounded_input(
        cls, value: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(value, str):
            if not value:
                raise ValueError("input must not be an empty string")
            return value
        if not value:
            raise ValueError("input must not be an empty list")
        if len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
        for item in value:
            if isinstance(item, str | list) and not item:
                raise ValueError("an input must not be empty")
        return value

    @property
    def stream(self) -> bool:
        return False

    def is_deterministic(self) -> bool:
        return True

    def include_usage(self) -> bool:
        return False

    def output_limit(self) -> int | None:
        return None

    def output_fields(self) -> dict[str, int]:
        return {}

    def choices(self) -> int:
        return 1

    def prompt_text(self) -> str:
        if isinstance(self.input, str):
            return self.input
        return "\n".join(item if isinstance(item, str) else str(item) for item in self.input)


Kind = Literal["chat", "completion", "embeddings"]
PATHS: dict[str, str] = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embeddings": "/v1/embeddings",
}


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """A validated request together with the client's document, which is forwarded as is."""

    kind: Kind
    params: ChatCompletionRequest | CompletionRequest | EmbeddingRequest
    body: dict[str, Any]

    @property
    def path(self) -> str:
        return PATHS[self.kind]

    @property
    def stream(self) -> bool:
        return self.params.stream

    def prompt_text(self) -> str:
        if isinstance(self.params, ChatCompletionRequest):
            return "\n".join(message.text() for message in self.params.messages)
        return self.params.prompt_text()

    def upstream_body(self) -> dict[str, Any]:
        """The document to forward: the client's, with every output bound it gave
        (``max_tokens``, ``max_completion_tokens``) set to ``output_limit()``, so an upstream
        that honours either one stops where the client's smaller bound says. The client's
        document is left as it was."""
        fields = self.params.output_fields()
        if len(fields) < 2:
            return self.body
        return {**self.body, **dict.fromkeys(fields, self.params.output_limit())}


def _raise_invalid(exc: ValidationError) -> None:
    first = exc.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        raise InvalidField(
            f"Unrecognized request argument supplied: {location}",
            code="unknown_field",
            param=location,
        ) from None
    message = str(first["msg"]).removeprefix("Value error, ")
    others = exc.error_count() - 1
    suffix = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
    raise InvalidField(
        f"invalid value for '{location}': {message}{suffix}", param=location
    ) from None


def _parse(
    model: type[ChatCompletionRequest | CompletionRequest | EmbeddingRequest],
    kind: Kind,
    document: dict[str, Any],
) -> InferenceRequest:
    try:
        params = model.model_validate(document)
    except ValidationError as exc:
        _raise_invalid(exc)
        raise  # unreachable: _raise_invalid always raises
    return InferenceRequest(kind, params, document)


def parse_chat_request(document: dict[str, Any]) -> InferenceRequest:
    return _parse(ChatCompletionRequest, "chat", document)


def parse_completion_request(document: dict[str, Any]) -> InferenceRequest:
    return _parse(CompletionRequest, "completion", document)


def parse_embedding_request(document: dict[str, Any]) -> InferenceRequest:
    return _parse(EmbeddingRequest, "embeddings", document)
