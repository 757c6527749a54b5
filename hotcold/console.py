"""One place that makes the Rich console, wide enough for our tables when output is a file."""

from __future__ import annotations

import sys

from rich.console import Console

MIN_WIDTH = 150


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=MIN_WIDTH)
