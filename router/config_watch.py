"""Reload the config file when it changes on disk (SIGHUP does the same on demand).

Polls the file's modification time and size: no dependency, works on every filesystem
(inotify misses edits made through bind mounts and some editors' rename-into-place).
"""

from __future__ import annotations

import asyncio
import os

from router.policy_manager import PolicyManager


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


async def watch_config(path: str, period_s: float, manager: PolicyManager) -> None:
    seen = _stamp(path)
    while True:
        await asyncio.sleep(period_s)
        current = _stamp(path)
        if current is not None and current != seen:
            seen = current
            manager.reload_file()
