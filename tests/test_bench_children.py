"""A benchmark's servers do not outlive it (hotcold/procs.py die_with_parent): a parent
killed with SIGKILL, which it cannot handle, still takes its child with it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from tests.support import wait_for

PARENT = """
import subprocess, sys, time
from hotcold.procs import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         preexec_fn=die_with_parent(), start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead: its parent is gone
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
async def test_a_child_stops_when_its_benchmark_is_killed() -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT, stdout=asyncio.subprocess.PIPE
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(await asyncio.wait_for(parent.stdout.readline(), 60))
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        await parent.wait()
        await wait_for(lambda: not alive(child), message="the child to stop with its parent")
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if child and alive(child):  # the test failed: do not leave it running
            os.kill(child, signal.SIGKILL)
