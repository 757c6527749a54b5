"""``hotcold bench proxy``: what the router costs on the request path, against its peers in
the same run.

One instant upstream (``bench.bare_upstream``: a bare aiohttp handler answering a fixed chat
completion) sits behind every proxy. Load comes from ``wrk`` (Debian's, C, one thread), so the
load generator is not the bottleneck. Targets, each measured at concurrency 1 and 16 with
keep-alive connections:

- direct to the upstream: the least latency there is, and, as the same kind of handler, the
  floor for a cache hit;
- a bare aiohttp proxy (``bench.bare_proxy``): forwarding with aiohttp's server and client
  and nothing else (the router keeps aiohttp's server; it forwards with its own client);
- hotcold forwarding a sampled request (temperature 0.7: never cached, always forwarded),
  with its default configuration (INFO logging and the access log on, to a file);
- hotcold answering from its cache (temperature 0: the same request, a hit after the first);
- the same two with the inference routes on aiohttp's server (``server.front_door: false``):
  what the front door (hotcold/front.py) saves, side by side;
- hotcold with ``server.workers`` 2 (several processes on one listening socket), both paths;
- vLLM's router ``vllm-router`` (Rust) and the LiteLLM proxy (one worker), when installed:
  ``--install-peers`` puts each in its own virtual environment under ``.cache/peers``; a peer
  that is not there is skipped with a note.

Rounds (``--rounds``) interleave the targets so a busy neighbour on the machine hits all of
them alike; each figure is the median over rounds. Results are ratios against the peers.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hotcold.console import make_console
from hotcold.procs import die_with_parent
from hotcold.serving import event_loop_name, free_port

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / ".cache" / "peers"
LOGS = ROOT / "bench-results" / "logs"
LEVELS = (1, 16)
VLLM_ROUTER = "vllm-router==0.1.17"
LITELLM = "litellm[proxy]"
SAMPLED = (
    b'{"model":"bench","messages":[{"role":"user","content":"say something"}],'
    b'"max_tokens":16,"temperature":0.7}'
)
DETERMINISTIC = (
    b'{"model":"bench","messages":[{"role":"user","content":"say something"}],'
    b'"max_tokens":16,"temperature":0}'
)
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BENCH_BODY"), "rb"):read()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Cell:
    """One target at one concurrency, over the rounds."""

    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # the server's CPU per request
    errors: int = 0

    def add(self, result: dict[str, int], cpu_s: float) -> None:
        self.cpu_us.append(cpu_s / max(1, result["requests"]) * 1e6)
        self.rps.append(result["requests"] / (result["duration_us"] / 1e6))
        self.p50_ms.append(result["p50_us"] / 1000)
        self.p99_ms.append(result["p99_us"] / 1000)
        self.errors += result["errors"] + result["non2xx"]

    def median(self, name: str) -> float:
        values: list[float] = getattr(self, name)
        return statistics.median(values) if values else float("nan")


@dataclass
class Target:
    name: str
    url: str  # the full completion URL
    body: bytes
    headers: tuple[str, ...] = ()  # wrk -H values
    pid: int | None = None  # the server whose CPU (with its children's) a request costs
    cells: dict[int, Cell] = field(default_factory=dict)


class Process:
    """A server as a child process, ready when a GET on its health URL answers 200."""

    def __init__(self, name: str, argv: Sequence[str], health: str, env: dict[str, str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOGS / f"proxy-{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopping it stops its workers too
            preexec_fn=die_with_parent(),  # and it stops if this benchmark is killed
        )
        self._health = health

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(self._health, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants so far (Linux /proc): the
    measure of a request's cost that a busy machine distorts least (it stretches wall time,
    not the work done)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total, frontier = 0.0, [pid]
    while frontier:
        current = frontier.pop()
        total += times.get(current, 0.0)
        frontier.extend(child for child, parent in parents.items() if parent == current)
    return total


def peer_tool(venv: str, name: str) -> str | None:
    """A peer's executable: its own venv under .cache/peers first, then this environment."""
    own = PEERS / venv / "bin" / name
    if own.exists():
        return str(own)
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def install_peers(console: Console) -> None:
    """Each peer in its own virtual environment under .cache/peers (git ignores .cache)."""
    for venv, package in (("vllm-router", VLLM_ROUTER), ("litellm", LITELLM)):
        target = PEERS / venv
        if not (target / "bin" / "python").exists():
            console.print(f"creating {target}")
            subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        console.print(  # no markup: "[proxy]" is part of the name
            f"installing {package} into {target} (a few minutes for LiteLLM)", markup=False
        )
        subprocess.run([str(target / "bin" / "pip"), "install", "--quiet", package], check=True)


