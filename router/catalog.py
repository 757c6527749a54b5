"""The model catalog: which model names the router answers, who computes them, and how.

A client names a *public* model (``"model": "chat-large"``). The catalog maps it to:

- a cloud pool (its endpoints, balancing, breakers and credentials: router/pools.py), and the
  upstream's own name for it (``upstream_model``: what the pool's servers are asked for);
- whether the edge node may answer it, and as which edge model. A model the catalog does not
  map to the edge is never answered by the edge node, however hot: its hot misses go to its
  cloud pool and only the response cache serves it at the edge, since a cached answer *is*
  the cloud's answer;
- the APIs it serves (chat, completion, embeddings).

Names: each model has one catalog name (listed by ``/v1/models``, the ``model`` label of the
metrics, and the ``model`` field of every answer), any number of aliases, and the catalog may
name a default for requests that leave ``model`` out. Aliases resolve to the catalog name, as
OpenAI resolves ``gpt-4o`` to a dated snapshot, so a model's answers share cache entries
whatever name they were asked by. An alias may be a glob pattern (``"*"``, ``"llama-*"``):
then the answer and the cache key keep the name the client sent (a pattern stands for many
upstream models), while metrics use the catalog name, so their label set stays bounded.

An empty catalog is the router's configuration before it had one: the ``cloud`` section (or
``--cloud-endpoint``) is one model, ``default``, that answers any name (alias ``"*"``) and
forwards it unchanged, edge-eligible when an edge node is configured.

Pure: no I/O. The dispatcher resolves a request's model here before anything else.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from hotcold.wire import BadRequest, ModelNotFound
from hotcold.wire.schema import PATHS as _API_PATHS
from router.config import ModelConfig, RouterConfig

ALL_APIS = tuple(_API_PATHS)


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """One public model and how it is served."""

    name: str
    pool: str
    upstream_model: str | None  # None: forward the public name
    edge_allowed: bool
    edge_model: str | None  # None: ask the edge node for the public name
    apis: frozenset[str]
    aliases: tuple[str, ...] = ()
    owned_by: str = "hotcold"

    @classmethod
    def of(cls, entry: ModelConfig) -> CatalogModel:
        return cls(
            name=entry.name,
            pool=entry.pool,
            upstream_model=entry.upstream_model,
            edge_allowed=entry.edge is not None,
            edge_model=entry.edge.model if entry.edge is not None else None,
            apis=frozenset(entry.apis),
            aliases=entry.aliases,
            owned_by=entry.owned_by,
        )

    def describe(self) -> dict[str, Any]:
        """The OpenAI model object, with what a client may want to know about routing (never
        the pool's endpoints or the upstream's own name: those are the operator's)."""
        return {
            "id": self.name,
            "object": "model",
            "created": 0,
            "owned_by": self.owned_by,
            "aliases": list(self.aliases),
            "apis": sorted(self.apis),
            "edge_eligible": self.edge_allowed,
        }


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A request's model: the catalog entry, and the public name its answer carries."""

    entry: CatalogModel
    public: str

    @property
    def upstream_name(self) -> str:
        return self.entry.upstream_model or self.public

    @property
    def edge_name(self) -> str:
        return self.entry.edge_model or self.public

    @property
    def producers(self) -> str:
        """Who computes this model's answers: part of the cache key."""
        edge = self.edge_name if self.entry.edge_allowed else ""
        return f"{self.entry.pool}\x1f{self.upstream_name}\x1f{edge}"


REMEMBERED_NAMES = 1024  # model names a catalog remembers it resolved (Catalog.find)


def not_found(name: str) -> ModelNotFound:
    """OpenAI's answer for a model it does not know."""
    return ModelNotFound(
        f"The model '{name}' does not exist or you do not have access to it.", param="model"
    )


class Catalog:
    def __init__(self, models: tuple[CatalogModel, ...], default: str | None = None) -> None:
        self.models = models
        self.default = default
        self._exact: dict[str, CatalogModel] = {}
        self._patterns: list[tuple[str, CatalogModel]] = []
        self._found: dict[str, ResolvedModel] = {}  # see find()
        for model in models:
            self._exact[model.name] = model
            for alias in model.aliases:
                if any(char in alias for char in "*?["):
                    self._patterns.append((alias, model))
                else:
                    self._exact[alias] = model

    @classmethod
    def from_config(cls, config: RouterConfig) -> Catalog:
        if not config.models.catalog:
            implicit = CatalogModel(
                name="default",
                pool="cloud",
                upstream_model=None,
                edge_allowed=bool(config.edge.endpoints),
                edge_model=None,
                apis=frozenset(ALL_APIS),
                aliases=("*",),
                owned_by="hotcold",
            )
            return cls((implicit,), "default")
        models = tuple(CatalogModel.of(entry) for entry in config.models.catalog)
        return cls(models, config.models.default)

    @property
    def pools(self) -> frozenset[str]:
        return frozenset(model.pool for model in self.models)

    def find(self, name: str) -> ResolvedModel | None:
        """The model a name resolves to. Names found are remembered (a catalog is never
        changed, a reload builds a new one), at most :data:`REMEMBERED_NAMES` of them: with
        a pattern alias clients can send any number of names."""
        resolved = self._found.get(name)
        if resolved is not None:
            return resolved
        model = self._exact.get(name)
        if model is not None:
            resolved = ResolvedModel(model, model.name)
        else:
            for pattern, candidate in self._patterns:
                if fnmatch.fnmatchcase(name, pattern):
                    resolved = ResolvedModel(candidate, name)
                    break
        if resolved is not None and len(self._found) < REMEMBERED_NAMES:
            self._found[name] = resolved
        return resolved

    def resolve(self, requested: str | None, api: str) -> ResolvedModel:
        """The model a request names (or the default); 404 ``model_not_found`` for a name
        the catalog does not know, and for a model that does not serve this API."""
        if requested is None:
            if self.default is None:
                raise BadRequest(
                    "you must provide a model parameter", code="missing_model", param="model"
                )
            requested = self.default
        resolved = self.find(requested)
        if resolved is None:
            raise not_found(requested)
        if api not in resolved.entry.apis:
            raise ModelNotFound(
                f"The model '{resolved.public}' is not served on {_API_PATHS[api]} "
                f"(it serves {', '.join(_API_PATHS[a] for a in sorted(resolved.entry.apis))})",
                code="model_not_supported",
                param="model",
            )
        return resolved

    def listing(self) -> dict[str, Any]:
        return {"object": "list", "data": [model.describe() for model in self.models]}
