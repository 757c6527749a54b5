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
from hotcold.otel import TracingUnavailable, add_tracing_flag, enable_tracing
from hotcold.serving import Server, serve_forever


def parse_args(argv: list[str] | None, prog: str = "python -m edge_node") -> argparse.Namespace:
    """Flags override the file's keys of the same name; each help says the built-in default
    (edge_node/config.py), which applies when neither sets it."""
    defaults = EdgeNodeConfig()

    def default(name: str) -> str:
        return f" (default: {getattr(defaults, name)})"

    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument(
        "--config", help="YAML file with edge node keys (configs/edge_node.yaml; flags override it)"
    )
    parser.add_argument("--host", help="address to listen on" + default("host"))
    parser.add_argument("--port", type=int, help="TCP port" + default("port"))
    parser.add_argument(
        "--model",
        help="'default' (SmolLM2-135M-Instruct) or a model folder" + default("model"),
    )
    parser.add_argument(
        "--device", choices=["auto", "cuda", "cpu"], help="where to run" + default("device")
    )
    parser.add_argument(
        "--no-quantize",
        dest="quantize",
        action="store_false",
        default=None,
        help="load in the compute dtype instead of NF4 (for comparisons; default: NF4)",
    )
    parser.add_argument(
        "--compute-dtype",
        choices=["bfloat16", "float16", "float32"],
        help="dtype of the matmuls" + default("compute_dtype"),
    )
    parser.add_argument(
        "--double-quant",
        action="store_true",
        default=None,
        help="quantize the quantization constants too" + default("double_quant"),
    )
    parser.add_argument(
        "--max-batch", type=int, help="sequences decoded together" + default("max_batch")
    )
    parser.add_argument(
        "--batching",
        choices=["continuous", "window"],
        help="continuous: join and leave the running batch at each decode step; window: "
        "batch what arrives within the window" + default("batching"),
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        help="window batching: ms a new request waits for others to batch with"
        + default("batch_window_ms"),
    )
    parser.add_argument(
        "--kv-cache",
        choices=["model", "fp8"],
        help="KV cache storage: the model's dtype, or fp8 (half of bf16)" + default("kv_cache"),
    )
    parser.add_argument(
        "--prefix-cache-tokens",
        type=int,
        help="KV of shared prompt prefixes kept for reuse, in tokens; 0 turns it off"
        + default("prefix_cache_tokens"),
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        help="requests waiting; beyond, 503 at once" + default("max_queue"),
    )
    parser.add_argument(
        "--max-context",
        type=int,
        help="tokens per sequence (prompt + output)" + default("max_context"),
    )
    add_tracing_flag(parser)
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> EdgeNodeConfig:
    return load_dataclass_config(EdgeNodeConfig, args)


def main(argv: list[str] | None = None, prog: str = "python -m edge_node") -> int:
    """The edge node's command line (also ``hotcold edge``, which passes its ``prog``)."""
    setup_logging("INFO")
    args = parse_args(argv, prog)
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
    app = create_app(config, loaded)
    if args.tracing:
        try:
            enable_tracing(app, "hotcold-edge-node")
        except TracingUnavailable as exc:
            console.print(f"[red]edge_node: {exc}")
            return 2
    server = Server(app, config.host, config.port)
    asyncio.run(serve_forever(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
