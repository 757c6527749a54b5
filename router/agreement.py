"""How far two answers to the same request agree: the edge model's (the candidate) and the
cloud model's (the reference). Pure; a scorer is any ``(candidate, reference) -> [0, 1]``.

Why these measures, for IoT traffic: answers are short (a status, a number, a yes/no, a
JSON object for a device to parse), so

- ``json``: when both answers parse as JSON (a fenced code block is unwrapped first), they
  agree exactly when the parsed values are equal: key order, spacing and number formatting
  do not matter, and a device reading the value sees no difference. Otherwise it falls back
  to ``exact``.
- ``f1`` (the default): 1 for an exact match after normalisation (case, punctuation, articles
  and whitespace, as SQuAD does), else the token-level F1 of the two bags of words: robust to
  small rewordings, strict about a different number or a missing word. It includes the JSON
  rule above, so structured answers are judged structurally.
- ``exact``: 1 or 0 after normalisation, for operators who accept no rewording at all.

Embedding or semantic similarity would need a model in the router (which never imports
torch) or a call per comparison; token F1 costs microseconds and has a known meaning.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable
from typing import Any

Scorer = Callable[[str, str], float]

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_MISSING = object()


def normalize(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _json_value(text: str) -> Any:
    fenced = _FENCE.match(text)
    candidate = (fenced.group(1) if fenced else text).strip()
    if not candidate or candidate[0] not in "{[":
        return _MISSING
    try:
        return json.loads(candidate)
    except ValueError:
        return _MISSING


def exact(candidate: str, reference: str) -> float:
    return 1.0 if normalize(candidate) == normalize(reference) else 0.0


def token_f1(candidate: str, reference: str) -> float:
    ours, theirs = normalize(candidate).split(), normalize(reference).split()
    if not ours or not theirs:
        return 1.0 if ours == theirs else 0.0
    common = sum((Counter(ours) & Counter(theirs)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(ours), common / len(theirs)
    return 2 * precision * recall / (precision + recall)


def _structured(candidate: str, reference: str, otherwise: Scorer) -> float:
    ours, theirs = _json_value(candidate), _json_value(reference)
    if ours is not _MISSING and theirs is not _MISSING:
        return 1.0 if ours == theirs else 0.0
    if (ours is _MISSING) != (theirs is _MISSING):
        return 0.0  # one is structured, the other is not: a device would notice
    return otherwise(candidate, reference)


def json_or_f1(candidate: str, reference: str) -> float:
    return _structured(candidate, reference, token_f1)


def json_or_exact(candidate: str, reference: str) -> float:
    return _structured(candidate, reference, exact)


SCORERS: dict[str, Scorer] = {"f1": json_or_f1, "json": json_or_exact, "exact": exact}


def answer_text(document: dict[str, Any]) -> str:
    """The text of an answer's first choice (chat or completion)."""
    choices = document.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""
