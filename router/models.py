"""The live model catalog together with its pools, replaced as one on a config reload.

The dispatcher reads ``catalog`` and then ``pools`` without awaiting in between, and
:meth:`ModelRoutes.apply` replaces both without awaiting either, so a request never sees a
catalog whose pool is missing. Pools are built only for the pools the catalog uses.
"""

from __future__ import annotations

import logging

from router.catalog import Catalog
from router.config import PoolConfig, RouterConfig
from router.pools import Pools
from router.upstream import UpstreamPool

log = logging.getLogger("hotcold.models")


def pool_configs(config: RouterConfig, catalog: Catalog) -> dict[str, PoolConfig]:
    """The configured pools the catalog uses (``cloud`` is the legacy section)."""
    configured = {"cloud": config.cloud, **config.pools}
    unused = configured.keys() - catalog.pools - {"cloud"}
    if unused:
        log.warning("pools no model uses (not started): %s", ", ".join(sorted(unused)))
    return {name: configured[name] for name in sorted(catalog.pools)}


class ModelRoutes:
    def __init__(self, pools: Pools, config: RouterConfig) -> None:
        self.pools = pools
        self.catalog = Catalog.from_config(config)
        self.pools.apply(pool_configs(config, self.catalog))

    def apply(self, config: RouterConfig) -> None:
        """A reloaded config's catalog and pools (ConfigError, changing nothing, when a pool's
        key cannot be read)."""
        catalog = Catalog.from_config(config)
        self.pools.apply(pool_configs(config, catalog))
        self.catalog = catalog
        log.info("model catalog: %s", ", ".join(model.name for model in catalog.models))

    def pool_of(self, name: str) -> UpstreamPool:
        return self.pools.get(name)
