"""The edge earns its traffic, as plain code: agreement scoring, the release stages, the
latency model and budget (router/agreement.py, gray_release.py, latency_model.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.agreement import SCORERS, answer_text, exact, json_or_exact, json_or_f1, token_f1
from router.gray_release import SHADOW, GrayRelease, ReleaseParams, ReleaseState
from router.latency_model import LatencyBudget, LatencyFit

PARAMS = ReleaseParams(
    shares=(0.05, 0.25, 1.0), min_samples=10, min_rollback_samples=5, window=50, margin=0.05
)


def test_agreement_measures_suit_short_answers() -> None:
    assert exact("The capital of France is Paris.", "the capital of france is paris") == 1.0
    assert token_f1("Paris is the capital", "The capital is Paris") == 1.0
    assert token_f1("temperature 21 C", "temperature 22 C") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("yes", "") == 0.0
    assert json_or_f1('{"on": true, "level": 3}', '```json\n{"level": 3, "on": true}\n```') == 1.0
    assert json_or_f1('{"on": true}', '{"on": false}') == 0.0
    assert json_or_f1('{"on": true}', "on: true") == 0.0  # structured against prose
    assert json_or_exact("yes", "Yes.") == 1.0 and set(SCORERS) == {"f1", "json", "exact"}


@given(st.text(max_size=40), st.text(max_size=40))
def test_scores_are_bounded_and_symmetric(a: str, b: str) -> None:
    for scorer in SCORERS.values():
        score = scorer(a, b)
        assert 0.0 <= score <= 1.0
        assert score == pytest.approx(scorer(b, a))
    assert json_or_f1(a, a) == 1.0


def test_answer_text_reads_chat_and_completion_answers() -> None:
    assert answer_text({"choices": [{"message": {"content": "hi"}}]}) == "hi"
    assert answer_text({"choices": [{"text": "hi"}]}) == "hi"
    assert answer_text({"choices": []}) == "" and answer_text({}) == ""


def _agreeing(state: ReleaseState, count: int, score: float = 1.0, now: float = 0.0) -> None:
    for _ in range(count):
        state.record_agreement(score, now)


def test_an_agreeing_edge_advances_stage_by_stage_to_all_hot_misses() -> None:
    state = ReleaseState(PARAMS)
    assert state.stage == SHADOW and state.share == 0.0
    shares = []
    for _ in range(3):
        _agreeing(state, PARAMS.min_samples)
        shares.append(state.share)
    assert shares == [0.05, 0.25, 1.0]
    _agreeing(state, PARAMS.min_samples)
    assert state.share == 1.0  # the last stage stays


def test_too_few_samples_never_advance() -> None:
    state = ReleaseState(PARAMS)
    _agreeing(state, PARAMS.min_samples - 1)
    assert state.stage == SHADOW


def test_an_edge_that_starts_to_disagree_rolls_back_to_shadow_at_once() -> None:
    state = ReleaseState(PARAMS)
    for _ in range(3):
        _agreeing(state, PARAMS.min_samples)
    assert state.share == 1.0
    moves = [state.record_agreement(0.0, 1.0) for _ in range(PARAMS.min_rollback_samples)]
    assert moves[-1] is not None and moves[-1].stage == SHADOW
    assert state.share == 0.0 and "agreement" in state.last_move.reason
    assert all(move is None for move in moves[:-1])  # judged only on enough samples


def test_failures_and_slowness_roll_back_too() -> None:
    failing = ReleaseState(PARAMS, stage=2)
    for _ in range(PARAMS.min_rollback_samples):
        failing.record_edge(False, None, 0.0)
    assert failing.stage == SHADOW and "error rate" in failing.last_move.reason
    slow = ReleaseState(PARAMS, stage=2)
    for _ in range(PARAMS.min_rollback_samples):
        slow.record_cloud(0.1)
        slow.record_edge(True, 10.0, 0.0)
    assert slow.stage == SHADOW and "latency" in slow.last_move.reason


def test_within_the_margin_nothing_rolls_back() -> None:
    state = ReleaseState(PARAMS, stage=2)
    _agreeing(state, 30, score=PARAMS.min_agreement * (1 - PARAMS.margin / 2))
    assert state.stage == 2


def test_a_pinned_stage_holds_whatever_the_evidence() -> None:
    release = GrayRelease(PARAMS, pinned={"chat": 3})
    state = release.state("chat")
    assert state.share == 1.0
    _agreeing(state, 20, score=0.0)
    assert state.share == 1.0 and release.snapshot()["chat"]["pinned"] is True


@given(st.floats(0, 1, exclude_max=True), st.integers(1, 3))
def test_keys_on_the_edge_stay_on_the_edge_as_the_share_grows(fraction: float, stage: int) -> None:
    lower, higher = ReleaseState(PARAMS, stage=stage), ReleaseState(PARAMS, stage=3)
    if lower.edge_answers(fraction):
        assert higher.edge_answers(fraction)


def test_the_latency_fit_separates_the_first_token_from_the_time_per_token() -> None:
    fit = LatencyFit()
    for tokens in (8, 16, 32, 64) * 10:
        fit.observe(tokens, 0.2 + 0.05 * tokens)
    intercept, slope = fit.coefficients() or (0, 0)
    assert intercept == pytest.approx(0.2, abs=1e-6) and slope == pytest.approx(0.05)
    assert fit.predict(100) == pytest.approx(5.2)
    same = LatencyFit()
    for _ in range(5):
        same.observe(10, 1.0)
    assert same.predict(20) == pytest.approx(2.0)  # no spread: time per token
    assert LatencyFit().predict(10) is None


def test_the_fit_follows_a_producer_that_becomes_fast() -> None:
    fit = LatencyFit()
    for _ in range(200):
        fit.observe(32, 4.0)
    for _ in range(300):
        fit.observe(32, 0.2)
    assert (fit.predict(32) or 0) < 0.3


def test_the_budget_keeps_a_slow_edge_out_unless_cost_comes_first() -> None:
    budget = LatencyBudget(factor=2.0, ceiling_s=3.0)
    assert budget.allows_edge(1.0, 0.6)[0]
    assert not budget.allows_edge(1.5, 0.6)[0]
    assert not budget.allows_edge(3.5, 10.0)[0]  # over the absolute ceiling
    assert budget.allows_edge(None, 0.6)[0]  # not measured yet: let it be measured
    assert LatencyBudget(cost_first=True).allows_edge(100.0, 0.1) == (True, "cost first")


def test_a_new_edge_model_is_a_new_candidate_back_in_shadow() -> None:
    from router.config import EdgeConfig
    from router.edge_release import EdgeRelease

    release = EdgeRelease(EdgeConfig(release={"min_samples": 2, "shares": (0.5, 1.0)}))
    release.observe_edge_model("SmolLM2-135M-Instruct", 0.0)
    for _ in range(4):
        release.compare("chat", "paris", "paris", 1.0)
    assert release.state("chat").share == 1.0
    release.observe_edge_model("SmolLM2-135M-Instruct", 2.0)  # the same model: nothing moves
    assert release.state("chat").share == 1.0
    release.observe_edge_model("SmolLM2-360M-Instruct", 3.0)
    state = release.state("chat")
    assert state.share == 0.0 and "new edge model" in state.last_move.reason
    assert release.pending_moves[-1][:2] == ("chat", 0)  # the fleet hears of it too
