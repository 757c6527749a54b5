"""The stub's settings, frozen once parsed."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORT = 9001


@dataclass(frozen=True, slots=True)
class StubConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # The model id the stub reports; it answers for any model name it is sent.
    model_name: str = "cloud-stub"
    ttft_ms: float = 50.0  # time to first token
    tpot_ms: float = 5.0  # time per output token after the first
    jitter: float = 0.0  # relative, uniform: 0.1 = ±10% on each delay
    max_concurrency: int = 32  # requests generating at once (the GPU batch)
    max_queue: int = 256  # requests waiting for a slot; past this: 503 + Retry-After
    error_rate: float = 0.0  # share of requests answered 500
    slow_rate: float = 0.0  # share of requests delayed by slow_ms more before the first token
    slow_ms: float = 2000.0
    drop_rate: float = 0.0  # share of requests whose connection is closed without an answer
    default_max_tokens: int = 64  # when the request sets none
    seed: int | None = None  # seed of the fault dice; None = random
    max_body_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("error_rate", "slow_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in ("ttft_ms", "tpot_ms", "slow_ms", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must not be negative, got {self.max_queue}")
