"""Frequency sketch: how often has a key been seen lately, in bounded memory.

Structure (after Caffeine's ``FrequencySketch`` and the TinyLFU paper, Einziger, Friedman &
Manes, "TinyLFU: A Highly Efficient Cache Admission Policy", ACM ToS 2017):

- A count-min sketch of ``depth = 4`` rows of ``width`` counters (a power of two). A key's
  128-bit fingerprint gives one 32-bit index slice per row. Counters are bytes, saturating at
  ``max_count`` (15, as Caffeine's 4-bit counters: recent popularity matters, not history).
- Conservative update: only the counters equal to the key's current minimum are incremented,
  which keeps over-counting from collisions low without ever under-counting.
- Aging: after ``sample_size`` increments (10 x the cache's capacity, Caffeine's choice) every
  counter is halved, so the sketch follows shifting popularity. The counts therefore estimate
  frequency *per window* of ``sample_size`` requests; halving is one C-level ``translate``.
- A doorkeeper (a Bloom filter cleared at each aging) absorbs the first occurrence of every
  key, so one-hit wonders never touch the counters: they are most of the keys in real traces.

Error bound: with width ``w`` and ``N`` increments in a window, a count-min row over-counts by
more than ``e * N / w`` with probability at most ``1/e``; four rows push the failure probability
to ``e**-4`` (about 2%). Estimates never fall below the true count within the window (capped at
``max_count``), which the property tests check.

Memory: ``4 * width`` bytes of counters plus ``width / 2`` bytes of doorkeeper, fixed at
construction whatever the key space.

Fleet view: :meth:`snapshot` is what a router publishes (its own counters and doorkeeper);
:meth:`set_remote` installs the sum of the *other* routers' snapshots (see
``router.fleet_sketch``), and :meth:`fleet_estimate` adds the two. The remote part is replaced,
never accumulated, so a router's counts are never fed back to it and do not grow at each sync.
"""

from __future__ import annotations

DEPTH = 4
DEFAULT_MAX_COUNT = 15


def _halving_table() -> bytes:
    return bytes(value >> 1 for value in range(256))


_HALVE = _halving_table()


def ceil_power_of_two(value: int) -> int:
    return 1 << max(0, (max(1, value) - 1).bit_length())


def width_for(entries: int, minimum: int = 1) -> int:
    """Counters per row for a sketch that judges ``entries`` keys: four per key, rounded up
    to a power of two (Caffeine's sizing), at least ``minimum``."""
    return max(minimum, 4 * ceil_power_of_two(entries))


