"""hotcold.deadline behaves as asyncio.timeout does (the cases asyncio's own tests check):
the block's time running out is a TimeoutError, anyone else's cancellation stays one, and a
block that ends in time leaves nothing behind. Nothing here waits for time to pass except
blocks that must run out (an event no one sets), each bounded by its own deadline."""

from __future__ import annotations

import asyncio

import pytest

from hotcold.deadline import deadline


async def test_a_block_that_ends_in_time_returns_and_leaves_no_cancellation() -> None:
    task = asyncio.current_task()
    assert task is not None
    with deadline(30) as limit:
        await asyncio.sleep(0)
    assert not limit.expired and task.cancelling() == 0
    await asyncio.sleep(0)  # no cancellation pending for the next await either


async def test_running_out_of_time_is_a_timeout_and_the_task_goes_on() -> None:
    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(TimeoutError), deadline(0.01) as limit:
        await asyncio.Event().wait()
    assert limit.expired and task.cancelling() == 0
    await asyncio.sleep(0)  # the task is not left cancelled


async def test_zero_or_less_cancels_at_the_first_wait() -> None:
    for delay in (0, -1):
        with pytest.raises(TimeoutError), deadline(delay):
            await asyncio.Event().wait()


async def test_someone_elses_cancellation_stays_a_cancellation() -> None:
    started = asyncio.Event()

    async def work() -> None:
        with deadline(30):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_an_outer_timeout_shorter_than_the_deadline_is_the_outer_ones() -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            with deadline(30) as inner:
                await asyncio.Event().wait()
    assert not inner.expired


async def test_an_exception_inside_passes_through_untouched() -> None:
    with pytest.raises(KeyError), deadline(30):
        raise KeyError("mine")


async def test_outside_a_task_it_says_so() -> None:
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[str] = loop.create_future()

    def callback() -> None:  # a plain loop callback: no task around it
        try:
            with deadline(1):
                pass
        except RuntimeError as exc:
            outcome.set_result(str(exc))
        else:
            outcome.set_result("no error")

    loop.call_soon(callback)
    assert "inside a task" in await outcome
