"""``python -m router``: the hotcold edge router."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from hotcold.logs import setup_logging
from hotcold.serving import Server, serve_forever
from router.app import create_app
from router.catalog import Catalog
from router.config import load_layers
from router.errors import ConfigError
from router.models import pool_configs
from router.pools import pool_keys
from router.redis_connect import describe


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m router", description=__doc__)
    parser.add_argument("--config", help="YAML config file (see configs/router.yaml)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument(
        "--cloud-endpoint",
        action="append",
        dest="cloud_endpoints",
        metavar="URL",
        help="a cloud GPU server (repeat for a pool); replaces the file's list",
    )
    parser.add_argument(
        "--edge-endpoint",
        metavar="URL",
        help="the edge node (any OpenAI-compatible server) that computes hot misses",
    )
    parser.add_argument("--cache-entries", type=int, help="response cache size, in entries")
    parser.add_argument(
        "--admin-token", help="bearer token of the admin API (or HOTCOLD_ADMIN_TOKEN)"
    )
    parser.add_argument(
        "--redis-url",
        help="the fleet's Redis: redis://, rediss://, unix://, redis+sentinel://host:port/"
        "service, redis+cluster://host:port (or HOTCOLD_REDIS_URL); none: run alone",
    )
    parser.add_argument("--fleet", help="fleet name: the namespace of its keys in Redis")
    parser.add_argument("--router-id", help="this router's id in the fleet (default host-pid)")
    parser.add_argument("--log-level")
    parser.add_argument(
        "--json-logs", action="store_true", default=None, help="one JSON object per log line"
    )
    return parser.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Flags as a config layer: only the flags that were given."""
    tree: dict[str, Any] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            tree.setdefault(section, {})[key] = value

    put("server", "host", args.host)
    put("server", "port", args.port)
    put("cloud", "endpoints", args.cloud_endpoints)
    put("edge", "endpoints", [args.edge_endpoint] if args.edge_endpoint else None)
    put("cache", "entries", args.cache_entries)
    put("admin", "token", args.admin_token)
    put("fleet", "redis_url", args.redis_url)
    put("fleet", "name", args.fleet)
    put("fleet", "router_id", args.router_id)
    put("logging", "level", args.log_level)
    put("logging", "json_lines", args.json_logs)
    return tree


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        layers = load_layers(args.config, overrides_from(args))
        config = layers.build()
        for name, pool in pool_configs(config, Catalog.from_config(config)).items():
            pool_keys(name, pool)  # a missing key variable or file stops start-up here
    except ConfigError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging.level, config.logging.json_lines)
    if not config.logging.access_log:
        logging.getLogger("hotcold.access").setLevel(logging.WARNING)
    log = logging.getLogger("hotcold.router")
    catalog = Catalog.from_config(config)
    for model in catalog.models:
        log.info(
            "model %s: pool %s%s",
            model.name,
            model.pool,
            ", edge-eligible" if model.edge_allowed else "",
        )
    if not config.tenants.api_keys:
        log.warning(
            "OPEN MODE: no API keys configured (tenants.api_keys): every client is served and"
            " X-Tenant names its tenant; run behind an authenticating gateway or add keys"
            " (hotcold key new --tenant NAME)"
        )
    if config.admin.token is None:
        log.warning("no admin token: the admin API and dashboard are open (--admin-token)")
    if config.fleet.redis_url is None:
        log.info("no --redis-url: running alone (policy changes apply to this router only)")
    else:
        log.info("fleet %r over %s", config.fleet.name, describe(config.fleet.redis_url))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    server = Server(
        create_app(config, layers=layers, handle_signals=True),
        config.server.host,
        config.server.port,
        shutdown_timeout_s=config.server.shutdown_timeout_s,
        max_header_bytes=config.server.max_header_bytes,
    )
    asyncio.run(serve_forever(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