class FrequencySketch:
    __slots__ = (
        "_door",
        "_door_mask",
        "_fleet_counts",
        "_interval",
        "_interval_cap",
        "_mask",
        "_remote_door",
        "_remote_table",
        "_table",
        "_width",
        "additions",
        "max_count",
        "resets",
        "sample_size",
    )

    def __init__(
        self,
        width: int,
        sample_size: int,
        *,
        doorkeeper: bool = True,
        max_count: int = DEFAULT_MAX_COUNT,
    ) -> None:
        if not 1 <= max_count <= 255:
            raise ValueError(f"max_count must be within 1..255, got {max_count}")
        if sample_size < 1:
            raise ValueError(f"sample_size must be positive, got {sample_size}")
        self._width = ceil_power_of_two(max(16, width))
        self._mask = self._width - 1
        self._table = bytearray(DEPTH * self._width)
        # The doorkeeper has 4 bits per counter column: a few percent false positives at the
        # number of distinct keys a window holds.
        door_bits = self._width * 4
        self._door: bytearray | None = bytearray(door_bits // 8) if doorkeeper else None
        self._door_mask = door_bits - 1
        self.sample_size = sample_size
        self.max_count = max_count
        self.additions = 0
        self.resets = 0
        self._remote_table: bytes | None = None
        self._remote_door: bytes | None = None
        # The shared hot-key view (router/fleet_hotkeys.py): keys counted since the last push
        # (bounded: new keys past the cap wait for the next interval) and the fleet's counts.
        self._interval: dict[int, int] | None = None
        self._interval_cap = 0
        self._fleet_counts: dict[int, int] | None = None

    @property
    def width(self) -> int:
        return self._width

    @property
    def memory_bytes(self) -> int:
        return len(self._table) + (len(self._door) if self._door is not None else 0)

    def _in_door(self, fingerprint: int) -> bool:
        door = self._door
        assert door is not None
        a = (fingerprint >> 7) & self._door_mask
        b = (fingerprint >> 73) & self._door_mask
        return bool((door[a >> 3] >> (a & 7)) & 1 and (door[b >> 3] >> (b & 7)) & 1)

    def increment(self, fingerprint: int) -> None:
        """Count one occurrence of the key with this 128-bit fingerprint."""
        door = self._door
        if door is not None:
            a = (fingerprint >> 7) & self._door_mask
            b = (fingerprint >> 73) & self._door_mask
            if not ((door[a >> 3] >> (a & 7)) & 1 and (door[b >> 3] >> (b & 7)) & 1):
                door[a >> 3] |= 1 << (a & 7)
                door[b >> 3] |= 1 << (b & 7)
                if self._interval is not None:
                    self._count_interval(fingerprint)
                self._tick()
                return
        if self._interval is not None:
            self._count_interval(fingerprint)
        table = self._table
        width = self._width
        mask = self._mask
        i0 = fingerprint & mask
        i1 = width + ((fingerprint >> 32) & mask)
        i2 = 2 * width + ((fingerprint >> 64) & mask)
        i3 = 3 * width + ((fingerprint >> 96) & mask)
        c0 = table[i0]
        c1 = table[i1]
        c2 = table[i2]
        c3 = table[i3]
        low = min(c0, c1, c2, c3)
        if low < self.max_count:
            high = low + 1
            if c0 == low:
                table[i0] = high
            if c1 == low:
                table[i1] = high
            if c2 == low:
                table[i2] = high
            if c3 == low:
                table[i3] = high
        self._tick()

    def _count_interval(self, fingerprint: int) -> None:
        interval = self._interval
        assert interval is not None
        seen = interval.get(fingerprint)
        if seen is not None:
            interval[fingerprint] = seen + 1
        elif len(interval) < self._interval_cap:
            interval[fingerprint] = 1

    def estimate(self, fingerprint: int) -> int:
        """Occurrences in the current window (never fewer than the truth, up to the cap)."""
        table = self._table
        width = self._width
        mask = self._mask
        count = min(
            table[fingerprint & mask],
            table[width + ((fingerprint >> 32) & mask)],
            table[2 * width + ((fingerprint >> 64) & mask)],
            table[3 * width + ((fingerprint >> 96) & mask)],
        )
        if self._door is not None and self._in_door(fingerprint):
            count += 1
        return count

    def _tick(self) -> None:
        self.additions += 1
        if self.additions >= self.sample_size:
            self.age()

    def age(self) -> None:
        """Halve every counter and clear the doorkeeper: the window moves on."""
        self._table = self._table.translate(_HALVE)
        if self._door is not None:
            self._door = bytearray(len(self._door))
        self.additions //= 2
        self.resets += 1

    # ---- the fleet's view ------------------------------------------------------------------

    @property
    def door_bits(self) -> int:
        return self._door_mask + 1 if self._door is not None else 0

    def snapshot(self) -> tuple[bytes, bytes]:
        """This router's own counters and doorkeeper bits, for the fleet."""
        return bytes(self._table), bytes(self._door) if self._door is not None else b""

    def set_remote(self, table: bytes | None, door_counts: bytes | None) -> None:
        """Install the other routers' summed counters (``4 * width`` bytes) and, per doorkeeper
        bit, how many of them have it set (``door_bits`` bytes); None forgets the fleet."""
        if table is not None and len(table) != len(self._table):
            raise ValueError(f"remote counters: {len(table)} bytes, expected {len(self._table)}")
        if door_counts is not None and len(door_counts) != self.door_bits:
            raise ValueError(f"remote doorkeeper: {len(door_counts)} counts, need {self.door_bits}")
        self._remote_table = table
        self._remote_door = door_counts if table is not None else None

    def remote_estimate(self, fingerprint: int) -> int:
        """The other routers' summed count alone (all-to-all view; up to 255 and more with the
        doorkeeper, not capped at ``max_count``; 0 without a fleet view)."""
        remote = self._remote_table
        if remote is None:
            return 0
        width, mask = self._width, self._mask
        count = min(
            remote[fingerprint & mask],
            remote[width + ((fingerprint >> 32) & mask)],
            remote[2 * width + ((fingerprint >> 64) & mask)],
            remote[3 * width + ((fingerprint >> 96) & mask)],
        )
        door = self._remote_door
        if door:
            count += min(
                door[(fingerprint >> 7) & self._door_mask],
                door[(fingerprint >> 73) & self._door_mask],
            )
        return count

    def fleet_counts(self) -> dict[int, int]:
        """The shared view's counts as installed (empty without one)."""
        return dict(self._fleet_counts or {})

    # ---- the shared hot-key view (router/fleet_hotkeys.py) ------------------------------------

    def track_interval(self, cap: int) -> None:
        """Count keys between pushes too (at most ``cap`` distinct keys per interval)."""
        self._interval = {}
        self._interval_cap = cap

    def take_interval(self) -> dict[int, int]:
        """The keys counted since the last call, and a fresh interval."""
        taken = self._interval or {}
        if self._interval is not None:
            self._interval = {}
        return taken

    def merge_interval(self, counts: dict[int, int]) -> None:
        """Counts taken but not delivered go back into the interval (within its cap)."""
        interval = self._interval
        if interval is None:
            return
        for fingerprint, count in counts.items():
            seen = interval.get(fingerprint)
            if seen is not None:
                interval[fingerprint] = seen + count
            elif len(interval) < self._interval_cap:
                interval[fingerprint] = count

    def set_fleet_counts(self, counts: dict[int, int] | None) -> None:
        """The fleet's decayed counts of its hottest keys, by the fingerprint's top 64 bits
        (this router's pushed counts included); None forgets them."""
        self._fleet_counts = counts

    def fleet_estimate(self, fingerprint: int) -> int:
        """This router's estimate plus the rest of the fleet's, capped at ``max_count``.

        With the shared hot-key view: the fleet's count (which holds this router's pushed
        counts) plus what this router counted since its last push, or the local estimate
        when that is higher or the key is not among the fleet's hottest."""
        local = self.estimate(fingerprint)
        counts = self._fleet_counts
        if counts is not None:
            fleet = counts.get(fingerprint >> 64)
            if fleet is None:
                return local
            interval = self._interval
            pending = interval.get(fingerprint, 0) if interval is not None else 0
            return min(self.max_count, max(local, fleet + pending))
        if self._remote_table is None:
            return local
        return min(self.max_count, local + self.remote_estimate(fingerprint))
