"""The running event loop, remembered between uses.

On CPython 3.11 every ``asyncio.get_running_loop()`` (and ``asyncio.current_task()``, which
calls it) makes a ``getpid`` system call: the interpreter checks that the loop was not
inherited through a fork. On the request path that was two system calls a forwarded request
(a deadline's start and an access line's flush check, counted with ``strace``); on a virtual
machine each costs more than the Python around it. Code that asks on every request keeps a
:class:`RunningLoop` and asks it instead.

A remembered loop is the answer while it still runs and the thread asking is the one that
remembered it: a thread runs one loop at a time, so a loop that runs and was found running
in this thread is this thread's running loop. A forked child forgets every remembered loop
(its parent's loop never runs there), as the interpreter's own check would have it.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from threading import get_ident


class RunningLoop:
    """``asyncio.get_running_loop()`` for one user, looked up again only when the loop it
    remembers stopped or another thread asks."""

    __slots__ = ("__weakref__", "_loop", "_thread")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        _REMEMBERING.add(self)

    def get(self) -> asyncio.AbstractEventLoop:
        """The running loop of the calling thread; ``RuntimeError`` where none runs, as
        ``asyncio.get_running_loop()`` raises it."""
        loop = self._loop
        if loop is not None and self._thread == get_ident() and loop.is_running():
            return loop
        loop = self._loop = asyncio.get_running_loop()
        self._thread = get_ident()
        return loop

    def forget(self) -> None:
        self._loop = None


_REMEMBERING: weakref.WeakSet[RunningLoop] = weakref.WeakSet()


def _forget_all() -> None:
    for remembering in list(_REMEMBERING):
        remembering.forget()


if hasattr(os, "register_at_fork"):  # absent on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_all)
