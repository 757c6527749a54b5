"""The edge node on a GPU: throughput and latency over HTTP, memory, and per-token decode time
with and without CUDA graphs, NF4 against bf16, in one run that fits a short GPU lease.

``python -m bench.gpu_node --model PATH --device cuda --out DIR`` runs the sections named in
``--sections`` (all by default) and writes ``DIR/gpu_node.json``; a compact table is printed
last. Sections:

* ``env``: device, driver and library versions; a device-to-device copy as the bandwidth
  ceiling.
* ``http``: ``hotcold bench node``'s protocol (``python -m edge_node --batching B`` as a child
  process, chat requests of 32 new tokens at concurrency 1, 4, 16 and 64), NF4 then bf16.
* ``models``: in-process, for NF4 then bf16: GPU memory after load and at a batch of 64, a
  quality check, and per-token decode times (``bench.gpu_decode``) at batch 1 and 16 next to
  the memory-bandwidth floor of one step.
* ``compile``: ``generate`` with a static cache compiled in ``reduce-overhead`` mode.
* ``cb``: transformers' continuous batching (``generate_batch``) against one padded
  ``generate`` call, NF4, 16 and 64 requests.

``--random-weights DIR`` builds the model from DIR's config with random weights (same shapes,
same speed, meaningless text) for when the real weights cannot travel.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import subprocess
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.gpu_decode import (
    StepTiming,
    agreement,
    eager_forward,
    failed_row,
    generate_per_token,
    graph_forward,
    guarded,
    prompt_batch,
    synchronize,
)
from bench.workload import question

SECTIONS = ("env", "http", "models", "compile", "cb")
BF16_MATMUL_FLOPS = 790e12  # measured on these machines (KINDS.md); a lead for the floor
DEFAULT_COPY_BYTES_PER_S = 3.0e12


STARTED = time.monotonic()


def enough_time(args: argparse.Namespace, needed_s: float, what: str) -> bool:
    """Whether ``what`` can start before ``--deadline-s``; work that cannot is skipped (and
    said so) rather than cut off by the lease."""
    left = float(args.deadline_s) - (time.monotonic() - STARTED)
    if left < needed_s:
        log(f"skipping {what}: {left:.0f} s left of the deadline, {needed_s:.0f} s needed")
    return left >= needed_s


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ("torch", "transformers", "bitsandbytes", "accelerate", "gguf"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    found["cuda"] = str(torch.version.cuda)
    if torch.cuda.is_available():
        found["device"] = torch.cuda.get_device_name()
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm"
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        found["nvidia-smi"] = smi.stdout.strip() or smi.stderr.strip()
    return found


def copy_bandwidth(device: str, size_bytes: int = 1 << 30) -> float:
    """Bytes read plus written per second by a large device-to-device copy (median of 10)."""
    if not device.startswith("cuda"):
        return DEFAULT_COPY_BYTES_PER_S
    source = torch.randint(0, 255, (size_bytes,), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    times = []
    for _ in range(13):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        target.copy_(source)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del source, target
    torch.cuda.empty_cache()
    median = sorted(times[3:])[len(times[3:]) // 2]
    return float(2 * size_bytes / median)


def weight_bytes(model: Any) -> int:
    """Bytes of weights one decode step reads: parameters and buffers once each (a tied LM
    head counted once), plus bitsandbytes' per-block scales, which live outside parameters."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        absmax = getattr(state, "absmax", None)
        if absmax is not None:
            total += absmax.numel() * absmax.element_size()
    return total


def step_floor_ms(model: Any, batch: int, context: int, bandwidth: float) -> dict[str, float]:
    """The fewest milliseconds one decode step can take: weights and the KV cache read once
    at the measured copy bandwidth, against 2 FLOP per parameter per row at the bf16 rate."""
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_bytes = 2 * config.num_hidden_layers * kv_heads * head_dim * 2 * batch * context
    weights = weight_bytes(model)
    parameters = sum(p.numel() for p in model.parameters())
    if type(model.get_input_embeddings().weight).__name__ == "Params4bit":
        parameters *= 2  # packed: two 4-bit weights per stored byte
    memory_ms = (weights + kv_bytes) / bandwidth * 1000
    compute_ms = 2 * parameters * batch / BF16_MATMUL_FLOPS * 1000
    return {
        "weight_bytes": float(weights),
        "kv_bytes": float(kv_bytes),
        "memory_ms": memory_ms,
        "compute_ms": compute_ms,
        "floor_ms": max(memory_ms, compute_ms),
    }


