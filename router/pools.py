"""The cloud pools by name, their credentials, and their live replacement on reload.

Each pool of the catalog is an :class:`~router.upstream.UpstreamPool` with its own balancing,
breakers, retries, health path and credentials. A config reload calls :meth:`Pools.apply`:
a pool whose settings (and resolved keys) did not change is kept as it is, with its breakers
and latency history, so a reload never ejects or forgets anything; a changed or new pool is
built fresh; a pool no model uses any more is retired (its prober stops; requests already on
it finish on it, since they hold it).

Credentials come from an environment variable or a file (a mounted secret) named in the
config, read here when the pools are built, so rotating a key is a file change and a reload.
A missing variable or unreadable file refuses the whole config (start-up stops, a reload keeps
the last good one) with a message that names the variable or file, never a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import aiohttp

from router.clock import Clock
from router.config import CredentialConfig, PoolConfig
from router.errors import ConfigError
from router.http1 import Http1Client
from router.tracing import NO_TRACING, Tracing
from router.upstream import AttemptObserver, UpstreamPool

log = logging.getLogger("hotcold.pools")


def read_credential(credential: CredentialConfig, where: str) -> str:
    """The key a credential reference points to (ConfigError naming the reference)."""
    if credential.env is not None:
        value = os.environ.get(credential.env, "")
        if not value:
            raise ConfigError(f"{where}: environment variable {credential.env} is not set")
        return value
    assert credential.file is not None
    try:
        value = Path(credential.file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read key file {credential.file}: {exc.strerror}"
        ) from None
    if not value:
        raise ConfigError(f"{where}: key file {credential.file} is empty")
    return value


def pool_keys(name: str, config: PoolConfig) -> dict[str, str]:
    """Each endpoint's API key: its own reference, else the pool's (env, file or literal)."""
    pool_key: str | None = None
    if config.api_key_env is not None:
        pool_key = read_credential(CredentialConfig(env=config.api_key_env), f"pool {name}")
    elif config.api_key_file is not None:
        pool_key = read_credential(CredentialConfig(file=config.api_key_file), f"pool {name}")
    elif config.api_key is not None:
        pool_key = config.api_key.get_secret_value()
    keys: dict[str, str] = {}
    for url in config.endpoints:
        own = config.endpoint_keys.get(url)
        key = read_credential(own, f"pool {name}, endpoint {url}") if own else pool_key
        if key:
            keys[url] = key
    return keys


class Pools:
    """The live cloud pools, by name."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        client: Http1Client,
        clock: Clock,
        observer: AttemptObserver | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self._session = session
        self._client = client
        self._clock = clock
        self._observer = observer
        self._tracing = tracing
        self._pools: dict[str, UpstreamPool] = {}
        self._built_from: dict[str, tuple[PoolConfig, dict[str, str]]] = {}
        self._probers: dict[str, asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # cancelled probers, until they end

    def apply(self, configs: Mapping[str, PoolConfig]) -> None:
        """Make the live pools these: keep unchanged ones, build changed and new ones, retire
        the rest. All keys are read first, so a bad reference changes nothing."""
        resolved = {name: (config, pool_keys(name, config)) for name, config in configs.items()}
        pools: dict[str, UpstreamPool] = {}
        for name, (config, keys) in resolved.items():
            current = self._pools.get(name)
            if current is not None and self._built_from.get(name) == (config, keys):
                pools[name] = current
                continue
            pools[name] = UpstreamPool(
                name,
                config,
                self._session,
                self._client,
                self._clock,
                observer=self._observer,
                api_keys=keys,
                tracing=self._tracing,
            )
            if current is not None:
                log.info("pool %s rebuilt with its new settings", name)
        for name in self._pools.keys() - pools.keys():
            log.info("pool %s retired (no model uses it any more)", name)
        for name, prober in list(self._probers.items()):
            if pools.get(name) is not self._pools.get(name):
                prober.cancel()
                self._retiring.add(prober)
                prober.add_done_callback(self._retiring.discard)
                del self._probers[name]
        self._pools, self._built_from = pools, resolved
        for name, pool in pools.items():
            if name not in self._probers:
                self._probers[name] = asyncio.create_task(pool.run_prober(), name=f"{name}-prober")

    def get(self, name: str) -> UpstreamPool:
        return self._pools[name]

    def __iter__(self) -> Iterator[UpstreamPool]:
        return iter(list(self._pools.values()))

    def __len__(self) -> int:
        return len(self._pools)

    async def close(self) -> None:
        probers = [*self._probers.values(), *self._retiring]
        self._probers.clear()
        for prober in probers:
            prober.cancel()
        for prober in probers:
            with contextlib.suppress(asyncio.CancelledError):
                await prober
