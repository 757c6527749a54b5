"""What is produced from the settings' one declaration (the fields of router/config.py): the
reference config file (``configs/router.yaml``), the command-line flags of ``python -m
router``, and their help. The environment variables come from the same declaration
(``router.config.ENVIRONMENT``).

Adding a setting is one field in router/config.py, with its default, bounds, docstring and,
if a person sets it often, ``setting(..., env=..., flag=...)``; then its use. ``python -m
router --reference-config > configs/router.yaml`` writes the reference, and a test fails
while the file, the flags or the README's list of variables drift from the declaration.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr

from router.config import ENVIRONMENT, RouterConfig, Setting, declared_settings

COMMENT_COLUMN = 29
WIDTH = 98

HEADER = """\
# hotcold router — reference configuration.
#
# Every key, its unit and its default: values here ARE the defaults. Copy this file and change
# what you need. Precedence, lowest first: built-in defaults < environment (HOTCOLD_*) < this
# file (--config) < command-line flags < fleet changes (PUT /admin/policy, live policy only).
# A null here leaves what the environment sets (secrets: HOTCOLD_ADMIN_TOKEN, HOTCOLD_REDIS_URL).
# An unknown key or a bad value stops start-up with a message naming the key and the value;
# a bad file at reload time is refused and the last good config kept.
#
# Produced from router/config.py (python -m router --reference-config); edit the
# declarations there, not this file.
"""


def _scalar(value: Any) -> str:
    """A default as YAML writes it, on one line."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _help(setting: Setting) -> str:
    words = (setting.info.description or "").strip()
    refs = []
    if setting.flag:
        refs.append(f"flag {setting.flag}")
    if setting.env:
        refs.append(f"env {setting.env}")
    return f"{words} ({', '.join(refs)})" if refs else words


_EXAMPLE_LINE = re.compile(r"^(- |[\w.@/-]+: )")


def _paragraphs(text: str) -> list[str]:
    """A docstring's lines joined into prose, except lines that are YAML examples (``- ...``
    or ``key: value``), which stay lines of their own."""
    paragraphs: list[str] = []
    for line in text.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        if paragraphs and not _EXAMPLE_LINE.match(line) and not _EXAMPLE_LINE.match(paragraphs[-1]):
            paragraphs[-1] += " " + line
        else:
            paragraphs.append(line)
    return paragraphs


def _comment_lines(text: str, indent: int) -> list[str]:
    """The description as comment lines, wrapped to the file's width."""
    lines: list[str] = []
    for paragraph in _paragraphs(text):
        lines.extend(
            textwrap.wrap(paragraph, width=max(30, WIDTH - indent - 2), break_on_hyphens=False)
        )
    return lines


def _emit(lines: list[str], prefix: str, comment: str) -> None:
    """``prefix`` (the key and value) with ``comment`` beside it, wrapped under it."""
    column = max(COMMENT_COLUMN, len(prefix) + 2)
    if len(prefix) > 60:  # a long value: the comment goes below it
        column = COMMENT_COLUMN
    wrapped = _comment_lines(comment, column)
    if not wrapped:
        lines.append(prefix.rstrip())
        return
    if len(prefix) > 60:
        lines.append(prefix)
    else:
        lines.append(f"{prefix.ljust(column)}# {wrapped[0]}")
        wrapped = wrapped[1:]
    lines.extend(f"{' ' * column}# {line}" for line in wrapped)


def _item_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a list or mapping of models (catalog entries, pools, pins...)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is tuple and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    if origin is dict and len(args) == 2:
        item = args[1]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _item_fields(model: type[BaseModel], indent: int) -> list[str]:
    """Each field of a list item, as comment lines under the list (one declaration for both
    the validation and the documentation of catalog entries, pins, keys...)."""
    lines = []
    for name, info in model.model_fields.items():
        default = "required" if info.is_required() else _scalar(info.get_default())
        prefix = f"{' ' * indent}#   {name}: {default}"
        words = " ".join((info.description or "").split())
        column = max(COMMENT_COLUMN + 20, len(prefix) + 2)
        wrapped = textwrap.wrap(words, width=max(30, WIDTH - column - 2)) or [""]
        lines.append(f"{prefix.ljust(column)}{wrapped[0]}".rstrip())
        lines.extend(f"{' ' * indent}#{' ' * (column - indent - 1)}{w}" for w in wrapped[1:])
    return lines


def _section_lines(model: type[BaseModel], value: BaseModel, depth: int) -> list[str]:
    lines: list[str] = []
    indent = "  " * depth
    for name, info in model.model_fields.items():
        current = getattr(value, name)
        annotation = info.annotation
        description = info.description or ""
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _emit(lines, f"{indent}{name}:", description)
            lines.extend(_section_lines(annotation, current, depth + 1))
            if depth == 0:
                lines.append("")
            continue
        setting = Setting((name,), info)
        _emit(lines, f"{indent}{name}: {_scalar(current)}", _help(setting))
        item = _item_model(annotation)
        if item is not None:
            lines.append(f"{indent}  # each entry:")
            lines.extend(_item_fields(item, len(indent) + 2))
        if depth == 0:
            lines.append("")
    return lines


def reference_config() -> str:
    """configs/router.yaml, from the declarations."""
    body = _section_lines(RouterConfig, RouterConfig(), 0)
    while body and not body[-1]:
        body.pop()
    return HEADER + "\n" + "\n".join(body) + "\n"


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting that declares one; lists repeat, booleans take no value."""
    for setting in declared_settings():
        if setting.flag is None:
            continue
        help_text = " ".join((setting.info.description or "").split())
        details = [f"{setting.key} in the file"]
        if setting.env:
            details.append(f"env {setting.env}")
        details.append(f"default: {_scalar(_default_of(setting.path))}")
        help_text += f" ({'; '.join(details)})"
        dest = "setting:" + setting.key
        metavar = setting.path[-1].upper()
        if setting.is_list:
            parser.add_argument(
                setting.flag, action="append", dest=dest, metavar="URL", help=help_text
            )
        elif setting.info.annotation is bool:
            parser.add_argument(
                setting.flag, action="store_true", default=None, dest=dest, help=help_text
            )
        else:
            parser.add_argument(
                setting.flag, dest=dest, type=_flag_type(setting), metavar=metavar, help=help_text
            )


def _default_of(path: tuple[str, ...]) -> Any:
    """A setting's default where it is used (a section's default may set its own fields)."""
    value: Any = RouterConfig()
    for part in path:
        value = getattr(value, part)
    return value


def _flag_type(setting: Setting) -> Any:
    annotation = setting.info.annotation
    return annotation if annotation in (int, float) else str


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that were given, as a config layer."""
    tree: dict[str, Any] = {}
    for name, value in vars(args).items():
        if not name.startswith("setting:") or value is None:
            continue
        node = tree
        *sections, key = name.removeprefix("setting:").split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return tree


def environment_variables() -> list[str]:
    return sorted(ENVIRONMENT)
