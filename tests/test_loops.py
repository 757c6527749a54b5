"""hotcold.loops.RunningLoop: the running loop remembered, never a stale one."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from hotcold.loops import RunningLoop
from hotcold.serving import loop_factory


def test_outside_a_running_loop_it_raises_as_asyncio_does() -> None:
    with pytest.raises(RuntimeError):
        RunningLoop().get()


def test_it_is_the_running_loop_each_time_and_a_later_loop_replaces_a_stopped_one() -> None:
    remembered = RunningLoop()

    async def ask() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        return remembered.get(), asyncio.get_running_loop()

    for factory in (asyncio.new_event_loop, loop_factory() or asyncio.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            first, running = runner.run(ask())
            again, _ = runner.run(ask())
        assert first is running and again is running
    with pytest.raises(RuntimeError):  # every loop stopped: nothing is remembered as running
        remembered.get()


def test_another_thread_gets_its_own_loop() -> None:
    remembered = RunningLoop()
    seen: dict[str, bool] = {}
    main_loop_running = threading.Event()
    thread_done = threading.Event()

    def in_thread() -> None:
        main_loop_running.wait(10)

        async def ask() -> None:
            seen["thread"] = remembered.get() is asyncio.get_running_loop()

        asyncio.run(ask())
        thread_done.set()

    async def main() -> None:
        seen["main"] = remembered.get() is asyncio.get_running_loop()
        main_loop_running.set()
        await asyncio.to_thread(thread_done.wait, 10)
        seen["main again"] = remembered.get() is asyncio.get_running_loop()

    thread = threading.Thread(target=in_thread)
    thread.start()
    asyncio.run(main())
    thread.join(10)
    assert seen == {"main": True, "thread": True, "main again": True}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
# Python 3.12+ warns about forking with other threads alive (a thread an earlier test left).
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_forgets_its_parents_loop() -> None:
    remembered = RunningLoop()

    async def fork_while_running() -> int:
        remembered.get()
        child = os.fork()
        if child == 0:  # the parent's loop object is here and says it runs, yet never will
            os._exit(0 if remembered._memo is None else 1)
        _, status = await asyncio.to_thread(os.waitpid, child, 0)
        return os.waitstatus_to_exitcode(status)

    assert asyncio.run(fork_while_running()) == 0


def test_a_thread_switch_inside_the_lookup_never_hands_out_another_threads_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two threads, each running its loop, share one RunningLoop (as the deadline's is
    shared); the thread id is read with a forced switch to the other thread each time."""
    import hotcold.loops as loops

    real_get_ident = threading.get_ident

    def switching_get_ident() -> int:
        time.sleep(0)  # let the other thread run here
        return real_get_ident()

    monkeypatch.setattr(loops, "get_ident", switching_get_ident)
    remembered = RunningLoop()
    wrong: list[int] = []

    def run_one() -> None:
        async def ask() -> None:
            mine = asyncio.get_running_loop()
            for _ in range(2000):
                if remembered.get() is not mine:
                    wrong.append(1)

        asyncio.run(ask())

    threads = [threading.Thread(target=run_one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert wrong == []