def random_model(source: Path, target: Path) -> Path:
    """A model folder with ``source``'s config and tokenizer and random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # type: ignore[no-untyped-call]
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def _memory(device: str) -> tuple[int, int]:
    if not device.startswith("cuda"):
        return 0, 0
    return int(torch.cuda.memory_allocated()), int(torch.cuda.max_memory_allocated())


def quality(loaded: Any, device: str) -> str:
    tokenizer = loaded.tokenizer
    ids = prompt_batch(tokenizer, "What is the capital of France?", 1, device)
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=16,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)).strip()


def batch_peak(loaded: Any, device: str, batch: int, new_tokens: int) -> dict[str, float]:
    """Peak GPU memory and wall time of one padded ``generate`` of ``batch`` chat prompts."""
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question(i)}], add_generation_prompt=True, tokenize=False
        )
        for i in range(batch)
    ]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    encoded = {key: value.to(device) for key, value in encoded.items()}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    began = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(
            **encoded,
            max_new_tokens=new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
        )
    synchronize(device)
    wall = time.perf_counter() - began
    generated = out[:, encoded["input_ids"].shape[1] :]
    tokens = _count_until_eos(generated.tolist(), _eos_ids(loaded))
    return {
        "batch": batch,
        "peak_allocated_bytes": _memory(device)[1],
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
    }


def _eos_ids(loaded: Any) -> set[int]:
    ids: set[int] = set()
    for value in (loaded.tokenizer.eos_token_id, loaded.model.generation_config.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(value)
    return ids


def _count_until_eos(rows: list[list[int]], eos: set[int]) -> int:
    total = 0
    for row in rows:
        for token in row:
            if token in eos:
                break
            total += 1
    return total


def _eager_row(model: Any, variant: str, ids: torch.Tensor, args: argparse.Namespace) -> Any:
    median, spread, tokens = eager_forward(model, ids, args.steps, args.repeats)
    return StepTiming(variant, "forward-eager", ids.shape[0], median, spread), tokens


def _graph_row(
    model: Any, variant: str, ids: torch.Tensor, args: argparse.Namespace, eager: list[list[int]]
) -> StepTiming:
    capture = str(ids.device).startswith("cuda")
    median, spread, tokens = graph_forward(model, ids, args.steps, args.repeats, capture)
    same = agreement(eager, tokens) if eager else float("nan")
    method = "forward-graph" if capture else "forward-static"
    return StepTiming(variant, method, ids.shape[0], median, spread, f"greedy agrees {same:.0%}")


def _generate_row(
    model: Any, variant: str, ids: torch.Tensor, pad: int, args: argparse.Namespace
) -> StepTiming:
    median, spread, _ = generate_per_token(model, ids, pad, args.short, args.long, args.repeats)
    return StepTiming(variant, "generate-eager", ids.shape[0], median, spread)


def _compiled_row(
    model: Any, variant: str, ids: torch.Tensor, pad: int, args: argparse.Namespace
) -> StepTiming:
    from transformers import CompileConfig

    median, spread, first_call = generate_per_token(
        model,
        ids,
        pad,
        args.short,
        args.long,
        args.repeats,
        cache_implementation="static",
        compile_config=CompileConfig(fullgraph=False, mode="reduce-overhead"),
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not quantizer.is_compileable:
        # transformers then runs the static cache eagerly (it logs that it skips compilation)
        return StepTiming(
            variant, "generate-static", ids.shape[0], median, spread, "compile skipped"
        )
    return StepTiming(
        variant,
        "generate-static-compiled",
        ids.shape[0],
        median,
        spread,
        f"first call (compiles) {first_call:.1f} s",
    )


def decode_study(
    loaded: Any, variant: str, device: str, args: argparse.Namespace, bandwidth: float
) -> dict[str, Any]:
    """Per-token decode times at each batch size, and the floor of one step."""
    model, tokenizer = loaded.model, loaded.tokenizer
    pad = tokenizer.pad_token_id or tokenizer.eos_token_id
    rows: list[StepTiming] = []
    floors: dict[str, Any] = {}
    for batch in args.batches:
        ids = prompt_batch(tokenizer, question(3), batch, device)
        context = ids.shape[1] + args.steps // 2
        floors[str(batch)] = step_floor_ms(model, batch, context, bandwidth)
        eager_tokens: list[list[int]] = []
        try:
            row, eager_tokens = _eager_row(model, variant, ids, args)
        except Exception as exc:
            log(f"{variant}/forward-eager/{batch} failed: {type(exc).__name__}: {exc}")
            row = failed_row(f"{variant}/forward-eager/{batch}", exc)
        rows.append(row)
        label = f"{variant}/generate-eager/{batch}"
        rows.append(guarded(label, partial(_generate_row, model, variant, ids, pad, args), log))
        # last: a CUDA error here poisons the context for everything after it
        label = f"{variant}/forward-graph/{batch}"
        graph_row = partial(_graph_row, model, variant, ids, args, eager_tokens)
        rows.append(guarded(label, graph_row, log))
        done = ", ".join(f"{r.method} {r.ms_per_step:.3f} ms" for r in rows if r.batch == batch)
        log(f"{variant} batch {batch}: {done}")
    return {"steps": [asdict(r) for r in rows], "floors": floors}


def compile_study(
    loaded: Any, variant: str, device: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """``generate`` with ``cache_implementation="static"``: transformers compiles the decode
    step (``reduce-overhead``: CUDA graphs) on CUDA."""
    model, tokenizer = loaded.model, loaded.tokenizer
    pad = tokenizer.pad_token_id or tokenizer.eos_token_id
    rows: list[dict[str, Any]] = []
    for batch in args.batches:
        ids = prompt_batch(tokenizer, question(3), batch, device)
        label = f"{variant}/generate-static-compiled/{batch}"
        row = guarded(label, partial(_compiled_row, model, variant, ids, pad, args), log)
        log(f"{variant} batch {batch}: compiled {row.ms_per_step:.3f} ms/token ({row.note})")
        rows.append(asdict(row))
    return rows


def cb_study(loaded: Any, device: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Continuous batching (``generate_batch``) against one padded ``generate`` call."""
    from transformers import GenerationConfig

    tokenizer = loaded.tokenizer
    eos = _eos_ids(loaded)
    prompts: list[list[int]] = []
    for i in range(max(args.cb_requests)):
        ids = prompt_batch(tokenizer, question(2000 + i), 1, "cpu")
        prompts.append(ids[0].tolist())
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=args.max_tokens,
        do_sample=False,
        eos_token_id=sorted(eos)[0] if eos else None,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    loaded.model.generate_batch(inputs=prompts[:4], generation_config=config)
    warm = time.perf_counter() - began
    for requests in args.cb_requests:
        synchronize(device)
        began = time.perf_counter()
        outputs = loaded.model.generate_batch(inputs=prompts[:requests], generation_config=config)
        synchronize(device)
        wall = time.perf_counter() - began
        tokens = _count_until_eos([list(o.generated_tokens) for o in outputs.values()], eos)
        padded = batch_peak(loaded, device, requests, args.max_tokens)
        rows.append(
            {
                "requests": requests,
                "cb_wall_s": wall,
                "cb_tokens": tokens,
                "cb_tokens_per_s": tokens / wall,
                "padded_wall_s": padded["wall_s"],
                "padded_tokens": padded["tokens"],
                "padded_tokens_per_s": padded["tokens_per_s"],
                "cb_first_call_s": warm,
            }
        )
        log(f"cb {requests}: {tokens / wall:.0f} tok/s vs padded {padded['tokens_per_s']:.0f}")
    return rows


