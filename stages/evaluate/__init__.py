"""evaluate: one report comparing every model of the lineage, scored the same way.

Every model the pipeline makes (phase-1, refined, adapted, the distilled student with and without
KD, the QAT model and its control, each PTQ method's artifacts, every GGUF file) is scored by the
one evaluation (`stages.quant.heldout.score`, the training loop's `evaluate`) on the same windows:
general held-out text (`eval`), the adapted domain's held-out text (`domain`), both in bits per
byte, and the loss on synth's held-out reasoning items (`reasoning`). Transformers models run in
PyTorch; GGUF files in llama.cpp (`GGUFScorer`), each with every K/V cache type of
`evaluate.kv_cache_types` (general text; KV memory at `evaluate.kv_context` as llama.cpp
allocates it) and timed for prompt and generation tokens/s. Windows are `evaluate.window` tokens
(default: the shortest context of the GGUF files, which is a MoE's sliding window, so every row
sees the same context and each GGUF computes what its model computes).

Outputs: `data/evaluate/scores.json` (every deterministic number: the data version);
`reports/evaluate/report.md` with `quality_vs_size.png` and `bpb_by_stage.png` (the report adds
llama.cpp's speeds on this machine and the params that produced each row).
Metrics: the same tables, the speeds and the quality goals. See docs/evaluate.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages import atomic
from stages.evaluate.config import Params
from stages.runner import StageContext

__all__ = ["Params", "run"]

OUT = "data/evaluate"
REPORTS = "reports/evaluate"
TOKENS, ADAPT, SYNTH, GGUF = "data/tokenize", "data/adapt", "data/synth", "data/gguf"
# The lineage's transformers models: row -> (producing stage, directory, its fp32 source).
MODELS = {
    "phase1": ("pretrain", "data/pretrain", "data/pretrain"),
    "refined": ("refine", "data/refine", "data/refine"),
    "adapted": ("adapt", "data/adapt", "data/adapt"),
    "student": ("distill", "data/distill", "data/distill"),
    "student_no_kd": ("distill", "data/distill/baseline", "data/distill/baseline"),
    "qat_control": ("qat", "data/qat/control/float", "data/qat/control/float"),
    "qat_control_rtn": ("qat", "data/qat/control", "data/qat/control/float"),
    "qat": ("qat", "data/qat", "data/qat/float"),
}
PTQ_SOURCES = {"student": "data/distill", "teacher": "data/adapt"}
GGUF_SOURCES = {"student": "data/distill", "qat": "data/qat/float", "phase1": "data/pretrain",
                "adapted": "data/adapt"}
# Stages whose params produced a row, in lineage order (the report's reproduce section).
PRODUCERS = ("pretrain", "refine", "adapt", "teacher_logits", "distill", "qat", "ptq", "gguf")


def run(params: Params, ctx: StageContext) -> dict:
    import numpy as np
    import torch

    from stages.evaluate import gguf_eval, report
    from stages.model.hf import load_hf
    from stages.quant.heldout import heldout_sets, score
    from stages.train import corpus, sft
    from stages.train.batches import Split

    torch.manual_seed(ctx.base.seed)
    tokens, root = ctx.dep(TOKENS), ctx.root
    files = gguf_eval.files(ctx.dep(GGUF))
    gguf_eval.check_kv_types(files, params.kv_cache_types)
    contexts = {name: gguf_eval.context_length(path) for name, path in files.items()}
    heldout = Split.open(tokens / "eval")
    window = params.window or min([*contexts.values(), heldout.seq_len])
    flat = np.asarray(heldout.tokens).reshape(-1)
    flat = flat[flat != int(heldout.index["pad_id"])]
    prompt = [int(t) for t in flat[:params.speed.prompt_tokens]]
    evals = heldout_sets(tokens, ctx.dep(ADAPT), params.max_bytes, window)
    sp = corpus.load_tokenizer(tokens / "tokenizer")
    template = ctx.section("refine").sft.template
    # each item's last `window` tokens: a long prompt loses its start, the response is scored
    evals["reasoning"] = sft.reasoning_set(ctx.dep(SYNTH) / "limo" / "eval.jsonl", sp, template,
                                           window, keep_end=True)
    rows: dict[str, dict] = {}
    for name, (stage, rel, src) in transformers_models(ctx).items():
        path = root / rel
        ctx.log.info("scoring %s (%s)", name, rel)
        rows[name] = {"stage": stage, "format": "transformers", "path": rel,
                      "bytes": weight_bytes(path), **parameter_counts(root / src),
                      **score(load_hf(path).eval(), evals, params.micro_seqs)}
    kv, speeds = {}, {}
    for name, path in ctx.progress(files.items(), len(files), "gguf files"):
        model = name.split("/")[0]
        kv[name] = gguf_eval.kv_table(path, evals, params, ctx.workers)
        reference = kv[name][params.kv_cache_types[0]]
        rows[f"gguf/{name}"] = {
            "stage": "gguf", "format": "gguf", "path": path.relative_to(root).as_posix(),
            "bytes": path.stat().st_size, **parameter_counts(root / GGUF_SOURCES[model]),
            **{k: v for k, v in reference.items() if k != "kv_bytes"}}
        speeds[name] = gguf_eval.speed(path, prompt, params.speed, contexts[name], ctx.workers)
        ctx.log.info("%s: eval_bpb %.4f, generation %.0f tokens/s", name,
                     reference["eval_bpb"], speeds[name]["generation_tokens_per_s"])
    scores = {"window": window, "heldout_bytes": {k: evals[k].n_bytes for k in ("eval", "domain")},
              "contexts": contexts, "models": rows, "kv_cache": kv}
    out = ctx.out(OUT)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "scores.json", scores)
    produced_by = {s: produced_params(ctx, s) for s in PRODUCERS}
    goals = report.goals(rows, kv, speeds, params.kv_cache_types)
    charts = {name: ctx.out(f"{REPORTS}/{name}.png") for name in report.CHARTS}
    report.write(ctx.out(f"{REPORTS}/report.md"), charts, scores, speeds, goals, produced_by,
                 scale(ctx, rows), params.kv_context, params.kv_cache_types)
    return {"window": window, "models": rows, "kv_cache": kv, "speed": speeds, "goals": goals}


def transformers_models(ctx: StageContext) -> dict[str, tuple[str, str, str]]:
    """Every transformers model the lineage holds: the fixed ones and each PTQ artifact."""
    models = dict(MODELS)
    ptq = ctx.dep("data/ptq")
    for model in sorted(p.name for p in ptq.iterdir() if p.is_dir()):
        for method in sorted(p.name for p in (ptq / model).iterdir() if p.is_dir()):
            models[f"ptq/{model}/{method}"] = ("ptq", f"data/ptq/{model}/{method}",
                                               PTQ_SOURCES[model])
    return models


def weight_bytes(directory: Path) -> int:
    """Bytes of the checkpoint's weight files (not its subdirectories)."""
    return sum(p.stat().st_size for p in sorted(directory.glob("*.safetensors")))


