"""Continuous batching, driven step by step: requests join the running batch at the next step
and leave it as soon as they are done, without changing anyone's answer; out of memory sheds
rows back to the queue instead of failing them; a shared prompt prefix is computed once.

The engine runs on the tiny test model in fp32 (batched and one-at-a-time fp32 agree exactly,
so answers can be compared token for token with ``model.generate`` alone). No clocks: each
test calls ``step()`` itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")

from edge_node.engine import BatchEngine  # noqa: E402
from edge_node.generation import Generation  # noqa: E402
from edge_node.metrics import EdgeMetrics  # noqa: E402
from edge_node.model import LoadedModel, load  # noqa: E402
from edge_node.prefix_cache import PrefixCache  # noqa: E402
from tests.edge_fixtures import build_tiny_model  # noqa: E402
from tests.support import metric  # noqa: E402

SYSTEM = (
    "system : the sensor status is ok . the door is closed . the battery is low . "
    "the temperature is high . "
)
QUESTIONS = [
    "user : hello world sensor status",
    "user : what is the capital of france ?",
    "user : door open",
    "user : battery low alert the reading is high",
]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-fp32"))
    return load(
        folder, device="cpu", quantize=False, compute_dtype="float32", max_batch=8, max_context=256
    )


def ids(model: LoadedModel, text: str) -> list[int]:
    return list(model.tokenizer(text)["input_ids"])


def alone(model: LoadedModel, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens of ``prompt`` computed by itself (no EOS: always ``n`` tokens)."""
    out = model.model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
    )
    return list(out[0, len(prompt) :].tolist())


def engine(model: LoadedModel, **kwargs: object) -> BatchEngine:
    return BatchEngine(model.model, set(), 8, **kwargs)  # type: ignore[arg-type]


async def tokens(generation: Generation) -> list[int]:
    """Tokens pushed so far (the pushes are callbacks on this loop)."""
    await asyncio.sleep(0)
    got: list[int] = []
    while not generation.tokens.empty():
        token = generation.tokens.get_nowait()
        if token is not None:
            got.append(token)
    return got


def run_all(machine: BatchEngine) -> Iterator[int]:
    while not machine.idle():
        yield len(machine.step().finished)


async def test_a_request_joins_at_the_next_step_and_a_short_one_leaves_first(
    fp32: LoadedModel,
) -> None:
    machine = engine(fp32)
    long = Generation(ids(fp32, QUESTIONS[0]), 12)
    machine.enqueue(long)
    machine.step()
    machine.step()
    assert machine.rows and long.generated == 3  # prefill token + 2 decode steps
    short = Generation(ids(fp32, QUESTIONS[1]), 3)
    machine.enqueue(short)
    report = machine.step()
    assert report.joined == 1 and len(machine.rows) == 2  # joined the running batch
    assert short.generated == 2 and long.generated == 4
    report = machine.step()
    assert short.finished and report.left == 1  # done: left at once
    assert [row.generation for row in machine.rows] == [long] and not long.finished
    list(run_all(machine))
    assert long.generated == 12
    assert await tokens(long) == alone(fp32, long.prompt_ids, 12)
    assert await tokens(short) == alone(fp32, short.prompt_ids, 3)


async def test_a_row_stopped_or_abandoned_mid_batch_leaves_the_others_untouched(
    fp32: LoadedModel,
) -> None:
    machine = engine(fp32)
    rows = [Generation(ids(fp32, q), 10) for q in QUESTIONS[:3]]
    for generation in rows:
        machine.enqueue(generation)
    machine.step()
    rows[0].cancelled = True  # its client went away
    rows[1].finished = True  # the handler saw a stop string
    report = machine.step()
    assert report.left == 2 and [row.generation for row in machine.rows] == [rows[2]]
    assert rows[0].generated == 2 and rows[1].generated == 2
    list(run_all(machine))
    assert await tokens(rows[2]) == alone(fp32, rows[2].prompt_ids, 10)


async def test_a_waiting_request_cancelled_before_it_starts_never_computes(
    fp32: LoadedModel,
) -> None:
    machine = engine(fp32)
    gone = Generation(ids(fp32, QUESTIONS[0]), 5)
    gone.cancelled = True
    machine.enqueue(gone)
    report = machine.step()
    assert report.joined == 0 and gone.generated == 0 and machine.idle()


async def test_a_seed_gives_the_same_sample_whoever_shares_the_batch(fp32: LoadedModel) -> None:
    def seeded() -> Generation:
        return Generation(ids(fp32, QUESTIONS[2]), 8, temperature=1.3, top_p=0.9, seed=7)

    machine = engine(fp32)
    first = seeded()
    machine.enqueue(first)
    list(run_all(machine))
    crowded = engine(fp32)
    second = seeded()
    for question in QUESTIONS:
        crowded.enqueue(Generation(ids(fp32, question), 8, temperature=0.8))
    crowded.step()
    crowded.enqueue(second)  # joins mid-batch, next to other sampled rows
    list(run_all(crowded))
    assert await tokens(first) == await tokens(second)


