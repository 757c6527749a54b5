"""A deterministic answer for a request: the same request always gets the same text.

The text is drawn from a fixed vocabulary with the request's digest as the seed, so two
different requests get visibly different answers and a test can recognise which upstream
request produced a body. One word is one token.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import orjson

_VOCABULARY = [
    "edge",
    "cloud",
    "sensor",
    "signal",
    "cache",
    "model",
    "token",
    "latency",
    "packet",
    "gateway",
    "device",
    "reading",
    "window",
    "stream",
    "metric",
    "value",
    "alert",
    "status",
    "battery",
    "voltage",
    "humidity",
    "pressure",
    "motion",
    "camera",
    "frame",
    "route",
    "policy",
    "fleet",
    "node",
    "answer",
    "request",
    "result",
    "stable",
    "normal",
    "high",
    "low",
    "rising",
    "falling",
    "steady",
    "within",
    "range",
    "check",
    "again",
    "soon",
    "now",
    "the",
    "a",
    "is",
    "and",
    "of",
    "to",
    "in",
]
MIN_NATURAL_TOKENS = 8
NATURAL_SPREAD = 40


@dataclass(frozen=True, slots=True)
class Answer:
    tokens: list[str]
    finish_reason: str  # "stop" or "length"
    digest: str

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def request_digest(payload: object) -> str:
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def make_answer(payload: object, max_tokens: int) -> Answer:
    """The answer to a request: its natural length, cut at ``max_tokens``."""
    digest = request_digest(payload)
    rng = random.Random(int(digest[:16], 16))
    natural = MIN_NATURAL_TOKENS + rng.randrange(NATURAL_SPREAD)
    count = min(natural, max_tokens)
    words = [f"[{digest[:8]}]"] + [rng.choice(_VOCABULARY) for _ in range(count - 1)]
    tokens = [word + " " for word in words[:-1]] + [words[-1] + "."] if words else []
    return Answer(tokens[:count], "length" if count < natural else "stop", digest)


def count_prompt_tokens(text: str) -> int:
    """A tokenizer-free estimate: about four characters a token, as for English BPE."""
    return max(1, (len(text) + 3) // 4)


def hashed_vector(text: str, size: int) -> list[float]:
    """A deterministic unit vector for a text (the stub's stand-in for an embedding)."""
    rng = random.Random(int(request_digest(text)[:16], 16))
    values = [rng.gauss(0.0, 1.0) for _ in range(size)]
    norm = sum(value * value for value in values) ** 0.5 or 1.0
    return [round(value / norm, 6) for value in values]
