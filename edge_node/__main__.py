"""``python -m edge_node``: the 4-bit edge inference node."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from rich.console import Console

from edge_node.config import EdgeNodeConfig
from hotcold.dataclass_config import load_dataclass_config
from hotcold.logs import setup_logging
from hotcold.serving import Server, serve_forever


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edge_node", description=__doc__)
    parser.add_argument("--config", help="YAML file with edge node keys (flags override it)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model", help="'default' (SmolLM2-135M-Instruct) or a model folder")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"])
    parser.add_argument(
        "--no-quantize",
        dest="quantize",
        action="store_false",
        default=None,
        help="load in the compute dtype instead of NF4 (for comparisons)",
    )
    parser.add_argument("--compute-dtype", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--double-quant", action="store_true", default=None)
    parser.add_argument("--max-batch", type=int)
    parser.add_argument("--batch-window-ms", type=float)
    parser.add_argument("--max-queue", type=int)
    parser.add_argument("--max-context", type=int)
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> EdgeNodeConfig:
    return load_dataclass_config(EdgeNodeConfig, args)


def main(argv: list[str] | None = None) -> int:
    setup_logging("INFO")
    args = parse_args(argv)
    console = Console(stderr=True)
    try:
        config = load_config(args)
    except (ValueError, TypeError, OSError) as exc:
        console.print(f"[red]edge_node: bad configuration: {exc}")
        return 2
    from edge_node.app import create_app
    from edge_node.memory import DoesNotFit
    from edge_node.model import load_configured
    from edge_node.weights import WeightsError, resolve_model

    try:
        path = resolve_model(config.model, console)
        with console.status(f"loading {path.name} ({'NF4' if config.quantize else 'full'}) ..."):
            loaded = load_configured(path, config)
    except (WeightsError, DoesNotFit, RuntimeError) as exc:
        console.print(f"[red]edge_node: {exc}")
        return 1
    logging.getLogger("hotcold.edge").info(
        "%s on %s, %s, %.0f MB measured",
        loaded.name,
        loaded.device,
        loaded.quantization,
        loaded.footprint_bytes / 1e6,
    )
    server = Server(create_app(config, loaded), config.host, config.port)
    asyncio.run(serve_forever(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
