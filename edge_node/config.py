"""The edge node's settings, frozen once parsed (see configs/edge_node.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORT = 8081


@dataclass(frozen=True, slots=True)
class EdgeNodeConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    model: str = "default"  # "default" (SmolLM2-135M-Instruct) or a local model folder
    device: str = "auto"  # auto | cuda | cpu
    quantize: bool = True  # NF4 via bitsandbytes; false loads in compute_dtype
    compute_dtype: str = "bfloat16"
    double_quant: bool = False
    prequantize: bool = True  # NF4: save the 4-bit weights once, load them on later starts
    max_batch: int = 16
    batching: str = "continuous"  # continuous | window
    batch_window_ms: float = 10.0  # window batching only
    prefix_cache_tokens: int = 2048  # KV of shared prompt prefixes kept, in tokens; 0 = off
    prefix_min_tokens: int = 16  # shortest prefix worth reusing
    kv_cache: str = "model"  # model (the compute dtype) | fp8 (edge_node/kv_fp8.py)
    max_queue: int = 256
    default_max_tokens: int = 128
    max_tokens_limit: int = 1024
    max_context: int = 2048
    max_body_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, got {self.device!r}")
        if self.compute_dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(
                f"compute_dtype must be bfloat16, float16 or float32, got {self.compute_dtype!r}"
            )
        if self.batching not in ("continuous", "window"):
            raise ValueError(f"batching must be continuous or window, got {self.batching!r}")
        if self.kv_cache not in ("model", "fp8"):
            raise ValueError(f"kv_cache must be model or fp8, got {self.kv_cache!r}")
        if self.prefix_cache_tokens < 0:
            raise ValueError(
                f"prefix_cache_tokens must be 0 or more, got {self.prefix_cache_tokens}"
            )
        for name in (
            "max_batch",
            "max_queue",
            "default_max_tokens",
            "max_tokens_limit",
            "max_context",
            "prefix_min_tokens",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
