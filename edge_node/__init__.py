"""The edge node: a causal LM in 4 bits (bitsandbytes NF4) on the local GPU, or the CPU,
served over the OpenAI-compatible API with dynamic batching. Imports torch; the router never
imports this package."""

__all__: list[str] = []