async def test_out_of_memory_sheds_rows_back_to_the_queue_and_every_answer_completes(
    fp32: LoadedModel,
) -> None:
    """Memory capped by a guard: a forward pass over more than ``budget`` cache cells (rows x
    columns) runs out. The batch halves, shed rows are prefilled again with the tokens they
    already sent, and every answer equals the unconstrained one."""
    prompts = [ids(fp32, SYSTEM + q) for q in QUESTIONS]
    widest = max(len(p) for p in prompts) + 12
    budget = 2 * widest  # two rows fit, four do not

    def guard(rows: int, width: int) -> None:
        if rows * width > budget:
            raise torch.OutOfMemoryError(f"{rows} x {width} cells over {budget}")

    metrics = EdgeMetrics()
    machine = engine(fp32, guard=guard, metrics=metrics)
    generations = [Generation(p, 12) for p in prompts]
    for generation in generations:
        machine.enqueue(generation)
    shed = 0
    while not machine.idle():
        shed += machine.step().shed
    assert shed > 0 and metric_value(metrics, "hotcold_edge_oom_splits_total") > 0
    assert all(g.generated == 12 for g in generations)
    for generation in generations:
        assert await tokens(generation) == alone(fp32, generation.prompt_ids, 12)


async def test_a_prompt_that_does_not_fit_alone_fails_only_itself(fp32: LoadedModel) -> None:
    def guard(rows: int, width: int) -> None:
        if width > 40:
            raise torch.OutOfMemoryError("too long")

    machine = engine(fp32, guard=guard)
    huge = Generation(ids(fp32, "hello " * 50), 4)
    small = Generation(ids(fp32, QUESTIONS[2]), 4)
    machine.enqueue(huge)
    machine.enqueue(small)
    list(run_all(machine))
    assert huge.finished and huge.generated == 0
    assert await tokens(small) == alone(fp32, small.prompt_ids, 4)


async def test_prefix_reuse_gives_identical_answers_and_computes_only_the_rest(
    fp32: LoadedModel,
) -> None:
    prompts = [ids(fp32, SYSTEM + q) for q in QUESTIONS]
    shared = min(
        next(i for i, (a, b) in enumerate(zip(p, prompts[0], strict=False)) if a != b)
        for p in prompts[1:4]
    )
    answers: dict[bool, list[list[int]]] = {}
    computed: dict[bool, int] = {}
    for reuse in (False, True):
        metrics = EdgeMetrics()
        cache = PrefixCache(4096 if reuse else 0, min_tokens=8)
        machine = engine(fp32, prefix_cache=cache, metrics=metrics)
        generations = [Generation(p, 6) for p in prompts]
        machine.enqueue(generations[0])  # the first computes the prefix; the rest reuse it
        machine.step()
        for generation in generations[1:]:
            machine.enqueue(generation)
        list(run_all(machine))
        answers[reuse] = [await tokens(g) for g in generations]
        computed[reuse] = int(metric_value(metrics, "hotcold_edge_prefill_tokens_total"))
        if reuse:
            hits = metric_value(metrics, "hotcold_edge_prefix_hits_total")
            saved = metric_value(metrics, "hotcold_edge_prefix_saved_tokens_total")
            assert hits == len(prompts) - 1
            assert saved == shared * (len(prompts) - 1)
    assert answers[True] == answers[False]
    assert computed[False] == sum(len(p) for p in prompts)
    assert computed[True] == computed[False] - shared * (len(prompts) - 1)


def metric_value(metrics: EdgeMetrics, name: str) -> float:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(metrics.registry).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return metric(samples, name)


async def test_newcomers_are_gathered_for_one_prefill_but_never_held_long(
    fp32: LoadedModel,
) -> None:
    from edge_node.engine import ADMIT_AFTER_STEPS

    machine = engine(fp32)
    running = [Generation(ids(fp32, q), 40) for q in QUESTIONS]
    for generation in running:
        machine.enqueue(generation)
    machine.step()
    late = Generation(ids(fp32, QUESTIONS[0]), 4)
    machine.enqueue(late)  # one newcomer next to four rows: below the ratio
    held = 0
    while late.started_at is None:
        machine.step()
        held += 1
    assert held == ADMIT_AFTER_STEPS + 1
    second = [Generation(ids(fp32, q), 4) for q in QUESTIONS[:3]]
    for generation in second:  # three newcomers next to five rows: enough to join at once
        machine.enqueue(generation)
    assert machine.step().joined == 3
    list(run_all(machine))
    assert await tokens(late) == alone(fp32, late.prompt_ids, 4)


async def test_an_fp8_kv_cache_takes_a_byte_per_element_through_joins_leaves_and_reuse(
    fp32: LoadedModel,
) -> None:
    from edge_node.kv_fp8 import FP8, Fp8RowLayer, cache_bytes

    held: dict[str, int] = {}
    answers: dict[str, list[list[int]]] = {}
    for kind in ("model", "fp8"):
        machine = engine(fp32, kv_cache=kind, prefix_cache=PrefixCache(4096, min_tokens=8))
        generations = [
            Generation(ids(fp32, SYSTEM + q), 4 + 2 * i) for i, q in enumerate(QUESTIONS)
        ]
        machine.enqueue(generations[0])
        machine.step()
        for generation in generations[1:]:  # join mid-batch, reusing the first one's prefix
            machine.enqueue(generation)
        machine.step()
        layers = list(machine._cache.layers) if machine._cache is not None else []
        held[kind] = cache_bytes(layers) // (len(machine.rows) * machine.width)
        if kind == "fp8":
            assert all(isinstance(layer, Fp8RowLayer) for layer in layers)
            assert all(layer.keys.dtype == FP8 for layer in layers)
        list(run_all(machine))  # rows leave one by one (different lengths)
        assert all(g.generated == g.max_new_tokens for g in generations)
        answers[kind] = [await tokens(g) for g in generations]
    # fp32 model: 4 bytes an element against 1 (plus a scale per row and head per layer)
    assert held["fp8"] * 3 < held["model"]
    agreeing = sum(a == b for a, b in zip(answers["fp8"], answers["model"], strict=True))
    assert agreeing >= 3  # the same greedy answers but for a near tie; real model: benchmarks
