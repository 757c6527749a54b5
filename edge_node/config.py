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
    max_batch: int = 16
    batch_window_ms: float = 10.0
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
        for name in (
            "max_batch",
            "max_queue",
            "default_max_tokens",
            "max_tokens_limit",
            "max_context",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
