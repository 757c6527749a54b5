"""What a router publishes of its frequency sketch, and how the fleet's snapshots are summed.

Each router publishes its *own* counters and doorkeeper (never what it received), compressed:
the counters are bytes that are mostly zero, so zlib shrinks the default sketch (256 KiB of
counters, 32 KiB of doorkeeper) to a few KiB to a few tens of KiB. The other routers' snapshots
are summed per counter (saturating at 255) and their doorkeeper bits counted per bit; the result
is installed in the local sketch with :meth:`router.sketch.FrequencySketch.set_remote`.

Summing is numpy: a Python loop over 256 K counters per router would take tens of ms of the
event loop at every sync.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from router.sketch import FrequencySketch

SNAPSHOT_SCHEMA = "hotcold.sketch/1"


class SnapshotError(ValueError):
    """A published sketch that cannot be used (malformed, or of another shape)."""


@dataclass(frozen=True, slots=True)
class SketchSnapshot:
    router_id: str
    width: int
    door_bits: int
    table: bytes
    door: bytes

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(
            {
                "schema": SNAPSHOT_SCHEMA,
                "router": self.router_id,
                "width": self.width,
                "door_bits": self.door_bits,
                "table": zlib.compress(self.table, 1),
                "door": zlib.compress(self.door, 1),
            },
        )
        return packed

    @classmethod
    def of(cls, router_id: str, sketch: FrequencySketch) -> SketchSnapshot:
        table, door = sketch.snapshot()
        return cls(router_id, sketch.width, sketch.door_bits, table, door)

    @classmethod
    def decode(cls, raw: bytes) -> SketchSnapshot:
        try:
            document: Any = msgpack.unpackb(raw, raw=False)
            if not isinstance(document, dict) or document.get("schema") != SNAPSHOT_SCHEMA:
                raise SnapshotError("not a hotcold sketch snapshot")
            width, door_bits = document["width"], document["door_bits"]
            # Bounded decompression: a hostile or corrupt blob cannot inflate past the shape.
            table = zlib.decompressobj().decompress(document["table"], 4 * width + 1)
            door = zlib.decompressobj().decompress(document["door"], door_bits // 8 + 1)
            snapshot = cls(str(document["router"]), int(width), int(door_bits), table, door)
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise SnapshotError(f"malformed sketch snapshot: {exc}") from None
        if len(snapshot.table) != 4 * snapshot.width or len(snapshot.door) * 8 != door_bits:
            raise SnapshotError("sketch snapshot sizes do not match its declared shape")
        return snapshot


def install_fleet_view(sketch: FrequencySketch, others: list[SketchSnapshot]) -> int:
    """Sum the other routers' snapshots into ``sketch``'s remote view; returns how many were
    used (a snapshot of another shape, from a router configured differently, is skipped)."""
    usable = [s for s in others if s.width == sketch.width and s.door_bits == sketch.door_bits]
    if not usable:
        sketch.set_remote(None, None)
        return 0
    table = np.zeros(4 * sketch.width, dtype=np.uint16)
    for snapshot in usable:
        table += np.frombuffer(snapshot.table, dtype=np.uint8)
    remote_table = np.minimum(table, 255).astype(np.uint8).tobytes()
    door_counts: bytes | None = None
    if sketch.door_bits:
        counts = np.zeros(sketch.door_bits, dtype=np.uint16)
        for snapshot in usable:
            counts += np.unpackbits(np.frombuffer(snapshot.door, dtype=np.uint8), bitorder="little")
        door_counts = np.minimum(counts, 255).astype(np.uint8).tobytes()
    sketch.set_remote(remote_table, door_counts)
    return len(usable)
