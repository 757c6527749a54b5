"""libCacheSim's policies and Belady's optimum on the same key sequence.

Traces are written as oracleGeneral binaries (``<u4 t, <u8 id, <u4 size, <i8 next_access``):
Belady silently returns wrong numbers unless every request carries its next access, which
is computed here with a stable sort.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import libcachesim as lcs
import numpy as np

ORACLE_DTYPE = np.dtype([("t", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])

REFERENCE_POLICIES: dict[str, Callable[[int], object]] = {
    "LRU": lcs.LRU,
    "ARC": lcs.ARC,
    "S3-FIFO": lcs.S3FIFO,
    "SIEVE": lcs.Sieve,
    "LIRS": lcs.LIRS,
    "TwoQ": lcs.TwoQ,
    "W-TinyLFU(lcs)": lcs.WTinyLFU,
}


def next_access(keys: np.ndarray) -> np.ndarray:
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    nxt = np.full(keys.size, -1, dtype=np.int64)
    same = sorted_keys[1:] == sorted_keys[:-1]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def write_oracle_trace(keys: np.ndarray, path: Path) -> None:
    records = np.zeros(keys.size, dtype=ORACLE_DTYPE)
    records["t"] = np.arange(keys.size, dtype=np.uint32)
    records["id"] = keys.astype(np.uint64)
    records["size"] = 1
    records["next"] = next_access(keys)
    records.tofile(path)


class OracleTrace:
    """An oracleGeneral file for one key sequence, removed when closed."""

    def __init__(self, keys: np.ndarray) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="hotcold-bench-")
        self.path = Path(self._dir.name) / "trace.oracleGeneral"
        write_oracle_trace(keys, self.path)

    def hit_ratio(self, policy: Callable[[int], object], capacity: int) -> float:
        reader = lcs.TraceReader(str(self.path), lcs.TraceType.ORACLE_GENERAL_TRACE)
        cache = policy(capacity)
        miss_ratio = cache.process_trace(reader)[0]  # type: ignore[attr-defined]
        return 1.0 - float(miss_ratio)

    def close(self) -> None:
        self._dir.cleanup()


def per_request_hits(
    policy: Callable[[int], object], capacity: int, keys: np.ndarray
) -> np.ndarray:
    """Hit (1) or miss (0) for every request, for recovery measurements."""
    cache = policy(capacity)
    request = lcs.Request()
    request.obj_size = 1
    hits = np.zeros(keys.size, dtype=np.int8)
    get = cache.get  # type: ignore[attr-defined]
    for index, key in enumerate(keys.tolist()):
        request.obj_id = key
        hits[index] = get(request)
    return hits