def models_section(
    path: Path, device: str, args: argparse.Namespace, bandwidth: float, sections: set[str]
) -> dict[str, Any]:
    from edge_node.model import load

    report: dict[str, Any] = {}
    for variant in args.variants:
        quantize = variant == "nf4"
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        before, _ = _memory(device)
        began = time.perf_counter()
        loaded = load(path, device=device, quantize=quantize, max_batch=64, max_context=2048)
        after, peak = _memory(device)
        entry: dict[str, Any] = {
            "load_s": time.perf_counter() - began,
            "allocated_after_load_bytes": after - before,
            "peak_during_load_bytes": peak - before,
            "footprint_bytes": loaded.footprint_bytes,
            "weight_bytes": weight_bytes(loaded.model),
            "linear_types": sorted(
                {type(m).__name__ for m in loaded.model.modules() if "Linear" in type(m).__name__}
            ),
        }
        entry["answer"] = quality(loaded, device)
        log(
            f"{variant}: loaded, {entry['allocated_after_load_bytes'] / 2**20:.0f} MiB; "
            f"answer {entry['answer']!r}"
        )
        if "models" in sections and enough_time(args, 60, f"models {variant}"):
            entry["batch64"] = batch_peak(loaded, device, 64, args.max_tokens)
            entry["batch64"]["peak_allocated_bytes"] -= before
            entry["decode"] = decode_study(loaded, variant, device, args, bandwidth)
        if (
            "compile" in sections
            and device.startswith("cuda")
            and enough_time(args, 150, f"compile {variant}")
        ):
            entry["compiled"] = compile_study(loaded, variant, device, args)
        if "cb" in sections and quantize and enough_time(args, 60, "cb"):
            try:
                entry["cb"] = cb_study(loaded, device, args)
            except Exception as exc:
                log(f"continuous batching failed: {type(exc).__name__}: {exc}")
                entry["cb"] = f"failed: {type(exc).__name__}: {exc}"
        report[variant] = entry
        del loaded
    gc.collect()
    return report


