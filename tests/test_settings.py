"""Settings are declared once (router/config.py); the reference config, the flags, the
environment variables and the README are produced from or checked against that declaration."""

from __future__ import annotations

import re

from pydantic import BaseModel

from router.__main__ import parse_args
from router.config import ENVIRONMENT, RouterConfig, build_config, declared_settings
from router.settings import overrides_from, reference_config
from tests.support import ROOT


def test_the_reference_config_file_is_produced_from_the_declarations() -> None:
    """Fails when configs/router.yaml drifts: run
    ``python -m router --reference-config > configs/router.yaml``."""
    assert (ROOT / "configs" / "router.yaml").read_text() == reference_config()


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for info in model.model_fields.values():
        for candidate in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                _models(candidate, seen)


def test_every_setting_says_what_it_is() -> None:
    models: set[type[BaseModel]] = set()
    _models(RouterConfig, models)
    missing = [
        f"{model.__name__}.{name}"
        for model in models
        for name, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert not missing, "settings without a docstring: " + ", ".join(sorted(missing))


def test_flags_come_from_the_declarations_and_override_the_file() -> None:
    args = parse_args(
        [
            "--port",
            "9999",
            "--cloud-endpoint",
            "http://127.0.0.1:7001",
            "--cloud-endpoint",
            "http://127.0.0.1:7002",
            "--json-logs",
            "--cache-entries",
            "77",
        ]
    )
    config = build_config({"server": {"port": 1}}, overrides_from(args))
    assert config.server.port == 9999
    assert config.cloud.endpoints == ("http://127.0.0.1:7001", "http://127.0.0.1:7002")
    assert config.logging.json_lines is True and config.cache.entries == 77
    assert config.logging.level == "INFO"  # a flag not given changes nothing
    declared = {s.flag for s in declared_settings() if s.flag}
    assert {"--port", "--cloud-endpoint", "--edge-endpoint", "--admin-token"} <= declared


def test_the_readme_lists_exactly_the_declared_environment_variables() -> None:
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("Precedence, lowest first") :][:600]
    listed = set(re.findall(r"`(HOTCOLD_[A-Z_]+)`", paragraph))
    assert listed == set(ENVIRONMENT)
