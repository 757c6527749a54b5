"""How much memory the model will take, checked before loading it.

Weights: linear layers at 4 bits (NF4) plus one fp32 absmax per 64-weight block (0.0625 B per
weight; double quantization brings that to about 0.127 bit); embeddings, the LM head and norms
stay in the compute dtype. KV cache: 2 (K and V) x layers x KV heads x head size x 2 bytes,
per token, for ``max_batch`` sequences of ``max_context`` tokens. A 20% margin covers
activations and allocator slack. A fit check that fails says what would fit instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BLOCK_SIZE = 64
ACTIVATION_MARGIN = 0.2


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    weights_bytes: int
    kv_bytes_per_token: int
    kv_bytes: int
    total_bytes: int

    def describe(self) -> str:
        mib = 1024 * 1024
        return (
            f"weights {self.weights_bytes / mib:.0f} MiB + KV cache {self.kv_bytes / mib:.0f}"
            f" MiB ({self.kv_bytes_per_token / 1024:.1f} KiB/token) + margin = "
            f"{self.total_bytes / mib:.0f} MiB"
        )


def estimate(
    config: Any,
    max_batch: int,
    max_context: int,
    *,
    quantized: bool = True,
    double_quant: bool = False,
    dtype_bytes: int = 2,
) -> MemoryEstimate:
    hidden = config.hidden_size
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    intermediate = config.intermediate_size
    vocab = config.vocab_size
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * intermediate
    linear_params = layers * (attention + mlp)
    if quantized:
        scale_bytes = (0.127 / 8) if double_quant else 4 / BLOCK_SIZE
        linear_bytes = int(linear_params * (0.5 + scale_bytes))
    else:
        linear_bytes = linear_params * dtype_bytes
    tied = getattr(config, "tie_word_embeddings", False)
    embedding_bytes = vocab * hidden * dtype_bytes * (1 if tied else 2)
    norm_bytes = (2 * layers + 1) * hidden * dtype_bytes
    weights = linear_bytes + embedding_bytes + norm_bytes
    kv_per_token = 2 * layers * kv_heads * head_dim * dtype_bytes
    kv = kv_per_token * max_batch * max_context
    total = int((weights + kv) * (1 + ACTIVATION_MARGIN))
    return MemoryEstimate(weights, kv_per_token, kv, total)


def free_bytes(device: str) -> int:
    """Memory free for the model on the device."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


class DoesNotFit(RuntimeError):
    pass


def check_fits(needed: MemoryEstimate, device: str, max_batch: int, max_context: int) -> None:
    available = free_bytes(device)
    if needed.total_bytes <= available:
        return
    spare = max(0, int(available / (1 + ACTIVATION_MARGIN)) - needed.weights_bytes)
    tokens = spare // max(1, needed.kv_bytes_per_token)
    raise DoesNotFit(
        f"the model does not fit on {device}: it needs {needed.describe()}, and "
        f"{available / 2**20:.0f} MiB are free. With this much memory about {tokens} tokens of "
        f"KV cache fit: lower --max-batch ({max_batch}) or --max-context ({max_context})."
    )
