"""Log lines batched into one write (hotcold/logs.py BatchedStreamHandler): nothing lost,
order kept, warnings and lines from outside an event loop written at once."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

from hotcold.logs import BatchedStreamHandler
from tests.support import wait_for


class CountingStream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)


def logger_to(stream: CountingStream) -> tuple[logging.Logger, BatchedStreamHandler]:
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test.batched.{id(stream)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger, handler


async def test_lines_on_a_loop_go_out_together_in_order() -> None:
    stream = CountingStream()
    logger, _ = logger_to(stream)
    for index in range(100):
        logger.info("line %d", index)
    assert stream.writes == 0, "INFO lines on a running loop wait for the batch"
    expected = "".join(f"INFO line {index}\n" for index in range(100)).encode()
    await wait_for(lambda: stream.getvalue() == expected, message="the batch to be written")
    assert stream.writes == 1


async def test_a_warning_writes_everything_pending_at_once() -> None:
    stream = CountingStream()
    logger, _ = logger_to(stream)
    logger.info("before")
    logger.warning("trouble")
    assert stream.getvalue() == b"INFO before\nWARNING trouble\n"


def test_lines_without_a_loop_and_from_threads_are_written_at_once() -> None:
    stream = CountingStream()
    logger, handler = logger_to(stream)
    logger.info("no loop here")
    assert stream.getvalue() == b"INFO no loop here\n"
    thread = threading.Thread(target=logger.info, args=("from a thread",))
    thread.start()
    thread.join()
    assert stream.getvalue().endswith(b"INFO from a thread\n")
    handler.flush()
    assert stream.writes == 2


async def test_pending_lines_are_bounded() -> None:
    stream = CountingStream()
    logger, _ = logger_to(stream)
    line = "x" * 1000
    for _ in range(200):
        logger.info(line)
    assert stream.writes >= 2, "a full buffer is written without waiting for the timer"
    assert len(stream.getvalue()) >= BatchedStreamHandler.MAX_PENDING_BYTES


def test_a_loop_that_ends_with_a_flush_due_holds_no_later_line() -> None:
    """A review found the handler waiting forever for a flush scheduled on a loop that had
    stopped: every later INFO line was held until 64 KiB piled up or the process exited."""
    stream = CountingStream()
    logger, _ = logger_to(stream)

    async def log_and_leave() -> None:
        logger.info("on the first loop")

    asyncio.run(log_and_leave())  # ends before its flush is due
    logger.info("no loop now")  # written at once, with the one left behind
    assert stream.getvalue() == b"INFO on the first loop\nINFO no loop now\n"

    async def second_loop() -> None:
        logger.info("on a second loop")
        await wait_for(
            lambda: stream.getvalue().endswith(b"INFO on a second loop\n"),
            message="the second loop's flush",
        )

    asyncio.run(second_loop())
