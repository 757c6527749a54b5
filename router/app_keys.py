"""Typed application keys shared by the router's modules (no module-level singletons)."""

from __future__ import annotations

from aiohttp import web

from router.clock import Clock
from router.config import RouterConfig

CONFIG_KEY = web.AppKey("config", RouterConfig)
CLOCK_KEY = web.AppKey("clock", Clock)
