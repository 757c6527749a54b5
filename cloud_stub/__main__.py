"""``python -m cloud_stub``: one OpenAI-compatible stand-in for a cloud GPU server."""

from __future__ import annotations

import argparse
import logging
import sys

from cloud_stub.app import create_app
from cloud_stub.config import StubConfig
from cloud_stub.handlers import STATE
from hotcold.dataclass_config import load_dataclass_config
from hotcold.otel import TracingUnavailable, add_tracing_flag, enable_tracing
from hotcold.serving import Server, run, serve_forever


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cloud_stub", description=__doc__)
    parser.add_argument("--config", help="YAML file with StubConfig keys (flags override it)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model-name")
    parser.add_argument("--ttft-ms", type=float, help="time to first token, ms")
    parser.add_argument("--tpot-ms", type=float, help="time per further output token, ms")
    parser.add_argument("--jitter", type=float, help="relative jitter on each delay (0.1 = ±10%%)")
    parser.add_argument("--max-concurrency", type=int, help="requests generating at once")
    parser.add_argument("--max-queue", type=int, help="requests waiting beyond that; then 503")
    parser.add_argument("--error-rate", type=float, help="share of requests answered 500")
    parser.add_argument("--slow-rate", type=float, help="share of requests delayed by --slow-ms")
    parser.add_argument("--slow-ms", type=float)
    parser.add_argument("--drop-rate", type=float, help="share of connections dropped unanswered")
    parser.add_argument("--seed", type=int)
    add_tracing_flag(parser)
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> StubConfig:
    return load_dataclass_config(StubConfig, args)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = _parse_args(argv)
    try:
        config = load_config(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"cloud_stub: bad configuration: {exc}", file=sys.stderr)
        return 2
    app = create_app(config)
    if args.tracing:
        try:
            enable_tracing(app, "hotcold-cloud-stub")
        except TracingUnavailable as exc:
            print(f"cloud_stub: {exc}", file=sys.stderr)
            return 2
    server = Server(app, config.host, config.port)
    app[STATE].server = server
    run(serve_forever(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
