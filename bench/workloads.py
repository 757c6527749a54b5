"""Key sequences for the policy benchmark: synthetic Zipf, shifting and scan workloads, and
the real traces in ../shared/traces (read in place, never copied into the project)."""

from __future__ import annotations

import lzma
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED = 20240601
SYNTHETIC_KEYS = 100_000
SYNTHETIC_REQUESTS = 1_000_000


@dataclass(frozen=True)
class Workload:
    name: str
    keys: np.ndarray  # int64 key ids, oldest first
    shift_points: tuple[int, ...] = ()  # request indexes where popularity changed

    @property
    def distinct(self) -> int:
        return int(np.unique(self.keys).size)


def zipf_keys(alpha: float, n_keys: int, n_requests: int, rng: np.random.Generator) -> np.ndarray:
    ranks = np.arange(1, n_keys + 1, dtype=np.float64)
    weights = ranks**-alpha
    weights /= weights.sum()
    return rng.choice(n_keys, size=n_requests, p=weights).astype(np.int64)


def zipf(alpha: float, requests: int = SYNTHETIC_REQUESTS, keys: int = SYNTHETIC_KEYS) -> Workload:
    rng = np.random.default_rng(SEED)
    return Workload(f"zipf-{alpha}", zipf_keys(alpha, keys, requests, rng))


def shifting(
    requests: int = SYNTHETIC_REQUESTS, keys: int = SYNTHETIC_KEYS, every: int = 200_000
) -> Workload:
    """Zipf 1.0 whose popularity ranking is reshuffled every ``every`` requests."""
    rng = np.random.default_rng(SEED)
    ranks = zipf_keys(1.0, keys, requests, rng)
    out = np.empty_like(ranks)
    shifts = []
    for start in range(0, requests, every):
        permutation = rng.permutation(keys)
        out[start : start + every] = permutation[ranks[start : start + every]]
        if start:
            shifts.append(start)
    return Workload("zipf-1.0-shifting", out, tuple(shifts))


def scan_polluted(requests: int = SYNTHETIC_REQUESTS, keys: int = SYNTHETIC_KEYS) -> Workload:
    """Half the requests are one-hit wonders (a sequential scan of fresh keys)."""
    rng = np.random.default_rng(SEED)
    hot = zipf_keys(1.0, keys, requests, rng)
    is_scan = rng.random(requests) < 0.5
    fresh = keys + np.arange(requests, dtype=np.int64)
    return Workload("scan-50%", np.where(is_scan, fresh, hot))


def trace(path: Path, dtype: str, name: str, limit: int | None = None) -> Workload:
    with lzma.open(path) as handle:
        raw = handle.read()
    keys = np.frombuffer(raw, dtype=dtype).astype(np.int64)
    return Workload(name, keys[:limit] if limit else keys)


def traces_dir() -> Path:
    configured = os.environ.get("HOTCOLD_TRACES")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "traces"


REAL_TRACES = {
    "web12": ("web12.trace.xz", ">i4"),
    "scarab-recs": ("scarab-recs.trace.xz", ">i8"),
    "orm-night": ("orm-night.trace.xz", ">i4"),
}


SYNTHETIC = ("zipf-0.8", "zipf-1.0", "zipf-1.2", "zipf-1.0-shifting", "scan-50%")


@dataclass(frozen=True)
class WorkloadSpec:
    """A workload by name: cheap to pass to worker processes, built where it is used."""

    name: str
    directory: Path
    synthetic_requests: int

    def load(self) -> Workload:
        requests = self.synthetic_requests
        if self.name.startswith("zipf-") and not self.name.endswith("shifting"):
            return zipf(float(self.name.split("-")[1]), requests)
        if self.name == "zipf-1.0-shifting":
            return shifting(requests, every=max(1, requests // 5))
        if self.name == "scan-50%":
            return scan_polluted(requests)
        file, dtype = REAL_TRACES[self.name]
        return trace(self.directory / file, dtype, self.name)


def all_workloads(
    directory: Path, synthetic_requests: int, include: set[str] | None
) -> list[WorkloadSpec]:
    names = list(SYNTHETIC) + [
        name for name, (file, _) in REAL_TRACES.items() if (directory / file).exists()
    ]
    return [
        WorkloadSpec(name, directory, synthetic_requests)
        for name in names
        if include is None or name in include
    ]
