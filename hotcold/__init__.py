"""hotcold: an edge/cloud hot-cold request router for LLM inference.

This top-level package holds what the three services share without importing each other:
the OpenAI wire format (:mod:`hotcold.wire`), process helpers, and the ``hotcold`` console
script. The services themselves live in ``router``, ``edge_node`` and ``cloud_stub``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
