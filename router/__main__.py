"""``python -m router``: the hotcold edge router."""

from __future__ import annotations

import argparse
import logging
import resource
import sys

from hotcold.logs import setup_logging
from hotcold.serving import Server, run, serve_forever
from router.app import create_app
from router.catalog import Catalog
from router.config import ConfigLayers, RouterConfig, load_layers
from router.errors import ConfigError
from router.models import pool_configs
from router.pools import pool_keys
from router.redis_connect import describe
from router.settings import add_setting_flags, overrides_from, reference_config
from router.workers import supervise, worker_index


def parse_args(argv: list[str] | None, prog: str = "python -m router") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="the hotcold edge router. Every setting is in the config file (see "
        "configs/router.yaml); flags override the file, which overrides HOTCOLD_* variables.",
    )
    parser.add_argument("--config", help="YAML config file (see configs/router.yaml)")
    parser.add_argument(
        "--reference-config",
        action="store_true",
        help="print the reference config (every setting, its default and unit) and exit",
    )
    add_setting_flags(parser)  # one flag per setting that declares one (router/config.py)
    return parser.parse_args(argv)


def build_server(
    config: RouterConfig, layers: ConfigLayers | None = None, *, handle_signals: bool = False
) -> Server:
    """The router's app on its server, with the connection bounds of ``server.*``."""
    return Server(
        create_app(config, layers=layers, handle_signals=handle_signals),
        config.server.host,
        config.server.port,
        shutdown_timeout_s=config.server.shutdown_timeout_s,
        max_header_bytes=config.server.max_header_bytes,
        max_headers=config.server.max_headers,
        idle_timeout_s=config.server.idle_timeout_s,
        header_timeout_s=config.server.header_timeout_s,
        max_connections=connection_cap(config),
        reuse_port=worker_index() is not None,  # one of server.workers on a shared port
    )


def connection_cap(config: RouterConfig) -> int:
    """``server.max_connections``, within what the process may open: a cap above the
    descriptor limit would run out of descriptors (and fail upstream and Redis calls) first."""
    wanted = config.server.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    reserve = config.cloud.max_connections + 64  # upstream sockets, Redis, logs, files
    if soft == resource.RLIM_INFINITY or wanted + reserve <= soft:
        return wanted
    cap = max(1, soft - reserve)
    logging.getLogger("hotcold.router").warning(
        "server.max_connections %d is over what the descriptor limit (%d, less %d reserved)"
        " allows: capped at %d; raise the limit (ulimit -n) for more",
        wanted,
        soft,
        reserve,
        cap,
    )
    return cap


def main(argv: list[str] | None = None, prog: str = "python -m router") -> int:
    """The router's command line (also ``hotcold serve``, which passes its ``prog``)."""
    args = parse_args(argv, prog)
    if args.reference_config:
        sys.stdout.write(reference_config())
        return 0
    try:
        layers = load_layers(args.config, overrides_from(args))
        config = layers.build()
        for name, pool in pool_configs(config, Catalog.from_config(config)).items():
            pool_keys(name, pool)  # a missing key variable or file stops start-up here
    except ConfigError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging.level, config.logging.json_lines)
    if config.server.workers > 1 and worker_index() is None:
        if config.server.port == 0:
            print("router: server.workers > 1 needs a fixed port, not 0", file=sys.stderr)
            return 2
        return supervise(sys.argv[1:] if argv is None else list(argv), config.server.workers)
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
    server = build_server(config, layers, handle_signals=True)
    run(serve_forever(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
