"""Work an answer owes that no client waits for, done while the router waits anyway.

Counters, latency histograms, access lines and a cloud answer's time (the edge's latency
budget's reference; the edge's own evidence is recorded at once, in order with its resets)
change nothing a client gets. Done the moment an answer is out, they still sit on a
request's path: with one request at a time, whatever the router does between writing an
answer and reading the next request delays the next request (the client turns around
faster than this work takes). So answers from an upstream queue it here, and it runs at the
next moment the router would otherwise sit idle: right after the next request is written
to an upstream (its answer takes longer than this work), at the latest ``MAX_DELAY_S``
later (a timer), and before anything reads what it updates (the router's other routes,
/metrics among them, call :meth:`run`, so a scrape still counts every answer already sent).
Answers that wait for no upstream (cache hits, the router's own refusals) run it in the
loop's next turn, as before: no idle moment is coming for them.

Bounded: at most ``MAX_PENDING`` items wait; the one that would pass the bound runs them all
at once. Each item runs in the context it was queued in (its log lines keep its request id).
A failing item is logged and the rest still run.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from typing import Any

from hotcold.loops import RunningLoop

log = logging.getLogger("hotcold.bookkeeping")

MAX_PENDING = 256  # items waiting at most; the next one runs them all
MAX_DELAY_S = 0.01  # the longest an item waits when no upstream wait comes


class Bookkeeping:
    __slots__ = ("_loop", "_pending", "_soon", "_timer")

    def __init__(self) -> None:
        self._pending: list[tuple[contextvars.Context, Callable[..., Any], tuple[Any, ...]]] = []
        self._soon = False  # a run is scheduled for the loop's next turn
        self._timer: asyncio.TimerHandle | None = None
        self._loop = RunningLoop()  # asked on every answer (hotcold/loops.py)

    def __len__(self) -> int:
        return len(self._pending)

    def defer(self, work: Callable[..., Any], *args: Any) -> None:
        """Queue ``work(*args)`` for the next idle moment (at most ``MAX_DELAY_S`` away)."""
        pending = self._pending
        pending.append((contextvars.copy_context(), work, args))
        if len(pending) >= MAX_PENDING:
            self.run()
        elif self._timer is None:
            loop = self._loop.get()
            self._timer = loop.call_at(loop.time() + MAX_DELAY_S, self._on_timer)

    def run_soon(self) -> None:
        """An idle moment begins (a request was just sent upstream, or no upstream wait is
        coming): run what waits in the loop's next turn."""
        if self._pending and not self._soon:
            self._soon = True
            self._loop.get().call_soon(self.run)

    def run(self) -> None:
        """Run everything queued now (also before a read of what it updates, and at
        shutdown)."""
        self._soon = False
        pending, self._pending = self._pending, []
        for context, work, args in pending:
            try:
                context.run(work, *args)
            except Exception:  # one failing counter must not lose the others
                log.exception("bookkeeping failed: %r", work)

    def _on_timer(self) -> None:
        self._timer = None
        if self._pending:
            self.run()
