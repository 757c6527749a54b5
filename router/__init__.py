"""The hotcold router: classifies each inference request hot or cold and routes it to the
edge cache/node or to the cloud GPU pool. It never imports torch."""

from router.app import create_app
from router.config import RouterConfig, load_config

__all__ = ["RouterConfig", "create_app", "load_config"]
