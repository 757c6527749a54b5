"""``hotcold bench path`` drives the real router through its front door and upstream client
with in-memory transports: it must keep answering (a set-up that broke would report the
cost of an error answer as the router's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_path_bench_measures_answered_requests_of_both_kinds() -> None:
    # Its own process: the bench swaps the upstream client's connect for an in-memory one.
    run = subprocess.run(
        [sys.executable, "-m", "bench.path", "--requests", "50", "--rounds", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {line.split("│")[1].strip(): line for line in run.stdout.splitlines() if "│" in line}
    assert {"forwarded", "cache hit"} <= rows.keys()


def test_a_router_that_does_not_answer_200_fails_the_bench() -> None:
    script = (
        "import sys, bench.path as p\n"
        'p.SAMPLED = p.SAMPLED.replace(b\'"model":"bench"\', b\'"model":7\')\n'  # a 400
        "sys.exit(p.main(['--requests', '5', '--rounds', '1']))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    assert "the router answered b'HTTP/1.1 400" in run.stderr
