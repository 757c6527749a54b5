"""The edge's gray-release stages, shared by the fleet through Redis: a stage one router
moves to (on its own evidence) is in effect on every router of the fleet, and a router that
restarts resumes at the fleet's stage instead of starting again in shadow.

``hotcold:{fleet}:release`` is a hash: catalog model -> msgpack ``{stage, reason, by, at}``
(and ``<model>\x1fpin`` -> an operator's pin, stage -1 for none),
``at`` from Redis's own clock (router clocks may skew). A router pushes its moves (a Lua
script stamps ``at``, stores, and publishes ``release`` on the policy channel, so the others
fetch at once; the poll heals a lost message), and adopts any entry newer than the last one
it saw for that model: the latest move in the fleet wins, whoever made it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import msgpack

from router.edge_release import PIN_SUFFIX, EdgeRelease
from router.fleet_link import RedisLink, as_bytes

log = logging.getLogger("hotcold.fleet")
RELEASE_MESSAGE = b"release"

_PUSH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entry = cmsgpack.pack({stage = tonumber(ARGV[2]), reason = ARGV[3], by = ARGV[4], at = now})
redis.call('HSET', KEYS[1], ARGV[1], entry)
redis.call('PUBLISH', ARGV[5], 'release')
return now
"""


class ReleaseSync:
    def __init__(self, link: RedisLink, release: EdgeRelease, router_id: str) -> None:
        self.link = link
        self.release = release
        self.router_id = router_id
        self.key = link.keys.policy.removesuffix("policy") + "release"
        self._push = link.client.register_script(_PUSH)
        self._seen_at: dict[str, int] = {}
        self.adopted = 0

    async def sync(self) -> None:
        """Push this router's moves, then adopt the fleet's newer ones."""
        while self.release.pending_moves:
            model, stage, reason = self.release.pending_moves[0]
            at = await self.link.call(
                self._push(
                    keys=[self.key],
                    args=[model, stage, reason, self.router_id, self.link.keys.channel],
                )
            )
            self.release.pending_moves.popleft()
            self._seen_at[model] = int(at)
        entries = await self.link.call(self.link.client.hgetall(self.key))
        now = self.link.clock.now()
        for raw_model, raw in entries.items():
            model = as_bytes(raw_model).decode(errors="replace")
            entry = _decode(as_bytes(raw))
            if entry is None or entry["at"] <= self._seen_at.get(model, -1):
                continue
            self._seen_at[model] = entry["at"]
            if model.endswith(PIN_SUFFIX):
                pinned: int | None = None if entry["stage"] < 0 else entry["stage"]
                self.release.pin(model.removesuffix(PIN_SUFFIX), pinned, entry["reason"], False)
                continue
            if self.release.adopt(
                model, entry["stage"], f"{entry['reason']} (by {entry['by']})", now
            ):
                self.adopted += 1
                log.info("edge release of %s: stage %d from the fleet", model, entry["stage"])


def _decode(raw: bytes) -> dict[str, Any] | None:
    with contextlib.suppress(ValueError, msgpack.ExtraData, TypeError):
        entry = msgpack.unpackb(raw)
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("stage"), int)
            and isinstance(entry.get("at"), int)
        ):
            return {
                "stage": entry["stage"],
                "at": entry["at"],
                "reason": str(entry.get("reason", "")),
                "by": str(entry.get("by", "?")),
            }
    return None
