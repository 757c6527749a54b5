"""The shared hot-key view (router/fleet_hotkeys.py) over a real Redis, on a fake clock: pushes
from two routers add up, the view decays and stays within its capacity, a failed push keeps
its counts; the packing is checked property-wise."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from hotcold.redis_process import RedisProcess
from router.clock import FakeClock
from router.config import FleetConfig
from router.fleet_hotkeys import SharedHotKeys, pack_counts, top_counts, unpack_counts
from router.fleet_link import RedisLink
from router.keys import int_fingerprint
from router.sketch import FrequencySketch

Redis = Callable[..., RedisProcess]


@given(st.dictionaries(st.integers(0, 2**128 - 1), st.integers(1, 2**32 - 1), max_size=50))
def test_packed_counts_round_trip(counts: dict[int, int]) -> None:
    pushed = list(counts.items())
    unpacked = unpack_counts(pack_counts(pushed))
    expected: dict[int, int] = {}
    for fingerprint, count in pushed:
        expected[fingerprint >> 64] = count  # the last of two equal top halves wins
    assert unpacked == expected


@given(st.dictionaries(st.integers(0, 1000), st.integers(1, 50)), st.integers(1, 20))
def test_top_counts_are_the_most_counted(interval: dict[int, int], limit: int) -> None:
    top = top_counts(interval, limit)
    assert len(top) == min(limit, len(interval))
    if top and len(interval) > limit:
        assert min(count for _, count in top) >= max(
            count for key, count in interval.items() if (key, count) not in top
        )


def _router(redis: RedisProcess, clock: FakeClock, name: str, **extra: object) -> SharedHotKeys:
    config = FleetConfig(
        redis_url=redis.url,
        name="hot",
        router_id=name,
        hot_keys_decay_s=10,
        hot_keys_decay_factor=0.5,
        **extra,  # type: ignore[arg-type]
    )
    sketch = FrequencySketch(1024, 100_000)
    return SharedHotKeys(RedisLink(config, clock, lambda: ""), sketch, test_clock=clock)


async def test_two_routers_counts_add_up_decay_and_stay_bounded(redis_servers: Redis) -> None:
    redis = await redis_servers().started()
    clock = FakeClock(100.0)
    first = _router(redis, clock, "a", hot_keys_capacity=3, hot_keys_summary=3)
    second = _router(redis, clock, "b", hot_keys_capacity=3, hot_keys_summary=3)
    hot, warm, cool, cold = (int_fingerprint(key) for key in range(4))
    try:
        for _ in range(40):
            first.sketch.increment(hot)
        for _ in range(40):
            second.sketch.increment(hot)
        for _ in range(10):
            second.sketch.increment(warm)
        for _ in range(6):
            first.sketch.increment(cool)
        await first.exchange()
        await second.exchange()
        view = second.sketch.fleet_counts()
        assert view == {hot >> 64: 80, warm >> 64: 10, cool >> 64: 6}
        # The fleet's count is the router's estimate for a key it never counted itself,
        # once it has read the fleet's view (its next exchange).
        assert first.sketch.fleet_estimate(warm) == 0
        await first.exchange()
        assert first.sketch.fleet_estimate(warm) == 10
        # A fourth key: the capacity of 3 drops the coldest.
        for _ in range(8):
            first.sketch.increment(cold)
        await first.exchange()
        assert set(first.sketch.fleet_counts()) == {hot >> 64, warm >> 64, cold >> 64}
        # Ten seconds later every count is halved (once, by whoever pushes first).
        clock.advance(10.0)
        await second.exchange()
        await first.exchange()
        assert first.sketch.fleet_counts() == {hot >> 64: 40, warm >> 64: 5, cold >> 64: 4}
    finally:
        await first.link.close()
        await second.link.close()


async def test_a_failed_push_keeps_its_counts_for_the_next(redis_servers: Redis) -> None:
    redis = await redis_servers().started()
    clock = FakeClock(0.0)
    router = _router(redis, clock, "a", redis_timeout_s=0.5)
    key = int_fingerprint(7)
    try:
        for _ in range(5):
            router.sketch.increment(key)
        redis.kill()
        try:
            await router.exchange()
        except Exception:
            pass
        else:
            raise AssertionError("the push should have failed with Redis dead")
        redis.start()
        await redis.wait_ready()
        await router.exchange()
        assert router.sketch.fleet_counts() == {key >> 64: 5}
    finally:
        await router.link.close()
