"""The dispatcher's decisions as plain code (router/decision.py), without a server: every
combination of facts, and the Cache-Control directives as clients write them."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.decision import (
    CacheFacts,
    CachePlan,
    ProducerFacts,
    cache_plan,
    producer_plan,
)


@pytest.mark.parametrize(
    "facts",
    [
        ProducerFacts(route, *flags)  # type: ignore[arg-type]
        for route in ("hot", "cold")
        for flags in itertools.product((False, True), repeat=4)
    ],
)
def test_a_request_reaches_the_edge_only_when_every_condition_holds(facts: ProducerFacts) -> None:
    plan = producer_plan(facts)
    all_hold = (
        facts.route == "hot"
        and facts.edge_configured
        and facts.edge_allowed
        and facts.edge_can_answer
        and facts.edge_has_room
    )
    if all_hold:
        assert (plan.first, plan.fallback) == ("edge", "cloud")
    else:
        assert (plan.first, plan.fallback) == ("cloud", None)


def test_the_reason_names_the_first_condition_that_failed() -> None:
    base = {
        "route": "hot",
        "edge_configured": True,
        "edge_allowed": True,
        "edge_can_answer": True,
        "edge_has_room": True,
    }
    expected = {
        "route": "cold",
        "edge_configured": "no_edge",
        "edge_allowed": "model_not_for_edge",
        "edge_can_answer": "request_not_for_edge",
        "edge_has_room": "edge_busy_or_down",
    }
    for field, reason in expected.items():
        facts = ProducerFacts(**{**base, field: "cold" if field == "route" else False})  # type: ignore[arg-type]
        assert producer_plan(facts).reason == reason
    assert producer_plan(ProducerFacts(**base)).reason == "edge"  # type: ignore[arg-type]


def test_a_cloud_only_model_is_never_planned_for_the_edge() -> None:
    for configured, can, room in itertools.product((False, True), repeat=3):
        plan = producer_plan(ProducerFacts("hot", configured, False, can, room))
        assert plan.first == "cloud" and plan.fallback is None


@pytest.mark.parametrize(
    ("deterministic", "header", "expected"),
    [
        (False, None, CachePlan(False, False, False)),
        (False, "no-cache", CachePlan(False, False, False)),
        (True, None, CachePlan(True, True, True)),
        (True, "no-cache", CachePlan(False, True, False)),
        (True, "no-store", CachePlan(False, False, False)),
        (True, "max-age=0, No-Cache", CachePlan(False, True, False)),
        (True, " no-store , no-cache", CachePlan(False, False, False)),
        (True, "private", CachePlan(True, True, True)),
    ],
)
def test_cache_control_as_clients_send_it(
    deterministic: bool, header: str | None, expected: CachePlan
) -> None:
    assert cache_plan(CacheFacts(deterministic, header)) == expected


@given(st.booleans(), st.none() | st.text(max_size=40))
def test_the_cache_plan_is_consistent(deterministic: bool, header: str | None) -> None:
    plan = cache_plan(CacheFacts(deterministic, header))
    assert not plan.read or plan.write  # a lookup is always followed by storing the answer
    assert plan.coalesce == plan.read  # only requests that could hit join a flight
    assert plan.label == ("miss" if plan.read else "bypass")
    if not deterministic:
        assert plan == CachePlan(False, False, False)


def test_a_stream_is_served_from_the_cache_only_when_its_stream_form_is_faithful() -> None:
    plan = CachePlan(True, True, True)
    assert plan.serves(True, stream=True) and plan.serves(True, stream=False)
    assert plan.serves(False, stream=False) and not plan.serves(False, stream=True)
    assert not plan.serves(None, stream=False)
