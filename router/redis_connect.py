"""One Redis client from one URL, whatever the deployment.

- ``redis://[[user]:password@]host:port[/db]``, ``rediss://`` (TLS; ``?ssl_ca_certs=...``),
  ``unix:///path/to/socket``: redis-py's own URL parsing.
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``: the master of
  ``service`` as the Sentinels at those addresses report it (failover is followed).
  The password is the data nodes'; Sentinels without AUTH are assumed.
- ``redis+cluster://[[user]:password@]host:port``: a Redis Cluster, discovered from that node;
  every hotcold key of a fleet shares one hash slot (``{fleet}`` hash tags), so scripts work.

No retries inside the client: the fleet sync bounds every call with its own timeout and tries
again on its next period, which is what keeps a slow Redis away from everything else.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

RedisClient = Redis | RedisCluster


def _timeouts(timeout_s: float) -> dict[str, Any]:
    return {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}


def connect(url: str, timeout_s: float) -> RedisClient:
    """A client for ``url`` (no I/O yet: connections open on first use)."""
    if url.startswith("redis+sentinel://"):
        parts = urlsplit(url)
        addresses = []
        for address in parts.netloc.rpartition("@")[2].split(","):
            host, _, port = address.rpartition(":")
            addresses.append((host or "localhost", int(port or 26379)))
        path = [part for part in parts.path.split("/") if part]
        if not path:
            raise ValueError(
                "a sentinel URL names the service: redis+sentinel://host:port/mymaster"
            )
        sentinel = Sentinel(addresses, **_timeouts(timeout_s))  # type: ignore[no-untyped-call]
        master: Redis = sentinel.master_for(
            path[0],
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            db=int(path[1]) if len(path) > 1 else 0,
            **_timeouts(timeout_s),
        )
        return master
    if url.startswith("redis+cluster://"):
        return RedisCluster.from_url(
            "redis://" + url.removeprefix("redis+cluster://"), **_timeouts(timeout_s)
        )
    return Redis.from_url(url, **_timeouts(timeout_s))


async def close(client: RedisClient) -> None:
    """Close ``client`` and, for a Sentinel URL, its connections to the Sentinels that found
    its master: a ``master_for`` client's ``aclose()`` leaves those open (they belong to the
    ``Sentinel``'s own clients), so a fleet that stopped or reconnected left them behind."""
    sentinel = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    clients = [client, *(sentinel.sentinels if sentinel is not None else ())]
    # All at once, each whatever the others do (Sentinel.aclose(), which does the same, is
    # newer than redis>=5.0); the master client's own failure is the one reported.
    results = await asyncio.gather(*(each.aclose() for each in clients), return_exceptions=True)
    if isinstance(results[0], BaseException):
        raise results[0]


def describe(url: str) -> str:
    """The URL without its password, for logs and the admin API."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
