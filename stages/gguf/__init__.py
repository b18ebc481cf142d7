"""gguf: every deployable GGUF file, through llama.cpp's own converter and quantizer.

For each model in `gguf.models` (the distilled student, the QAT student's trained weights, the
phase-1 and the adapted MoE): a full-precision GGUF (`gguf.outtype`) by llama.cpp's converter
(`stages.llama_cpp.convert`), then every type of `gguf.quant_types` by `llama_model_quantize`.
Each file carries the tokenizer, and the chat template where the model has one (refine's SFT
format, in the adapted model's tokenizer config).

Checks that fail the stage rather than ship a file that differs: the full-precision file's logits
on held-out tokens match the transformers model's within `gguf.tolerance`, and every file loads
in llama-cpp-python and generates `gguf.generate_tokens` greedy tokens.

Sliding windows: llama.cpp's Qwen2-MoE graph has none, so past the window it would attend where
the model never does. A MoE with sliding-window layers is exported with its context length (the
GGUF's `context_length`) set to the window, inside which both compute the same function: the file
states its limit instead of silently differing beyond it. The dense student has full attention in
every layer and keeps its full context.

Outputs: `data/gguf/<model>/<model>-<type>.gguf`. Metrics: per model and file, bytes, bits per
weight, tensors that fell back to another type (K-quants need rows of 256), tokens generated; the
full-precision logit check; the context length. See docs/gguf.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

from stages.gguf.config import Params
from stages.runner import StageContext

__all__ = ["Params", "run"]

SOURCES = {"student": "data/distill", "qat": "data/qat", "phase1": "data/pretrain",
           "adapted": "data/adapt"}
WEIGHTS = {"qat": "float"}  # the QAT model's trained full-precision weights (what llama.cpp reads)
TOKENS = "data/tokenize"
OUT = "data/gguf"


def run(params: Params, ctx: StageContext) -> dict:
    import numpy as np

    from stages import llama_cpp
    from stages.train.batches import Split

    heldout = Split.open(ctx.dep(TOKENS) / "eval")
    flat = np.asarray(heldout.tokens).reshape(-1)
    out, threads = ctx.out(OUT), ctx.workers
    metrics = {}
    for name in params.models:
        src = ctx.dep(SOURCES[name]) / WEIGHTS.get(name, "")
        dest = out / name
        dest.mkdir(parents=True, exist_ok=True)
        with context_capped(src) as (model_dir, context):
            full = llama_cpp.convert(model_dir, dest / f"{name}-{params.outtype}.gguf",
                                     params.outtype)
        ids = [int(t) for t in flat[:min(params.check_tokens, context)]]
        diff = logit_difference(src, full, ids, threads)
        if diff > params.tolerance:
            raise RuntimeError(f"{full}: llama.cpp's logits differ from transformers' by {diff:.2e}"
                               f" (> gguf.tolerance {params.tolerance:g}) on held-out tokens")
        files = {params.outtype: (full, 0)}
        for qtype in params.quant_types:
            path = dest / f"{name}-{qtype}.gguf"
            files[qtype] = (path, llama_cpp.quantize(full, path, qtype, threads))
        prompt = ids[:min(16, context - params.generate_tokens - 1)]
        rows = {}
        for qtype, (path, fallbacks) in files.items():
            generated = llama_cpp.generate(path, prompt, params.generate_tokens, threads)
            if len(generated) != params.generate_tokens:
                raise RuntimeError(f"{path} generated {len(generated)} of "
                                   f"{params.generate_tokens} tokens")
            rows[qtype] = {"bytes": path.stat().st_size, "fallback_tensors": fallbacks,
                           "generated_tokens": len(generated)}
        n_params = parameter_count(src)
        for row in rows.values():
            row["bits_per_weight"] = 8 * row["bytes"] / n_params
        ctx.log.info("%s: %s", name, ", ".join(f"{t} {r['bytes'] / 2**20:.1f} MiB"
                                                for t, r in rows.items()))
        metrics[name] = {"files": rows, "context_length": context, "logits_max_abs_diff": diff,
                         "logits_checked_tokens": len(ids), "params": n_params}
    return {"outtype": params.outtype, "quant_types": params.quant_types, **{
        f"{name}_files": m.pop("files") for name, m in metrics.items()}, "models": metrics}


@contextlib.contextmanager
def context_capped(src: Path):
    """(a directory the converter reads, the context length the GGUF will declare): `src` itself,
    or for a model with sliding-window layers a view of it whose config caps the context at the
    window."""
    config = json.loads((src / "config.json").read_text())
    window = config.get("sliding_window")
    if not window or "sliding_attention" not in (config.get("layer_types") or []):
        yield src, int(config["max_position_embeddings"])
        return
    with tempfile.TemporaryDirectory(prefix="gguf-") as tmp:
        view = Path(tmp)
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name != "config.json":
                os.symlink(f.resolve(), view / f.name)
        (view / "config.json").write_text(json.dumps(config | {
            "max_position_embeddings": window}, indent=2, sort_keys=True))
        yield view, int(window)


def logit_difference(model_dir: Path, gguf: Path, ids: list[int], threads: int) -> float:
    """Max |logit difference| between llama.cpp on `gguf` and transformers on `model_dir`."""
    import numpy as np
    import torch

    from stages import llama_cpp
    from stages.model.hf import load_hf

    with torch.no_grad():
        ref = load_hf(model_dir).eval()(torch.tensor([ids])).logits[0].numpy()
    return float(np.abs(llama_cpp.logits(gguf, ids, threads) - ref).max())


def parameter_count(model_dir: Path) -> int:
    """Weights in the checkpoint's safetensors (what the GGUF stores)."""
    from safetensors import safe_open

    n = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            n += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return n
