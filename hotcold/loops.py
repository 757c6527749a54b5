"""The running event loop, remembered between uses.

On CPython 3.11 every ``asyncio.get_running_loop()`` (and ``asyncio.current_task()``, which
calls it) makes a ``getpid`` system call: the interpreter checks that the loop was not
inherited through a fork. On the request path that was two system calls a forwarded request
(a deadline's start and an access line's flush check, counted with ``strace``); on a virtual
machine each costs more than the Python around it. Code that asks on every request keeps a
:class:`RunningLoop` and asks it instead.

A remembered loop is the answer while it still runs and the thread asking is the one that
remembered it: a thread runs one loop at a time, so a loop that runs and was found running
in this thread is this thread's running loop (unless that loop object stopped here and was
run again in another thread while this one runs a different loop: not done by anyone here).
A forked child forgets every remembered loop (its parent's loop never runs there), as the
interpreter's own check would have it.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from threading import get_ident


class RunningLoop:
    """``asyncio.get_running_loop()`` for one user, looked up again only when the loop it
    remembers stopped or another thread asks."""

    __slots__ = ("__weakref__", "_memo")

    def __init__(self) -> None:
        # (loop, thread id), read and written as one: two attributes written one after the
        # other could pair one thread's loop with another thread's id in between.
        self._memo: tuple[asyncio.AbstractEventLoop, int] | None = None
        _REMEMBERING.add(self)

    def get(self) -> asyncio.AbstractEventLoop:
        """The running loop of the calling thread; ``RuntimeError`` where none runs, as
        ``asyncio.get_running_loop()`` raises it."""
        memo = self._memo
        thread = get_ident()
        if memo is not None and memo[1] == thread and memo[0].is_running():
            return memo[0]
        loop = asyncio.get_running_loop()
        self._memo = (loop, thread)
        return loop

    def forget(self) -> None:
        self._memo = None


_REMEMBERING: weakref.WeakSet[RunningLoop] = weakref.WeakSet()


def _forget_all() -> None:
    for remembering in list(_REMEMBERING):
        remembering.forget()


if hasattr(os, "register_at_fork"):  # absent on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_all)
