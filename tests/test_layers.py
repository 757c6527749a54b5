"""Every import runs down the layers, read from the source (``ast``), lazy imports included:

    hotcold_app   the application: console script, demo, the stack it starts
    bench         benchmarks and the load generator
    router | edge_node | cloud_stub   the three services; never each other
    hotcold       the shared library: wire format, HTTP glue, serving, logs, processes

Also: the router never imports torch (a gateway without a GPU installs the router alone),
and the router's pure modules (the decisions) import no I/O library, so they can be replayed
over a trace and tested without a server.
"""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"hotcold": 0, "router": 1, "edge_node": 1, "cloud_stub": 1, "bench": 2, "hotcold_app": 3}
GPU_STACK = {"torch", "transformers", "bitsandbytes", "accelerate"}
IO_LIBRARIES = {"aiohttp", "redis", "asyncio", "socket", "subprocess"}
PURE_ROUTER_MODULES = {
    "breaker",
    "cache",
    "catalog",
    "classify",
    "clock",
    "cost",
    "decision",
    "eviction",
    "keys",
    "policy",
    "retry",
    "sketch",
    "threshold",
}


def _imports(path: Path) -> list[str]:
    """Top-level names of every module this file imports, anywhere in it."""
    names = []
    # No collection during the parse: CPython 3.11's AST constructor is not reentrant, and a
    # finalizer run mid-parse that formats a traceback (3.11 parses source for its carets)
    # fails it with "AST constructor recursion depth mismatch" (an earlier test's unclosed
    # connections did; tests.support.close_at_test_end now closes them).
    collecting = gc.isenabled()
    gc.disable()
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    finally:
        if collecting:
            gc.enable()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_run_down_the_layers(package: str) -> None:
    wrong = []
    for path in _sources(package):
        for name in _imports(path):
            top = name.split(".")[0]
            if top not in LAYERS or top == package:
                continue
            if LAYERS[top] >= LAYERS[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "imports that run up or sideways:\n" + "\n".join(wrong)


def test_the_router_never_imports_the_gpu_stack() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources("router")
        for name in _imports(path)
        if name.split(".")[0] in GPU_STACK
    ]
    assert not wrong, "\n".join(wrong)


def test_the_routers_pure_modules_do_no_io() -> None:
    wrong = []
    for module in sorted(PURE_ROUTER_MODULES):
        path = ROOT / "router" / f"{module}.py"
        if not path.exists():
            continue
        for name in _imports(path):
            if name.split(".")[0] in IO_LIBRARIES:
                wrong.append(f"router/{module}.py imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_a_wrong_import(tmp_path: Path) -> None:
    """The walker itself: a lazy import inside a function is found."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from bench.loadgen import run_load\n")
    assert _imports(source) == ["bench.loadgen"]
