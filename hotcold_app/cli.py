"""The ``hotcold`` console script: ``serve`` and ``edge`` (one service each, for production),
``up`` and ``demo`` (everything on one machine), ``key`` and ``bench``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hotcold.console import make_console
from hotcold_app import keys_client
from hotcold_app.stack import ROUTER_PORT, Stack, StackOptions, edge_available, prepare_model


def _bench_proxy(argv: list[str]) -> int:
    from bench import proxy  # imported when asked: each bench pulls in its own references

    return proxy.main(argv)


def _bench_path(argv: list[str]) -> int:
    from bench import path

    return path.main(argv)


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


def _bench_fleet(argv: list[str]) -> int:
    from bench import fleet

    return fleet.main(argv)


BENCHMARKS: dict[str, Callable[[list[str]], int]] = {
    "proxy": _bench_proxy,
    "path": _bench_path,
    "policy": _bench_policy,
    "node": _bench_node,
    "soak": _bench_soak,
    "edge": _bench_edge,
    "fleet": _bench_fleet,
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
    parser.add_argument(
        "--no-edge", action="store_true", help="no edge node (router + cloud stubs only)"
    )
    parser.add_argument(
        "--model", default="default", help="edge model: default (SmolLM2-135M) or a folder"
    )


DESCRIPTION = """\
hotcold: an edge/cloud hot-cold request router for LLM inference.

In production, run one service per process (systemd units and Kubernetes manifests: deploy/):
  hotcold serve --config /etc/hotcold/router.yaml    the router
  hotcold edge --config /etc/hotcold/edge_node.yaml  the edge node (needs the [edge] extra)
On one machine, to try it:
  hotcold up / hotcold demo                          router + cloud stubs + edge node
"""

# Sub-commands that hand their arguments to a service's own command line, flags and help
# included: `hotcold serve ...` is `python -m router ...`, `hotcold edge ...` is
# `python -m edge_node ...`.
SERVICES = {
    "serve": "run the router (python -m router): hotcold serve --config FILE [flags]; "
    "hotcold serve --help lists every flag and its default",
    "edge": "run the edge node (python -m edge_node; the [edge] extra): hotcold edge "
    "--config FILE [flags]",
}


def _run_service(command: str, argv: list[str]) -> int:
    prog = f"hotcold {command}"
    if command == "serve":
        from router.__main__ import main as router_main

        return router_main(argv, prog=prog)
    if not edge_available():
        print(
            "hotcold edge: the edge extra is not installed: pip install 'hotcold[edge]' "
            "(docs/deploy.md says how to get CUDA torch)",
            file=sys.stderr,
        )
        return 2
    from edge_node.__main__ import main as edge_main

    return edge_main(argv, prog=prog)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's help ends with its default; the description keeps its lines."""


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotcold", description=DESCRIPTION, formatter_class=_HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, **options: Any) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help_text, description=help_text, formatter_class=_HelpFormatter, **options
        )

    for name, help_text in SERVICES.items():
        command(name, help_text, add_help=False)  # listed here; parsed by the service
    up = command("up", "start router, cloud stubs and edge node with built-in defaults; stay up")
    _add_stack_flags(up)
    demo = command("demo", "up + an IoT workload + a summary of where requests went and why")
    _add_stack_flags(demo)
    demo.add_argument("--requests", type=int, default=600, help="requests the workload sends")
    demo.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    demo.add_argument(
        "--stay", action="store_true", help="keep everything up after the workload (Ctrl-C)"
    )
    key = command(
        "key",
        "API keys and tenant limits through a router's admin API: new, list, revoke, limits",
    )
    keys_client.add_arguments(key)
    bench = command("bench", "benchmarks: " + ", ".join(BENCHMARKS))
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument(
        "rest", nargs=argparse.REMAINDER, help="the benchmark's own flags (hotcold bench NAME -h)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments and arguments[0] in SERVICES:
        return _run_service(arguments[0], arguments[1:])
    args = build_parser().parse_args(arguments)

    if args.command == "up":
        asyncio.run(_up(_stack_options(args)))
        return 0
    if args.command == "demo":
        from hotcold_app import demo as demo_module

        return demo_module.main(
            make_console(), args.requests, args.concurrency, _stack_options(args), args.stay
        )
    if args.command == "key":
        return keys_client.run(args)
    return BENCHMARKS[args.name](args.rest)


if __name__ == "__main__":
    sys.exit(main())
