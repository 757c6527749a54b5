"""Loading the model in 4 bits (bitsandbytes NF4) on CUDA, or on the CPU when there is none."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from edge_node.config import EdgeNodeConfig
from edge_node.memory import MemoryEstimate, check_fits, estimate
from edge_node.weights import (
    is_prequantized,
    prequantized_dir,
    prequantized_ready,
    save_prequantized,
)

log = logging.getLogger("hotcold.edge.model")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str
    device: str
    quantization: str  # "nf4" or "none"
    footprint_bytes: int
    estimate: MemoryEstimate


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return requested


def load(
    path: Path,
    *,
    device: str = "auto",
    quantize: bool = True,
    compute_dtype: str = "bfloat16",
    double_quant: bool = False,
    max_batch: int = 16,
    max_context: int = 2048,
    name: str | None = None,
) -> LoadedModel:
    """The model at ``path``; a folder that is already 4-bit (a pre-quantized checkpoint)
    loads its NF4 weights as they are."""
    device = pick_device(device)
    config = AutoConfig.from_pretrained(path)
    prequantized = is_prequantized(path)
    quantize = quantize or prequantized
    needed = estimate(config, max_batch, max_context, quantized=quantize, double_quant=double_quant)
    check_fits(needed, device, max_batch, max_context)
    log.info(
        "loading %s on %s (%s); estimate: %s",
        path.name,
        device,
        "nf4" if quantize else compute_dtype,
        needed.describe(),
    )
    dtype = _DTYPES[compute_dtype]
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": device}
    if quantize and not prequantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=double_quant,
        )
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    return LoadedModel(
        model,
        tokenizer,
        name or path.name,
        device,
        "nf4" if quantize else "none",
        int(model.get_memory_footprint()),
        needed,
    )


def load_configured(path: Path, config: EdgeNodeConfig) -> LoadedModel:
    """:func:`load` with the node's settings (start-up and POST /admin/model alike). In NF4
    with ``prequantize``, the first load of a folder saves its 4-bit weights and later loads
    take those (edge_node/weights.py); the model keeps its folder's name either way."""
    settings: dict[str, Any] = {
        "device": config.device,
        "quantize": config.quantize,
        "compute_dtype": config.compute_dtype,
        "double_quant": config.double_quant,
        "max_batch": config.max_batch,
        "max_context": config.max_context,
    }
    if not (config.quantize and config.prequantize) or is_prequantized(path):
        return load(path, **settings)
    target = prequantized_dir(path, config.compute_dtype, config.double_quant)
    if prequantized_ready(target):
        log.info("loading the pre-quantized NF4 checkpoint %s", target)
        return load(target, name=path.name, **settings)
    loaded = load(path, **settings)
    try:
        save_prequantized(loaded.model, loaded.tokenizer, path, target)
        log.info("saved the NF4 checkpoint in %s; later starts load it directly", target)
    except OSError as exc:
        log.warning(
            "could not save the NF4 checkpoint in %s (%s); quantizing at each load", target, exc
        )
    return loaded


def linear_module_types(model: Any) -> set[str]:
    """The class names of the model's linear layers (``Linear4bit`` when quantized)."""
    return {
        type(module).__name__
        for module in model.modules()
        if "Linear" in type(module).__name__ and module is not model
    }
