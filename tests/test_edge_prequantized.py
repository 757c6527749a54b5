"""A pre-quantized NF4 checkpoint: the first NF4 load of a folder saves its 4-bit weights, later
loads take them directly (4-bit layers, the folder's own name, the same greedy answer)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from edge_node.config import EdgeNodeConfig  # noqa: E402
from edge_node.model import LoadedModel, linear_module_types, load_configured  # noqa: E402
from edge_node.weights import is_prequantized, prequantized_dir, prequantized_ready  # noqa: E402
from tests.edge_fixtures import build_tiny_model  # noqa: E402


def greedy(loaded: LoadedModel, n: int = 6) -> list[int]:
    prompt = torch.tensor([list(loaded.tokenizer("hello sensor status")["input_ids"])])
    with torch.inference_mode():
        out = loaded.model.generate(
            prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
        )
    return list(out[0, prompt.shape[1] :].tolist())


def test_the_first_nf4_load_saves_the_checkpoint_and_later_loads_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTCOLD_MODEL_CACHE", str(tmp_path / "cache"))
    source = build_tiny_model(tmp_path / "tiny")
    config = EdgeNodeConfig(device="cpu", max_batch=2, max_context=128)
    target = prequantized_dir(source, config.compute_dtype, config.double_quant)
    assert not prequantized_ready(target)
    first = load_configured(source, config)
    assert prequantized_ready(target) and is_prequantized(target)
    assert not is_prequantized(source)
    second = load_configured(source, config)
    assert second.name == first.name == source.name
    assert "Linear4bit" in linear_module_types(second.model)
    assert second.quantization == "nf4"
    assert greedy(second) == greedy(first)
    checkpoint = sum(f.stat().st_size for f in target.glob("*.safetensors"))
    original = sum(f.stat().st_size for f in source.glob("*.safetensors"))
    assert checkpoint < original  # 4-bit linear layers on disk


def test_prequantize_off_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTCOLD_MODEL_CACHE", str(tmp_path / "cache"))
    source = build_tiny_model(tmp_path / "tiny")
    config = EdgeNodeConfig(device="cpu", max_batch=2, max_context=128, prequantize=False)
    load_configured(source, config)
    assert not (tmp_path / "cache").exists()
