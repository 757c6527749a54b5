"""What to do with one request, as plain code: no HTTP, no I/O, no clock.

The dispatcher (router/dispatch.py) gathers the facts about a request (its classification,
what the client allows of the cache, what the cache holds, what the catalog and the edge node
allow) and asks :func:`cache_plan` and :func:`producer_plan` what to do; it then does it. So
every routing rule is here, in one place, and is tested exhaustively without a server
(tests/test_decision.py), while the HTTP reading and writing stay at the edge.

The rules:

- Only deterministic requests use the cache (temperature 0 or a seed); ``Cache-Control:
  no-store`` skips it, ``no-cache`` skips the lookup but stores the fresh answer.
- A cached answer is served (``X-Route: hot``, ``X-Cache: hit``), unless a streamed request
  finds an answer whose stream form would lose a field: then it is computed afresh.
- An identical miss already in flight is joined (single-flight) when the request may read
  and write the cache.
- A hot request goes to the edge node only when one is configured, the catalog lets the edge
  answer this model, the request asks for nothing the edge node cannot do, the edge has
  earned this key at its gray-release stage (router/gray_release.py), its predicted time is
  within the latency budget (router/latency_model.py), and it has room; if the edge then
  fails, the model's cloud pool answers (still hot).
- Everything else goes to the model's cloud pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

Route = Literal["hot", "cold"]
CacheLabel = Literal["hit", "miss", "bypass"]
Producer = Literal["edge", "cloud"]


# The facts are tuples: built for every request, a named tuple costs a third of a frozen
# dataclass (whose __init__ sets each field through object.__setattr__).
class CacheFacts(NamedTuple):
    deterministic: bool
    cache_control: str | None  # the request's Cache-Control header


@dataclass(frozen=True, slots=True)
class CachePlan:
    read: bool  # look the key up
    write: bool  # offer the answer to the cache
    coalesce: bool  # join an identical miss in flight

    @property
    def label(self) -> CacheLabel:
        """``X-Cache`` for an answer that was not a hit."""
        return "miss" if self.read else "bypass"

    def serves(self, cached_replayable: bool | None, stream: bool) -> bool:
        """Whether a cached (or coalesced) answer answers this request: ``None`` when the
        cache holds nothing; a stream needs an answer whose stream form loses nothing."""
        return cached_replayable is not None and (cached_replayable or not stream)


_NO_CACHE = CachePlan(read=False, write=False, coalesce=False)
_READ_WRITE = CachePlan(read=True, write=True, coalesce=True)
_WRITE_ONLY = CachePlan(read=False, write=True, coalesce=False)


def cache_plan(facts: CacheFacts) -> CachePlan:
    if not facts.deterministic:
        return _NO_CACHE
    if facts.cache_control is None:  # the common case: nothing to parse
        return _READ_WRITE
    directives = {part.strip().lower() for part in facts.cache_control.split(",")}
    if "no-store" in directives:
        return _NO_CACHE
    return _WRITE_ONLY if "no-cache" in directives else _READ_WRITE


class ProducerFacts(NamedTuple):
    route: Route
    edge_configured: bool
    edge_allowed: bool  # the catalog lets the edge node answer this model
    edge_can_answer: bool  # the request asks for nothing the edge node cannot honour
    edge_has_room: bool  # breaker closed and under its in-flight bound
    edge_earned: bool = True  # its gray-release stage gives this key to the edge
    edge_fast_enough: bool = True  # its predicted time is within the latency budget


@dataclass(frozen=True, slots=True)
class ProducerPlan:
    first: Producer
    fallback: Producer | None
    reason: str  # why not the edge, for a hot request (the edge-fallback metric's label)


_COLD = ProducerPlan("cloud", None, "cold")
_NO_EDGE = ProducerPlan("cloud", None, "no_edge")
_MODEL_NOT_FOR_EDGE = ProducerPlan("cloud", None, "model_not_for_edge")
_REQUEST_NOT_FOR_EDGE = ProducerPlan("cloud", None, "request_not_for_edge")
_EDGE_NOT_EARNED = ProducerPlan("cloud", None, "edge_not_earned")
_EDGE_TOO_SLOW = ProducerPlan("cloud", None, "edge_too_slow")
_EDGE_BUSY_OR_DOWN = ProducerPlan("cloud", None, "edge_busy_or_down")
_EDGE = ProducerPlan("edge", "cloud", "edge")


def producer_plan(facts: ProducerFacts) -> ProducerPlan:
    """Who answers first (the plans are immutable: one of each, shared)."""
    if facts.route == "cold":
        return _COLD
    if not facts.edge_configured:
        return _NO_EDGE
    if not facts.edge_allowed:
        return _MODEL_NOT_FOR_EDGE
    if not facts.edge_can_answer:
        return _REQUEST_NOT_FOR_EDGE
    if not facts.edge_earned:
        return _EDGE_NOT_EARNED
    if not facts.edge_fast_enough:
        return _EDGE_TOO_SLOW
    if not facts.edge_has_room:
        return _EDGE_BUSY_OR_DOWN
    return _EDGE
