"""The prefix cache as a data structure (hypothesis): whatever prompts come, it holds at most
its token bound, a hit is a true prefix of the prompt whose KV is that prefix's KV, and at
least the prompt's last token is always left to compute."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from edge_node.prefix_cache import LayerKV, PrefixCache, common_prefix  # noqa: E402

LAYERS = 2


def fake_kv(prompt: list[int]) -> LayerKV:
    """KV whose column i encodes token i (so a slice can be checked against its prompt)."""
    column = torch.tensor(prompt, dtype=torch.float32).reshape(1, 1, -1, 1)
    return [(column.clone(), -column.clone()) for _ in range(LAYERS)]


prompts = st.lists(
    st.lists(st.integers(0, 3), min_size=1, max_size=30), min_size=1, max_size=40
)  # a 4-token vocabulary makes shared prefixes common


@settings(max_examples=150, deadline=None)
@given(prompts, st.integers(0, 80), st.integers(1, 6))
def test_bounded_and_every_hit_is_the_prompts_own_prefix(
    seen: list[list[int]], bound: int, min_tokens: int
) -> None:
    cache = PrefixCache(bound, min_tokens)
    for prompt in seen:
        hit = cache.lookup(prompt)
        if hit is None:
            cache.offer(prompt, fake_kv(prompt))
        else:
            assert min_tokens <= hit.tokens <= len(prompt) - 1
            for keys, values in hit.kv:
                assert keys.shape[2] == hit.tokens
                assert keys.reshape(-1).tolist() == [float(t) for t in prompt[: hit.tokens]]
                assert torch.equal(values, -keys)
        assert cache.tokens <= bound
        assert cache.tokens == sum(len(key) for key in cache._entries)


def test_a_shared_part_becomes_its_own_entry_and_later_prompts_match_it_whole() -> None:
    cache = PrefixCache(100, min_tokens=3)
    system = [9, 9, 9, 9, 9]
    first, second, third = [*system, 1, 2], [*system, 3, 4], [*system, 5, 6, 7]
    assert cache.lookup(first) is None
    cache.offer(first, fake_kv(first))
    hit = cache.lookup(second)
    assert hit is not None and hit.tokens == len(system)
    assert tuple(system) in cache._entries
    entries = len(cache)
    hit = cache.lookup(third)
    assert hit is not None and hit.tokens == len(system) and len(cache) == entries


def test_least_recently_used_goes_first_and_zero_turns_it_off() -> None:
    cache = PrefixCache(10, min_tokens=2)
    a, b, c = [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]
    for prompt in (a, b):
        cache.offer(prompt, fake_kv(prompt))
    assert cache.lookup([*a, 0]) is not None  # a is now the most recently used
    cache.offer(c, fake_kv(c))  # 12 tokens > 10: b goes
    assert cache.lookup([*b, 0]) is None and cache.lookup([*a, 0]) is not None
    off = PrefixCache(0)
    off.offer(a, fake_kv(a))
    assert len(off) == 0 and off.lookup([*a, 0]) is None
    assert common_prefix((1, 2, 3), [1, 2, 4]) == 2