def wrk(target: Target, body_path: Path, connections: int, duration_s: float) -> dict[str, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT)
    try:
        run = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(duration_s))}s",  # wrk takes whole seconds
                "--timeout",
                "10s",
                "-s",
                script.name,
                *(f"-H{header}" for header in target.headers),
                target.url,
            ],
            env={**os.environ, "BENCH_BODY": str(body_path)},
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(script.name)
    line = [raw for raw in run.stdout.splitlines() if raw.startswith("{")][-1]
    result: dict[str, int] = json.loads(line)
    return result


def _python(module: str, *args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", module, *args]


def start_servers(
    console: Console, workers: int, processes: list[Process], python: str
) -> tuple[list[Target], list[str]]:
    """The upstream, hotcold (one and ``workers`` processes) and the installed peers, each
    added to ``processes`` as it starts (the caller stops them, also when one fails)."""
    notes: list[str] = []
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    processes.append(
        Process(
            "upstream",
            _python("bench.bare_upstream", "--port", str(up_port)),
            upstream + "/health",
            {},
        )
    )
    processes[-1].wait_ready(30)
    targets = [
        Target(
            "direct to the upstream",
            upstream + "/v1/chat/completions",
            SAMPLED,
            pid=processes[-1].proc.pid,
        )
    ]

    def hotcold(name: str, *extra: str, env: dict[str, str] | None = None) -> tuple[str, int]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = _python(
            "router", "--port", str(port), "--cloud-endpoint", upstream, *extra, python=python
        )
        processes.append(Process(name, argv, url + "/healthz", env or {}))
        processes[-1].wait_ready(60)
        return url + "/v1/chat/completions", processes[-1].proc.pid

    port = free_port()
    argv = _python("bench.bare_proxy", "--port", str(port), "--upstream", upstream, python=python)
    processes.append(Process("bare-proxy", argv, f"http://127.0.0.1:{port}/health", {}))
    processes[-1].wait_ready(30)
    targets.append(
        Target(
            "bare aiohttp proxy",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            SAMPLED,
            pid=processes[-1].proc.pid,
        )
    )
    one, pid = hotcold("hotcold")
    targets.append(Target("hotcold, forwarded", one, SAMPLED, pid=pid))
    targets.append(Target("hotcold, cache hit", one, DETERMINISTIC, pid=pid))
    # The same router with its inference routes on aiohttp's server: what the front door saves.
    aio, pid = hotcold("hotcold-aiohttp", env={"HOTCOLD_FRONT_DOOR": "false"})
    targets.append(Target("hotcold on aiohttp's server, forwarded", aio, SAMPLED, pid=pid))
    targets.append(Target("hotcold on aiohttp's server, cache hit", aio, DETERMINISTIC, pid=pid))
    if workers > 1:
        many, pid = hotcold(f"hotcold-{workers}w", "--workers", str(workers))
        name = f"hotcold {workers} workers"
        targets.append(Target(f"{name}, forwarded", many, SAMPLED, pid=pid))
        targets.append(Target(f"{name}, cache hit", many, DETERMINISTIC, pid=pid))
    tool = peer_tool("vllm-router", "vllm-router")
    if tool is None:
        notes.append("vllm-router not installed: skipped (hotcold bench proxy --install-peers)")
    else:
        port = free_port()
        argv = [
            tool,
            *("--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin"),
            *("--worker-urls", upstream, "--log-level", "warning"),
            *("--prometheus-port", str(free_port()), "--prometheus-host", "127.0.0.1"),
        ]
        url = f"http://127.0.0.1:{port}"
        processes.append(Process("vllm-router", argv, url + "/health", {}))
        processes[-1].wait_ready(60)
        pid = processes[-1].proc.pid
        targets.append(
            Target("vllm-router 0.1.17 (Rust)", url + "/v1/chat/completions", SAMPLED, pid=pid)
        )
    tool = peer_tool("litellm", "litellm")
    if tool is None:
        notes.append("LiteLLM proxy not installed: skipped (hotcold bench proxy --install-peers)")
    else:
        port = free_port()
        config = LOGS / "proxy-litellm.yaml"
        config.write_text(
            "model_list:\n  - model_name: bench\n    litellm_params:\n"
            f"      model: openai/bench\n      api_base: {upstream}/v1\n      api_key: none\n"
        )
        argv = [tool, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--num_workers", "1"]
        key = "sk-" + secrets.token_hex(16)  # it refuses to start without a master key
        env = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MASTER_KEY": key,
        }
        url = f"http://127.0.0.1:{port}"
        processes.append(Process("litellm", argv, url + "/health/liveliness", env))
        processes[-1].wait_ready(180)
        version = _version(PEERS / "litellm" / "bin" / "python", "litellm")
        name = f"LiteLLM proxy {version}, 1 worker"
        auth = (f"Authorization: Bearer {key}",)
        pid = processes[-1].proc.pid
        targets.append(Target(name, url + "/v1/chat/completions", SAMPLED, auth, pid=pid))
    console.print(f"servers up: {', '.join(p.name for p in processes)}")
    return targets, notes


def _version_of(python: str) -> str:
    run = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
    )
    return run.stdout.strip() or "?"


