"""An fp8 KV cache for continuous batching (``kv_cache: fp8``): keys and values stored in
float8 (e4m3), one byte per element instead of two (bf16), with a scale per row and KV head.

transformers' own quantized cache with the ``fp8`` backend (``Fp8QuantizedLayer``, no extra
package; ``quanto`` and ``hqq`` need packages not installed here) keeps one scale for the
whole tensor, frozen at the first update: rows that join a running batch later were never
seen by it. Here each row gets its scales from its own prefill (the absolute maximum per KV
head times ``HEADROOM``, so later tokens rarely clip; e4m3 is a float format, so the headroom
costs no relative precision until values fall under its normal range), and the scales travel
with the row when the engine merges, selects or trims the batch. Values beyond the range are
clamped, never turned into NaN.

Attention still runs in the compute dtype: each layer dequantizes its keys and values when it
is updated, so the extra memory is one layer's full-precision copy at a time.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)
HEADROOM = 4.0
KV_CACHE_KINDS = ("model", "fp8")  # "model": the compute dtype (bf16 by default)
_DynamicLayer: Any = DynamicLayer  # untyped upstream


class Fp8RowLayer(_DynamicLayer):  # type: ignore[misc]
    """One layer's KV in fp8 with ``[rows, heads, 1, 1]`` scales (``key_scale``,
    ``value_scale``); ``keys``/``values`` hold the fp8 data, so the engine's column
    operations (padding, trimming) apply to them unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.key_scale: torch.Tensor | None = None
        self.value_scale: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized or self.key_scale is None or self.value_scale is None:
            self.lazy_initialization(key_states, value_states)
            self.key_scale = _scale(key_states)
            self.value_scale = _scale(value_states)
            self.keys = _quantize(key_states, self.key_scale)
            self.values = _quantize(value_states, self.value_scale)
            return key_states, value_states
        assert self.keys is not None and self.values is not None
        self.keys = torch.cat([self.keys, _quantize(key_states, self.key_scale)], dim=-2)
        self.values = torch.cat([self.values, _quantize(value_states, self.value_scale)], dim=-2)
        return self.dequantized()

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.keys is not None and self.values is not None
        assert self.key_scale is not None and self.value_scale is not None
        keys = (self.keys.float() * self.key_scale).to(self.dtype)
        values = (self.values.float() * self.value_scale).to(self.dtype)
        return keys, values


def _scale(states: torch.Tensor) -> torch.Tensor:
    peak = states.detach().abs().amax(dim=(-2, -1), keepdim=True).float()
    return (peak * HEADROOM / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)


def _quantize(states: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (states.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """``columns`` zero columns before the sequence axis's first (fp8 padded as bytes)."""
    if columns == 0:
        return tensor
    if tensor.dtype == FP8:
        padded = torch.nn.functional.pad(tensor.view(torch.uint8), (0, 0, columns, 0))
        return padded.view(FP8)
    return torch.nn.functional.pad(tensor, (0, 0, columns, 0))


def cache_bytes(layers: list[Any]) -> int:
    """Bytes held by the cache's keys, values and scales."""
    total = 0
    for layer in layers:
        for name in ("keys", "values", "key_scale", "value_scale"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total
