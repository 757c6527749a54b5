"""Configuration: validated once, errors name the key and value, layers override in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.__main__ import overrides_from, parse_args
from router.config import ConfigError, build_config, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_reference_config_file_is_valid_and_matches_defaults() -> None:
    """configs/router.yaml documents every key with its default; it must load as is."""
    from_file = load_config(ROOT / "configs" / "router.yaml", environ={})
    assert from_file == build_config()


def test_edge_node_reference_config_matches_defaults() -> None:
    import yaml

    from edge_node.config import EdgeNodeConfig

    document = yaml.safe_load((ROOT / "configs" / "edge_node.yaml").read_text())
    assert EdgeNodeConfig(**document) == EdgeNodeConfig()


def test_bad_value_names_key_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"cloud": {"max_attempts": 0}})
    assert "cloud.max_attempts" in str(info.value) and "0" in str(info.value)


def test_bad_url_names_key_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"cloud": {"endpoints": ["ftp://x.example"]}})
    assert "cloud.endpoints" in str(info.value) and "ftp://x.example" in str(info.value)


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'server\.prot'"):
        build_config({"server": {"prot": 1}})


def test_config_is_frozen() -> None:
    config = build_config()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own ValidationError
        config.server.port = 1  # type: ignore[misc]


def test_precedence_env_then_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("server:\n  port: 8100\ncloud:\n  endpoints: [http://file:1]\n")
    env = {
        "HOTCOLD_PORT": "8200",
        "HOTCOLD_CLOUD_ENDPOINTS": "http://env:1,http://env:2",
        "HOTCOLD_ADMIN_TOKEN": "from-the-environment-0123",
    }
    only_env = load_config(None, environ=env)
    assert only_env.server.port == 8200
    assert only_env.cloud.endpoints == ("http://env:1", "http://env:2")
    with_file = load_config(path, environ=env)
    assert with_file.server.port == 8100  # the file beats the environment
    assert with_file.admin.token == "from-the-environment-0123"  # unless it is silent
    flags = overrides_from(parse_args(["--port", "8300", "--cloud-endpoint", "http://flag:1"]))
    with_flags = load_config(path, flags, environ=env)
    assert with_flags.server.port == 8300
    assert with_flags.cloud.endpoints == ("http://flag:1",)


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, environ={})


def test_the_catalog_example_is_valid() -> None:
    from router.catalog import Catalog

    config = load_config(ROOT / "configs" / "catalog-example.yaml", environ={})
    catalog = Catalog.from_config(config)
    assert catalog.resolve("gpt-4o", "chat").entry.name == "chat-large"
    assert catalog.resolve(None, "chat").entry.name == "chat-small"
    assert catalog.resolve("embed", "embeddings").upstream_name == "BAAI/bge-m3"
    assert [m.name for m in catalog.models if m.edge_allowed] == ["chat-small"]


def test_config_errors_never_show_a_key_or_a_section() -> None:
    from router.errors import ConfigError

    secret = "sk-live-0123456789abcdef"
    with pytest.raises(ConfigError) as caught:
        build_config({"cloud": {"api_key": secret, "api_key_env": "X"}})
    assert secret not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        build_config(
            {
                "admin": {"token": "admin-token-0123456789"},
                "cloud": {"api_key": secret},
                "models": {"catalog": [{"name": "m", "pool": "nowhere"}]},
            }
        )
    message = str(caught.value)
    assert secret not in message and "admin-token" not in message and "nowhere" in message