def parameter_counts(model_dir: Path) -> dict[str, int]:
    """Weights of a full-precision checkpoint, total and active per token (a MoE's routed experts
    count top_k of n_experts)."""
    import math

    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text())
    share = config.get("num_experts_per_tok", 1) / config.get("num_experts", 1)
    total, active = 0, 0.0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for key in f.keys():
                n = math.prod(f.get_slice(key).get_shape())
                total += n
                active += n * share if ".experts." in key else n
    return {"params_total": total, "params_active": round(active)}


def produced_params(ctx: StageContext, stage: str) -> dict:
    """The params.yaml values of a producing stage's declared keys (its DVC params)."""
    from stages.registry import stage as registry_stage

    values = {}
    for key in registry_stage(stage).params:
        section, _, rest = key.partition(".")
        value = ctx.section(section).model_dump(mode="json") if section != "base" else {
            "seed": ctx.base.seed}
        for part in rest.split(".") if rest else ():
            value = value[part]
        values[key] = value
    return values


def scale(ctx: StageContext, rows: dict) -> dict:
    """What the demo is: model sizes and training tokens, for the report's honesty line."""
    return {"phase1_params": rows["phase1"]["params_total"],
            "phase1_active": rows["phase1"]["params_active"],
            "student_params": rows["student"]["params_total"],
            "pretrain_tokens": ctx.section("pretrain").train_tokens}
