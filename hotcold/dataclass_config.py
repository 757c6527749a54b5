"""Settings held in a frozen dataclass, read from a YAML file and overridden by flags: the
small services' (cloud stub, edge node) way of loading config. The router has more to say
and uses pydantic (router/config.py)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def load_dataclass_config(kind: type[T], args: argparse.Namespace) -> T:
    """``kind`` built from ``args.config`` (YAML, optional) with every flag given on top.

    Flags are matched to fields by name; unknown keys in the file are refused by name, and the
    dataclass's own checks (``__post_init__``) report bad values.
    """
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        with open(args.config, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
        if not isinstance(document, dict):
            raise ValueError(f"{args.config} must hold a mapping at the top level")
        values.update(document)
    known = {field.name for field in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown keys in {args.config}: {sorted(unknown)}")
    for name in known:
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    return kind(**values)