def http_section(path: Path, device: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from bench.loadgen import percentile
    from bench.node import _node
    from hotcold.console import make_console

    node_args = argparse.Namespace(
        model=str(path),
        device=device,
        requests=args.requests,
        max_tokens=args.max_tokens,
        max_batch=max(args.levels),
    )
    console = make_console()
    rows: list[dict[str, Any]] = []
    for variant in args.variants:
        levels, health = asyncio.run(
            _node(node_args, variant == "nf4", args.levels, console, args.batching)
        )
        for level in levels:
            rows.append(
                {
                    "model": level.variant,
                    "concurrency": level.concurrency,
                    "requests": level.requests,
                    "tokens": level.tokens,
                    "tokens_per_s": level.tokens_per_s,
                    "p50_s": percentile(level.latencies_s, 50),
                    "p99_s": percentile(level.latencies_s, 99),
                    "node_device_allocated_bytes": health["memory"]["device_allocated_bytes"],
                    "node_resident_bytes": health["resident_bytes"],
                }
            )
            log(f"http {variant} c={level.concurrency}: {level.tokens_per_s:.0f} tok/s")
    return rows


def print_tables(report: dict[str, Any]) -> None:
    mib = 2**20
    print("\n== versions", json.dumps(report.get("env", {})))
    if "copy_bytes_per_s" in report:
        print(f"== copy bandwidth (read+write): {report['copy_bytes_per_s'] / 1e12:.2f} TB/s")
    http = report.get("http", [])
    if http:
        base = {r["model"]: r["tokens_per_s"] for r in http if r["concurrency"] == 1}
        bf16 = {r["concurrency"]: r["tokens_per_s"] for r in http if r["model"] == "bf16"}
        print("\n== HTTP (bench node protocol), 32 new tokens")
        print("model conc  reqs  tok/s  vs_seq  vs_bf16   p50_s   p99_s")
        for r in http:
            ratio = r["tokens_per_s"] / bf16[r["concurrency"]] if r["concurrency"] in bf16 else 0
            print(
                f"{r['model']:5} {r['concurrency']:4} {r['requests']:5} {r['tokens_per_s']:6.0f}"
                f"  {r['tokens_per_s'] / base[r['model']]:5.2f}x  {ratio:6.2f}x"
                f"  {r['p50_s']:6.3f}  {r['p99_s']:6.3f}"
            )
    for variant, entry in report.get("models", {}).items():
        print(
            f"\n== {variant}: after load {entry['allocated_after_load_bytes'] / mib:.0f} MiB, "
            f"peak in load {entry['peak_during_load_bytes'] / mib:.0f} MiB, "
            f"weights {entry['weight_bytes'] / mib:.0f} MiB, footprint "
            f"{entry['footprint_bytes'] / mib:.0f} MiB; answer: {entry['answer']!r}"
        )
        if "batch64" in entry:
            b = entry["batch64"]
            print(
                f"   batch 64, {b['tokens']} tokens: peak {b['peak_allocated_bytes'] / mib:.0f}"
                f" MiB, {b['tokens_per_s']:.0f} tok/s"
            )
        decode = entry.get("decode", {})
        for key, floor in decode.get("floors", {}).items():
            print(
                f"   floor b={key}: {floor['floor_ms']:.4f} ms (memory {floor['memory_ms']:.4f},"
                f" compute {floor['compute_ms']:.4f})"
            )
        steps = decode.get("steps", []) + entry.get("compiled", [])
        for s in steps:
            print(
                f"   {s['method']:26} b={s['batch']:3}  {s['ms_per_step']:8.3f} ms/step"
                f"  (spread {s['spread_ms']:.3f})  {s['note'][:80]}"
            )
        if isinstance(entry.get("cb"), list):
            for c in entry["cb"]:
                print(
                    f"   cb n={c['requests']}: {c['cb_tokens_per_s']:.0f} tok/s vs padded "
                    f"generate {c['padded_tokens_per_s']:.0f} tok/s"
                )
        elif "cb" in entry:
            print(f"   cb: {entry['cb'][:200]}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_node", description=__doc__)
    parser.add_argument("--model", default="default", help="'default' or a model folder")
    parser.add_argument("--random-weights", type=Path, help="config+tokenizer folder")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument(
        "--batching",
        default="continuous",
        choices=["continuous", "window"],
        help="the HTTP section's batching strategy (the 2026-11-23 H100 figures: window)",
    )
    parser.add_argument("--variants", default="nf4,bf16")
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--short", type=int, default=8)
    parser.add_argument("--long", type=int, default=40)
    parser.add_argument("--cb-requests", default="16,64")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--deadline-s", type=float, default=3600, help="skip sections that would start later"
    )
    args = parser.parse_args(argv)
    args.variants = args.variants.split(",")
    args.levels = tuple(int(x) for x in args.levels.split(","))
    args.batches = [int(x) for x in args.batches.split(",")]
    args.cb_requests = [int(x) for x in args.cb_requests.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = set(args.sections.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args)}
    report["args"] = {k: str(v) for k, v in vars(args).items()}
    if args.random_weights:
        path = random_model(args.random_weights, Path("/tmp/hotcold-random-model"))
        report["weights"] = "random (same config)"
    else:
        from edge_node.weights import resolve_model

        path = resolve_model(args.model)
        report["weights"] = f"real ({path})"
    log(f"model folder {path}, weights {report['weights']}")
    report["env"] = versions()
    bandwidth = DEFAULT_COPY_BYTES_PER_S
    if "env" in sections:
        bandwidth = copy_bandwidth(args.device)
        report["copy_bytes_per_s"] = bandwidth
        log(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")

    def save() -> None:
        (args.out / "gpu_node.json").write_text(json.dumps(report, indent=2, default=str))

    if "http" in sections:
        try:
            report["http"] = http_section(path, args.device, args)
        except Exception as exc:
            log(f"http section failed: {type(exc).__name__}: {exc}")
            report["http_error"] = f"{type(exc).__name__}: {exc}"
        save()
    if sections & {"models", "compile", "cb"}:
        report["models"] = models_section(path, args.device, args, bandwidth, sections)
        save()
    save()
    print_tables(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
