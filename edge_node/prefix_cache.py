"""The KV cache of prompt prefixes that many requests share (a device's system prompt and
instructions), computed once and reused by later prompts that start with the same tokens.

Keys and values of a causal model at position ``i`` depend only on tokens ``0..i``, so the KV
of any prefix of a stored prompt is the first columns of that prompt's KV: a prompt matches an
entry by its longest common prefix, not by an exact key. The rule for what is kept:

* a prompt that matches nothing (or less than ``min_tokens``) is stored whole, as a candidate;
* a prompt that shares ``c`` tokens with a longer entry proves those ``c`` tokens are shared:
  the slice of ``c`` tokens is stored as its own entry, and later prompts match it in full.

Bounded memory: at most ``max_tokens`` tokens over all entries (each token is
``kv_bytes_per_token`` bytes: 2 x layers x KV heads x head size x dtype size); the least
recently used entries are evicted first. ``max_tokens = 0`` turns reuse off.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

# One (keys, values) pair per layer, each [1, kv_heads, tokens, head_dim], positions 0..tokens-1.
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """``tokens`` leading tokens of a prompt whose KV is ``kv`` (already sliced to them)."""

    tokens: int
    kv: LayerKV


def common_prefix(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    def __init__(self, max_tokens: int, min_tokens: int = 16) -> None:
        self.max_tokens = max_tokens
        self.min_tokens = max(1, min_tokens)
        self._entries: OrderedDict[tuple[int, ...], LayerKV] = OrderedDict()
        self.tokens = 0  # tokens held over all entries

    @property
    def enabled(self) -> bool:
        return self.max_tokens > 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt: list[int]) -> PrefixHit | None:
        """The longest reusable prefix of ``prompt``, leaving at least its last token to
        compute (the next token's logits come from it)."""
        if not self.enabled or len(prompt) <= self.min_tokens:
            return None
        best_key: tuple[int, ...] | None = None
        best = 0
        for key in self._entries:
            shared = min(common_prefix(key, prompt), len(prompt) - 1)
            if shared > best or (shared == best and best_key is not None and len(key) == shared):
                best_key, best = key, shared
        if best_key is None or best < self.min_tokens:
            return None
        self._entries.move_to_end(best_key)
        kv = self._entries[best_key]
        if best < len(best_key):
            kv = [(k[:, :, :best], v[:, :, :best]) for k, v in kv]
            self._insert(best_key[:best], kv)  # proven shared by two prompts
        return PrefixHit(best, kv)

    def offer(self, prompt: list[int], kv: LayerKV) -> None:
        """A prompt computed without a hit: kept as a candidate (its KV, contiguous, from
        position 0)."""
        if not self.enabled or len(prompt) < self.min_tokens or len(prompt) > self.max_tokens:
            return
        key = tuple(prompt)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._insert(key, kv)

    def _insert(self, key: tuple[int, ...], kv: LayerKV) -> None:
        if key in self._entries or len(key) > self.max_tokens:
            return
        # Own copies: a slice would keep the whole batch's tensor alive.
        self._entries[key] = [(k.clone(), v.clone()) for k, v in kv]
        self.tokens += len(key)
        while self.tokens > self.max_tokens:
            evicted, _ = self._entries.popitem(last=False)
            self.tokens -= len(evicted)