def _version(python: Path, package: str) -> str:
    if not python.exists():
        return "?"
    run = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version('{package}'))"],
        capture_output=True,
        text=True,
    )
    return run.stdout.strip() or "?"


def measure(
    console: Console, targets: list[Target], rounds: int, duration_s: float, warmup_s: float
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        bodies: dict[bytes, Path] = {}
        for index, body in enumerate({t.body for t in targets}):
            bodies[body] = Path(scratch) / f"body-{index}.json"
            bodies[body].write_bytes(body)
        for target in targets:  # connection pools, caches, first-call costs
            wrk(target, bodies[target.body], 16, warmup_s)
        for round_ in range(1, rounds + 1):
            for target in targets:
                for level in LEVELS:
                    assert target.pid is not None
                    cpu_before = tree_cpu_seconds(target.pid)
                    result = wrk(target, bodies[target.body], level, duration_s)
                    cpu_s = tree_cpu_seconds(target.pid) - cpu_before
                    target.cells.setdefault(level, Cell()).add(result, cpu_s)
                    console.print(
                        f"round {round_}/{rounds}  {target.name:<34} c={level:<3}"
                        f" {result['requests'] / (result['duration_us'] / 1e6):9,.0f} req/s"
                        f"  p50 {result['p50_us'] / 1000:6.2f} ms"
                        f"  p99 {result['p99_us'] / 1000:6.2f} ms"
                        f"  CPU/req {cpu_s / max(1, result['requests']) * 1e6:5.0f} us",
                        highlight=False,
                    )


def _find(targets: list[Target], prefix: str) -> Target | None:
    return next((t for t in targets if t.name.startswith(prefix)), None)


def ratios(targets: list[Target]) -> list[tuple[str, str, float | None, str]]:
    """(what, figure, value, acceptance) for the issue's acceptance points."""
    direct = _find(targets, "direct")
    forwarded = _find(targets, "hotcold, forwarded")
    hit = _find(targets, "hotcold, cache hit")
    vllm = _find(targets, "vllm-router")
    litellm = _find(targets, "LiteLLM")
    rows: list[tuple[str, str, float | None, str]] = []
    assert direct is not None and forwarded is not None and hit is not None

    def ratio(a: Target, b: Target | None, level: int, name: str) -> float | None:
        if b is None:
            return None
        return a.cells[level].median(name) / b.cells[level].median(name)

    rows.append(
        ("forwarding req/s @16 vs vllm-router", "x", ratio(forwarded, vllm, 16, "rps"), ">= 0.6")
    )
    ours_added = forwarded.cells[1].median("p50_ms") - direct.cells[1].median("p50_ms")
    rows.append(("added p50 @1 over direct", "ms", ours_added, "<= 0.3"))
    rows.append(
        ("forwarding p99 @16 vs vllm-router", "x", ratio(forwarded, vllm, 16, "p99_ms"), "<= 2")
    )
    rows.append(
        ("cache-hit req/s @16 vs bare aiohttp", "x", ratio(hit, direct, 16, "rps"), ">= 0.5")
    )
    rows.append(
        ("forwarding req/s @16 vs LiteLLM", "x", ratio(forwarded, litellm, 16, "rps"), ">= 20")
    )
    rows.append(
        (
            "forwarding CPU/req @16 vs vllm-router",
            "x",
            ratio(forwarded, vllm, 16, "cpu_us"),
            "",
        )
    )
    rows.append(
        ("cache-hit CPU/req @16 vs bare aiohttp", "x", ratio(hit, direct, 16, "cpu_us"), "")
    )
    floor = _find(targets, "bare aiohttp proxy")
    rows.append(
        ("forwarding req/s @16 vs bare aiohttp proxy", "x", ratio(forwarded, floor, 16, "rps"), "")
    )
    if floor is not None:
        added = floor.cells[1].median("p50_ms") - direct.cells[1].median("p50_ms")
        rows.append(("bare aiohttp proxy: added p50 @1 over direct", "ms", added, ""))
    if vllm is not None:
        added = vllm.cells[1].median("p50_ms") - direct.cells[1].median("p50_ms")
        rows.append(("vllm-router: added p50 @1 over direct", "ms", added, ""))
        # The added p50 in milliseconds moves with the machine's speed from run to run;
        # against the Rust router's, measured minutes apart in the same run, it moves less.
        rows.append(
            (
                "added p50 @1 vs vllm-router's",
                "x",
                ours_added / added if added > 0 else None,
                "",
            )
        )
    for path, name, ours in (
        ("forwarding", "forwarded", forwarded),
        ("cache-hit", "cache hit", hit),
    ):
        theirs = _find(targets, f"hotcold on aiohttp's server, {name}")
        if theirs is not None:
            what = f"front door vs aiohttp's server, {path} CPU/req @16"
            rows.append((what, "x", ratio(ours, theirs, 16, "cpu_us"), ""))
    many = _find(targets, "hotcold 2 workers, forwarded")
    if many is not None:
        rows.append(
            ("2 workers vs 1, forwarding req/s @16", "x", ratio(many, forwarded, 16, "rps"), "")
        )
        hits = _find(targets, "hotcold 2 workers, cache hit")
        assert hits is not None
        rows.append(("2 workers vs 1, cache-hit req/s @16", "x", ratio(hits, hit, 16, "rps"), ""))
    return rows


def show(console: Console, targets: list[Target], rounds: int) -> None:
    table = Table(title=f"request path, median of {rounds} round(s), same run")
    columns = ("target", "req/s @16", "p50 @16", "p99 @16", "p50 @1", "p99 @1", "CPU/req @16")
    for name in (*columns, "errors"):
        table.add_column(name, justify="left" if name == "target" else "right")
    for target in targets:
        c16, c1 = target.cells[16], target.cells[1]
        table.add_row(
            target.name,
            f"{c16.median('rps'):,.0f}",
            f"{c16.median('p50_ms'):.2f} ms",
            f"{c16.median('p99_ms'):.2f} ms",
            f"{c1.median('p50_ms'):.2f} ms",
            f"{c1.median('p99_ms'):.2f} ms",
            f"{c16.median('cpu_us'):.0f} us",
            str(c16.errors + c1.errors),
        )
    console.print(table)
    checks = Table(title="acceptance ratios")
    for name in ("what", "value", "wanted"):
        checks.add_column(name, justify="left" if name == "what" else "right")
    for what, unit, value, wanted in ratios(targets):
        shown = "peer not run" if value is None else f"{value:.2f} {unit}"
        checks.add_row(what, shown, wanted)
    console.print(checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hotcold bench proxy",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument(
        "--workers", type=int, default=2, help="also run hotcold with this many worker processes"
    )
    parser.add_argument(
        "--install-peers",
        action="store_true",
        help="install vllm-router and the LiteLLM proxy into .cache/peers first",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter of hotcold and the bare proxy (a venv with hotcold installed), to"
        " compare Python versions",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/proxy.json"))
    args = parser.parse_args(argv)
    console = make_console()
    if shutil.which("wrk") is None:
        console.print("[red]wrk is not installed (apt-get install wrk)[/red]")
        return 2
    if args.install_peers:
        install_peers(console)
    load_before = os.getloadavg()
    processes: list[Process] = []
    try:
        targets, notes = start_servers(console, args.workers, processes, args.python)
        measure(console, targets, args.rounds, args.duration, args.warmup)
    finally:
        for process in reversed(processes):
            process.stop()
    load_after = os.getloadavg()
    show(console, targets, args.rounds)
    for note in notes:
        console.print(f"[yellow]{note}[/yellow]")
    console.print(
        f"event loop: {event_loop_name()}; hotcold's Python: {_version_of(args.python)};"
        " load generator: wrk, 1 thread, keep-alive;"
        f" {os.cpu_count()} CPUs; load average before {load_before[0]:.2f},"
        f" after {load_after[0]:.2f}",
        highlight=False,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                "event_loop": event_loop_name(),
                "python": _version_of(args.python),
                "cpus": os.cpu_count(),
                "load_before": load_before[0],
                "load_after": load_after[0],
                "rounds": args.rounds,
                "duration_s": args.duration,
                "targets": {
                    t.name: {
                        str(level): {
                            "rps": cell.median("rps"),
                            "p50_ms": cell.median("p50_ms"),
                            "p99_ms": cell.median("p99_ms"),
                            "cpu_us_per_request": cell.median("cpu_us"),
                            "errors": cell.errors,
                            "rounds": {
                                "rps": cell.rps,
                                "p50_ms": cell.p50_ms,
                                "p99_ms": cell.p99_ms,
                                "cpu_us": cell.cpu_us,
                            },
                        }
                        for level, cell in t.cells.items()
                    }
                    for t in targets
                },
                "ratios": {what: value for what, _, value, _ in ratios(targets)},
                "notes": notes,
            },
            indent=2,
        )
    )
    console.print(f"results written to {args.out}")
    return 0
