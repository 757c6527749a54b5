"""The node's runner, built for the configured batching strategy: ``continuous``
(iteration-level, :mod:`edge_node.continuous`, the default) or ``window`` (a time window per
batch, :mod:`edge_node.window`, kept for comparison in ``hotcold bench node``).

We measured transformers' own continuous batching manager on this model with 4-bit weights at
104 tok/s against 155 tok/s for one padded ``generate`` of 16 on CPU (../shared/RESEARCH.md);
it ignores ``stop`` and each ``generate_batch`` builds its own manager, so the node has its own
step loop (:mod:`edge_node.engine`).
"""

from __future__ import annotations

from edge_node.config import EdgeNodeConfig
from edge_node.continuous import ContinuousRunner
from edge_node.generation import (
    STRATEGIES,
    BatchingConfig,
    Generation,
    QueueFull,
    Runner,
    TextAssembler,
)
from edge_node.metrics import EdgeMetrics
from edge_node.model import LoadedModel
from edge_node.window import WindowRunner

__all__ = [
    "STRATEGIES",
    "BatchingConfig",
    "ContinuousRunner",
    "Generation",
    "QueueFull",
    "Runner",
    "TextAssembler",
    "WindowRunner",
    "make_runner",
]


def make_runner(config: EdgeNodeConfig, loaded: LoadedModel, metrics: EdgeMetrics) -> Runner:
    """The runner for a loaded model with the node's batching settings."""
    batching = BatchingConfig(
        config.max_batch,
        config.batch_window_ms,
        config.max_queue,
        config.batching,
        config.prefix_cache_tokens,
        config.prefix_min_tokens,
        config.kv_cache,
    )
    kind = ContinuousRunner if config.batching == "continuous" else WindowRunner
    return kind(loaded.model, loaded.tokenizer, loaded.device, batching, metrics)
