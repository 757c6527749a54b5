"""The fleet's hot-key view that grows linearly with the fleet: one shared, decaying sorted set.

The all-to-all exchange (router/fleet_members.py ``SketchExchange``) has every router read
every other router's sketch each period: Redis traffic grows with the square of the fleet
(100 routers x 99 sketches of up to ~75 KiB a second). Here, every ``sketch_interval_s``, each
router makes one call (a Lua script):

1. *push*: the counts of the keys it saw most often since its last push (at most
   ``hot_keys_push`` keys; a key is the top 64 bits of its fingerprint, 8 bytes) are added to
   one sorted set, ``hotcold:{fleet}:hot-keys`` (``ZINCRBY``);
2. *decay*: once per ``hot_keys_decay_s`` fleet-wide (whoever pushes first after it is due),
   every score is multiplied by ``hot_keys_decay_factor`` (one ``ZUNIONSTORE`` with a weight,
   in Redis), scores under 1 are dropped and the set is trimmed to ``hot_keys_capacity``
   members: bounded memory, and the view follows shifting popularity;
3. *read*: the ``hot_keys_summary`` highest scores come back as integers.

So a router sends O(push) and reads O(summary) bytes per period, whatever the fleet's size:
Redis traffic is linear in the number of routers. The router's estimate of a key is the
fleet's count (its own pushes included) plus what it counted since its last push, or its local
sketch's estimate when higher or the key is not among the fleet's hottest
(:meth:`router.sketch.FrequencySketch.fleet_estimate`). ``hotcold bench fleet`` measures both
designs side by side (bytes and commands per second, CPU per router, recall of the true top
1% of keys).

Time: Redis's clock (``TIME``), or an injected clock's (tests, the benchmark).
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from router.clock import Clock
from router.fleet_link import RedisLink, as_bytes
from router.sketch import FrequencySketch

# KEYS: the sorted set, its last-decay stamp (ms). ARGV: now (ms; '' = Redis TIME), decay
# period (ms), decay factor, capacity, summary size, the pushed keys packed: 12 bytes each,
# the member (8) and its count (uint32, big-endian). Returns the summary packed the same way,
# highest first: one bulk string, parsed with numpy (a reply of thousands of elements would
# cost the router milliseconds of the event loop to parse).
_PUSH = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
local pushed = ARGV[6]
for i = 1, #pushed - 11, 12 do
  local count = struct.unpack('>I4', pushed, i + 8)
  redis.call('ZINCRBY', KEYS[1], count, string.sub(pushed, i, i + 7))
end
local period = tonumber(ARGV[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '-1')
if last < 0 then
  redis.call('SET', KEYS[2], now)
elseif now - last >= period then
  local steps = math.floor((now - last) / period)
  redis.call('ZUNIONSTORE', KEYS[1], 1, KEYS[1], 'WEIGHTS', tonumber(ARGV[3]) ^ steps)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(1')
  redis.call('SET', KEYS[2], last + steps * period)
end
local size = redis.call('ZCARD', KEYS[1])
local capacity = tonumber(ARGV[4])
if size > capacity then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, size - capacity - 1)
end
local top = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[5]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #top, 2 do
  local score = math.min(math.floor(tonumber(top[i + 1])), 4294967295)
  out[#out + 1] = top[i] .. struct.pack('>I4', score)
end
return table.concat(out)
"""

ENTRY = np.dtype([("member", ">u8"), ("count", ">u4")])


def pack_counts(pushed: list[tuple[int, int]]) -> bytes:
    """Keys and counts as the script reads them: 12 bytes each (plain code)."""
    packed = np.empty(len(pushed), dtype=ENTRY)
    packed["member"] = [fingerprint >> 64 for fingerprint, _ in pushed]
    packed["count"] = [min(count, 0xFFFFFFFF) for _, count in pushed]
    return packed.tobytes()


def unpack_counts(raw: bytes) -> dict[int, int]:
    """The script's summary: the top 64 bits of a fingerprint -> the fleet's count."""
    entries = np.frombuffer(raw, dtype=ENTRY, count=len(raw) // ENTRY.itemsize)
    return dict(zip(entries["member"].tolist(), entries["count"].tolist(), strict=True))


def member_of(fingerprint: int) -> bytes:
    """A key's member in the shared set: the top 64 bits of its fingerprint."""
    return (fingerprint >> 64).to_bytes(8, "big")


def top_counts(interval: dict[int, int], limit: int) -> list[tuple[int, int]]:
    """The ``limit`` most counted keys of an interval, most first (plain code)."""
    if len(interval) <= limit:
        return sorted(interval.items(), key=lambda item: -item[1])
    return heapq.nlargest(limit, interval.items(), key=lambda item: item[1])


class SharedHotKeys:
    """This router's side of the shared view: push, decay when due, read the summary."""

    def __init__(
        self, link: RedisLink, sketch: FrequencySketch, test_clock: Clock | None = None
    ) -> None:
        self.link = link
        self.sketch = sketch
        self.test_clock = test_clock
        config = link.config
        self.key = f"{link.keys.prefix}hot-keys"
        self.stamp_key = f"{link.keys.prefix}hot-keys-decayed"
        self._script = link.client.register_script(_PUSH)
        sketch.track_interval(4 * config.hot_keys_push)
        self.syncs = 0
        self.fleet_keys = 0  # keys in the current summary
        self._last_ok = link.clock.now()

    def _args(self, pushed: list[tuple[int, int]]) -> list[Any]:
        config = self.link.config
        now = "" if self.test_clock is None else round(self.test_clock.now() * 1000)
        args: list[Any] = [
            now,
            round(config.hot_keys_decay_s * 1000),
            config.hot_keys_decay_factor,
            config.hot_keys_capacity,
            config.hot_keys_summary,
        ]
        args.append(pack_counts(pushed))
        return args

    async def exchange(self) -> None:
        """Push this interval's top keys, read the fleet's summary, install it."""
        clock = self.link.clock
        if clock.now() - self._last_ok > self.link.config.member_ttl_s:
            self.sketch.set_fleet_counts(None)  # stale: back to local frequencies
            self.fleet_keys = 0
        interval = self.sketch.take_interval()
        pushed = top_counts(interval, self.link.config.hot_keys_push)
        try:
            reply = await self.link.call(
                self._script(keys=[self.key, self.stamp_key], args=self._args(pushed))
            )
        except BaseException:
            self._give_back(interval)
            raise
        counts = unpack_counts(as_bytes(reply))
        self.sketch.set_fleet_counts(counts)
        self.fleet_keys = len(counts)
        self._last_ok = clock.now()
        self.syncs += 1

    def _give_back(self, interval: dict[int, int]) -> None:
        """A failed push: its counts wait for the next one (bounded as the interval is)."""
        self.sketch.merge_interval(interval)
