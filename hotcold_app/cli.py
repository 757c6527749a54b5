"""The ``hotcold`` console script: ``up``, ``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from hotcold.console import make_console
from hotcold_app.stack import ROUTER_PORT, Stack, StackOptions, edge_available, prepare_model


def _bench_proxy(argv: list[str]) -> int:
    from bench import proxy  # imported when asked: each bench pulls in its own references

    return proxy.main(argv)


def _bench_policy(argv: list[str]) -> int:
    from bench import policy

    return policy.main(argv)


def _bench_node(argv: list[str]) -> int:
    from bench import node

    return node.main(argv)


def _bench_edge(argv: list[str]) -> int:
    from bench import edge

    return edge.main(argv)


def _bench_soak(argv: list[str]) -> int:
    from bench import soak

    return soak.main(argv)


BENCHMARKS: dict[str, Callable[[list[str]], int]] = {
    "proxy": _bench_proxy,
    "policy": _bench_policy,
    "node": _bench_node,
    "soak": _bench_soak,
    "edge": _bench_edge,
}


def _stack_options(args: argparse.Namespace) -> StackOptions:
    edge = not args.no_edge
    if edge and not edge_available():
        make_console(stderr=True).print(
            "[yellow]the edge extra is not installed (pip install -e '.[edge]'): "
            "starting without the edge node; hot misses go to the cloud"
        )
        edge = False
    if edge:
        prepare_model(args.model)
    return StackOptions(
        stubs=args.stubs,
        router_port=args.port,
        log_dir=Path(args.log_dir),
        edge=edge,
        edge_model=args.model,
    )


def _add_stack_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stubs", type=int, default=2, help="cloud stub servers to start")
    parser.add_argument("--port", type=int, default=ROUTER_PORT, help="router port (if free)")
    parser.add_argument("--log-dir", default="hotcold-logs", help="where service logs go")
    parser.add_argument("--no-edge", action="store_true", help="no edge node (router + cloud)")
    parser.add_argument("--model", default="default", help="edge model: default or a folder")


async def _up(options: StackOptions) -> None:
    console = make_console()
    stack = Stack(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        with console.status("starting..."):
            await stack.start()
        from hotcold_app.demo import _show_services

        _show_services(console, stack)
        assert stack.router is not None
        console.print(
            f"try: curl -s {stack.router.url}/v1/chat/completions "
            "-H 'Content-Type: application/json' "
            """-d '{"model":"default","messages":[{"role":"user","content":"hi"}]}'"""
        )
        console.print("Ctrl-C stops everything.")
        while not stop.is_set():
            dead = [name for name, service in stack.services if not service.alive()]
            if dead:
                console.print(f"[red]stopped unexpectedly: {', '.join(dead)}; see the logs")
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        stack.stop()


def _new_key(tenant: str, name: str | None) -> int:
    """Print a fresh key (give it to the client) and the config lines (only its hash)."""
    import re
    import secrets

    from router.config import TENANT_PATTERN
    from router.tenants import key_digest  # the digest the router compares against

    if not re.match(TENANT_PATTERN, tenant):
        print("hotcold key: --tenant must be 1-64 of [A-Za-z0-9._-]", file=sys.stderr)
        return 2
    key = "hc_" + secrets.token_urlsafe(32)
    digest = key_digest(key)
    print(f"API key for tenant {tenant} (shown once; the router keeps only its hash):\n  {key}")
    print("\nadd to the router's config (tenants.api_keys):")
    label = f", name: {name}" if name else ""
    print(f"  - {{tenant: {tenant}, sha256: {digest}{label}}}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hotcold", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start every part with embedded defaults and stay up")
    _add_stack_flags(up)
    demo = commands.add_parser("demo", help="up + an IoT workload + a summary")
    _add_stack_flags(demo)
    demo.add_argument("--requests", type=int, default=600)
    demo.add_argument("--concurrency", type=int, default=8)
    demo.add_argument(
        "--stay", action="store_true", help="keep everything up after the workload (Ctrl-C)"
    )
    key = commands.add_parser("key", help="make an API key for a tenant")
    key.add_argument("action", choices=["new"])
    key.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    key.add_argument("--name", help="a label for the key (which devices use it)")
    bench = commands.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS))
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own flags")
    args = parser.parse_args(argv)

    if args.command == "up":
        asyncio.run(_up(_stack_options(args)))
        return 0
    if args.command == "demo":
        from hotcold_app import demo as demo_module

        return demo_module.main(
            make_console(), args.requests, args.concurrency, _stack_options(args), args.stay
        )
    if args.command == "key":
        return _new_key(args.tenant, args.name)
    return BENCHMARKS[args.name](args.rest)


if __name__ == "__main__":
    sys.exit(main())
