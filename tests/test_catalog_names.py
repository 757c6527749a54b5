"""The catalog remembers the names it resolved (router.catalog.Catalog.find), boundedly, and
remembering changes no answer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router.catalog import REMEMBERED_NAMES, Catalog, CatalogModel


def catalog() -> Catalog:
    def model(name: str, aliases: tuple[str, ...]) -> CatalogModel:
        return CatalogModel(name, "cloud", None, False, None, frozenset({"chat"}), aliases)

    return Catalog((model("llama", ("llama-*", "meta")), model("qwen", ("qwen?",))))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["llama", "llama-3", "meta", "qwen2", "qwen", "x", "qwen22"])))
def test_a_remembered_name_resolves_as_it_did(names: list[str]) -> None:
    remembering, fresh = catalog(), catalog()
    for name in names:
        assert remembering.find(name) == fresh.find(name)
        fresh = catalog()  # a new catalog remembers nothing yet


def test_the_names_remembered_are_bounded() -> None:
    models = catalog()
    for index in range(REMEMBERED_NAMES + 50):
        resolved = models.find(f"llama-{index}")
        assert resolved is not None and resolved.public == f"llama-{index}"
    assert len(models._found) == REMEMBERED_NAMES
    assert models.find("nothing") is None
    assert "nothing" not in models._found
