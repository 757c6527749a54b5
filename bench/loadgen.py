"""A closed-loop HTTP load generator: N workers, each sending its next request when the last
one is answered. Bodies are encoded before timing starts so the RNG and encoding are not
timed. Each answer is recorded with its status, latency and route headers, so the demo and
the benchmarks can break results down by route.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True, slots=True)
class Sample:
    latency_s: float
    status: int
    route: str
    served_by: str
    cache: str


@dataclass(frozen=True, slots=True)
class Job:
    """One request to send: a path under the base URL, an encoded body, extra headers."""

    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    transport_errors: int = 0
    wall_s: float = 0.0

    @property
    def latencies_s(self) -> list[float]:
        return [sample.latency_s for sample in self.samples]

    @property
    def answered(self) -> int:
        return len(self.samples)

    @property
    def ok(self) -> int:
        return sum(1 for sample in self.samples if sample.status == 200)

    @property
    def failed(self) -> int:
        return self.answered - self.ok + self.transport_errors

    @property
    def throughput(self) -> float:
        return self.answered / self.wall_s if self.wall_s else 0.0

    def count_by(self, attribute: str) -> Counter[str]:
        return Counter(str(getattr(sample, attribute)) for sample in self.samples)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def run_load(
    base_url: str,
    jobs: Sequence[Job],
    concurrency: int,
    *,
    on_answer: Callable[[Sample], None] | None = None,
    timeout_s: float = 120.0,
) -> LoadResult:
    """Send every job once, ``concurrency`` at a time."""
    result = LoadResult()
    next_index = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(jobs):
                job = jobs[next_index]
                next_index += 1
                headers = {"Content-Type": "application/json", **dict(job.headers)}
                started = time.perf_counter()
                try:
                    async with session.post(
                        base_url + job.path, data=job.body, headers=headers
                    ) as response:
                        await response.read()
                        sample = Sample(
                            time.perf_counter() - started,
                            response.status,
                            response.headers.get("X-Route", "-"),
                            response.headers.get("X-Served-By", "-"),
                            response.headers.get("X-Cache", "-"),
                        )
                except (aiohttp.ClientError, TimeoutError):
                    result.transport_errors += 1
                    continue
                result.samples.append(sample)
                if on_answer is not None:
                    on_answer(sample)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - began
    return result
