"""The fleet's live API keys and tenant limits in Redis (router/live_keys.py says what they are).

Two hashes and a version (router/fleet_link.py ``FleetKeys``): every change is one Lua script
that edits a hash, increments the version and publishes ``tenants`` on the policy channel, so
every router fetches the new set at once (router/fleet_policy.py's subscription); a poll
every ``poll_interval_s`` compares the version and heals a lost message. A key made or revoked
through any router's admin API is in effect on every router within a second, no restart.

Redis restarted empty (no version stored): the router that notices first writes its last
known set back, as the policy does. A router that had missed the newest change before the
restart could write back an older set; with a replica (Sentinel) nothing is lost and this
never happens.

While Redis is away every router keeps its last set: keys keep working, and the admin API
answers 503 for changes (nothing is written).
"""

from __future__ import annotations

import logging
from typing import Any

import msgpack
from pydantic import ValidationError

from router.config import TenantLimits
from router.fleet_link import REDIS_FAILURES, RedisLink, as_bytes
from router.live_keys import KeyRecord, TenantDirectory, UnknownKey
from router.policy_manager import StoreUnavailable

log = logging.getLogger("hotcold.fleet")

# KEYS: the hash, the version, the keys-managed flag (set by 'add'). ARGV: op ('add' | 'set'
# | 'del'), field, value, channel, the hash's bound. Returns {1, version} done, {0, 0} no
# such field (del), {2, 0} exists (add), {-1, 0} full.
_CHANGE = """
local exists = redis.call('HEXISTS', KEYS[1], ARGV[2])
if ARGV[1] == 'del' then
  if exists == 0 then return {0, 0} end
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  if exists == 1 and ARGV[1] == 'add' then return {2, 0} end
  if exists == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then return {-1, 0} end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  if ARGV[1] == 'add' then redis.call('SET', KEYS[3], '1') end
end
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], 'tenants')
return {1, version}
"""

# Redis lost everything (no version): write our last set back. KEYS: keys hash, limits hash,
# version, keys-managed flag. ARGV: version, channel, number of keys, keys managed (0/1),
# then key pairs, then limit pairs.
_RESTORE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local count = tonumber(ARGV[3])
if ARGV[4] == '1' then redis.call('SET', KEYS[4], '1') end
local i = 5
for _ = 1, count do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i < #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[2], 'tenants')
return 1
"""


def _pack(document: Any) -> bytes:
    packed: bytes = msgpack.packb(document)
    return packed


class RedisTenantStore:
    """The admin API's store for a fleet, and the sync that keeps this router's set current."""

    where = "fleet"

    def __init__(self, link: RedisLink, directory: TenantDirectory, max_keys: int) -> None:
        self.link = link
        self.directory = directory
        self.max_keys = max_keys
        self.version = 0  # of the set in effect here (0: none fetched yet)
        self.syncs = 0
        self.refused = 0  # stored entries that did not decode or validate
        self._change = link.client.register_script(_CHANGE)
        self._restore = link.client.register_script(_RESTORE)

    # ---- changes (the admin API) -------------------------------------------------------------

    async def _edit(self, hash_key: str, op: str, field: str, value: bytes = b"") -> int:
        keys = self.link.keys
        try:
            status, _ = await self.link.call(
                self._change(
                    keys=[hash_key, keys.tenants_version, keys.keys_managed],
                    args=[op, field, value, keys.channel, self.max_keys],
                )
            )
        except REDIS_FAILURES as exc:
            raise StoreUnavailable(
                f"the fleet's Redis ({self.link.url}) did not answer: {exc}"
            ) from exc
        return int(status)

    async def create_key(self, record: KeyRecord) -> None:
        status = await self._edit(self.link.keys.api_keys, "add", record.id, _pack(record.stored()))
        if status == 2:
            raise UnknownKey(f"a key with id {record.id} exists; make another")
        if status == -1:
            raise StoreUnavailable(f"the fleet holds its bound of {self.max_keys} live keys")
        await self.sync()

    async def revoke_key(self, ident: str) -> KeyRecord:
        record = self.directory.live_keys.get(ident)
        status = await self._edit(self.link.keys.api_keys, "del", ident)
        if status == 0:
            await self.sync()
            in_file = any(r.id == ident for r in self.directory.file_keys())
            where = "in this router's config file: remove it there" if in_file else "unknown"
            raise UnknownKey(f"key {ident} is {where}")
        await self.sync()
        return record or KeyRecord("?", ident, None, None, "fleet")

    async def set_limits(self, tenant: str, limits: TenantLimits | None) -> None:
        hash_key = self.link.keys.tenant_limits
        if limits is None:
            await self._edit(hash_key, "del", tenant)
        else:
            await self._edit(hash_key, "set", tenant, _pack(limits.model_dump()))
        await self.sync()

    # ---- sync ---------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Fetch the fleet's set when its version differs from ours (or write ours back when
        Redis lost it)."""
        keys, client = self.link.keys, self.link.client
        stored = await self.link.call(client.get(keys.tenants_version))
        if stored is None:
            if self.version > 0:
                await self._write_back()
            return
        if int(stored) == self.version:
            return
        pipe = client.pipeline(transaction=True)
        pipe.get(keys.tenants_version)
        pipe.hgetall(keys.api_keys)
        pipe.hgetall(keys.tenant_limits)
        pipe.get(keys.keys_managed)
        version, raw_keys, raw_limits, managed = await self.link.call(pipe.execute())
        records = []
        for ident, raw in raw_keys.items():
            try:
                records.append(KeyRecord.of_stored(msgpack.unpackb(as_bytes(raw)), "fleet"))
            except (ValueError, TypeError, KeyError, msgpack.ExtraData) as exc:
                self._refuse(f"key {as_bytes(ident).decode(errors='replace')}", exc)
        limits = {}
        for tenant, raw in raw_limits.items():
            name = as_bytes(tenant).decode(errors="replace")
            try:
                limits[name] = TenantLimits.model_validate(msgpack.unpackb(as_bytes(raw)))
            except (ValueError, TypeError, ValidationError, msgpack.ExtraData) as exc:
                self._refuse(f"limits of {name}", exc)
        self.directory.replace_live(records, limits, keys_managed=managed is not None)
        self.version = int(version or 0)
        self.syncs += 1

    def _refuse(self, what: str, exc: Exception) -> None:
        self.refused += 1
        log.error("refused the fleet's %s in Redis: %s", what, exc)

    async def _write_back(self) -> None:
        keys = self.link.keys
        managed = "1" if self.directory.keys_managed else "0"
        args: list[Any] = [self.version, keys.channel, len(self.directory.live_keys), managed]
        for ident, record in self.directory.live_keys.items():
            args += [ident, _pack(record.stored())]
        for tenant, limits in self.directory.live_limits.items():
            args += [tenant, _pack(limits.model_dump())]
        written = await self.link.call(
            self._restore(
                keys=[keys.api_keys, keys.tenant_limits, keys.tenants_version, keys.keys_managed],
                args=args,
            )
        )
        if written:
            log.warning(
                "Redis held no API keys or tenant limits; wrote back ours (version %d)",
                self.version,
            )

    def status(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "live_keys": len(self.directory.live_keys),
            "live_limits": len(self.directory.live_limits),
            "syncs": self.syncs,
            "refused": self.refused,
        }
