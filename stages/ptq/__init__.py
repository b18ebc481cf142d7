"""ptq: AWQ and GPTQ int4 of the distilled student and the adapted MoE teacher, RTN as baseline.

Every method (`ptq.methods`) quantizes every model (`ptq.models`) with one llm-compressor scheme
(`ptq.scheme`: bits, group size, symmetric; `stages.ptq.recipes`) and is saved in
compressed-tensors `pack-quantized` form, which `AutoModelForCausalLM` loads. Calibration is a
seeded sample of the curated corpus (tokenize's packed `train` rows; their indices are part of
the output). The teacher's experts: the router's spread of the calibration tokens is counted per
layer and expert, and by default every expert is calibrated on every token
(`ptq.moe.calibrate_all_experts`); see `stages.ptq.calibration`.

Each artifact is re-loaded from disk and scored by the shared held-out evaluation
(`stages.quant.heldout`: general and domain bits per byte), beside its full-precision source.

Outputs: `data/ptq/<model>/<method>/` (checkpoint + tokenizer), `data/ptq/calibration.json`.
Reports: `reports/ptq/metrics.json` (one table per model, expert token counts, goals) and
`reports/ptq/bpb.png`. See docs/quantization.md.
"""

from __future__ import annotations

import shutil
import time

from stages import atomic
from stages.ptq.config import Params
from stages.runner import StageContext

__all__ = ["Params", "run"]

TOKENS = "data/tokenize"
STUDENT = "data/distill"
TEACHER = "data/adapt"
OUT = "data/ptq"
REPORTS = "reports/ptq"


def run(params: Params, ctx: StageContext) -> dict:
    import torch

    from stages.model.hf import load_hf
    from stages.ptq.calibration import calibration_rows, calibration_tokens, routed_tokens
    from stages.ptq.recipes import check_group_size, quantize
    from stages.quant.heldout import divergence, heldout_sets, score
    from stages.quant.ondisk import int_weights
    from stages.quant.report import plot_bpb
    from stages.train.batches import Split

    torch.manual_seed(ctx.base.seed)
    tokens, adapt = ctx.dep(TOKENS), ctx.dep(TEACHER)
    sources = {"student": ctx.dep(STUDENT), "teacher": adapt}
    for name in params.models:  # a group size that does not fit fails before any work
        check_group_size(load_hf(sources[name]), params.scheme.group_size, sources[name])
    out = ctx.out(OUT)
    ids, rows = calibration_rows(Split.open(tokens / "train"), params.calibration, ctx.base.seed)
    if len(ids) < params.calibration.samples:
        ctx.log.warning("calibrating on all %d clean training rows: fewer than "
                        "ptq.calibration.samples (%d)", len(ids), params.calibration.samples)
    atomic.write_json(out / "calibration.json", {
        "split": f"{TOKENS}/train", "rows": ids.tolist(), "seq_len": rows.shape[1],
        "tokens": rows.numel()})
    evals = heldout_sets(tokens, adapt, params.eval.max_bytes)
    micro = params.eval.micro_seqs
    tables, experts = {}, {}
    for name in params.models:
        src = sources[name]
        reference = load_hf(src).eval()
        table = {"fp32": score(reference, evals, micro) | {"bytes": int_weights(src)["bytes"]}}
        if name == "teacher":
            routed = routed_tokens(reference, rows, micro)
            experts = {"routed_tokens": routed,
                       "calibration_tokens": calibration_tokens(routed, rows.numel(), params.moe),
                       "calibrate_all_experts": params.moe.calibrate_all_experts}
        for method in params.methods:
            dest = out / name / method
            start = time.perf_counter()
            model = load_hf(src).eval()
            quantize(model, method, rows, params)
            model.save_pretrained(dest, save_compressed=True)
            seconds = time.perf_counter() - start
            del model
            for f in sorted(src.glob("tokenizer*")):
                shutil.copy2(f, dest / f.name)
            stored = load_hf(dest).eval()  # what a user loads
            table[method] = (score(stored, evals, micro)
                             | divergence(reference, stored, evals, micro) | int_weights(dest))
            ctx.log.info("%s %s in %.1f s: eval_bpb %.4f (fp32 %.4f), KL to fp32 %.2e nats/token",
                         name, method, seconds, table[method]["eval_bpb"],
                         table["fp32"]["eval_bpb"], table[method]["eval_kl"])
        tables[name] = table
    s = params.scheme
    plot_bpb(tables, ctx.out(f"{REPORTS}/bpb.png"), f"int{s.bits} g{s.group_size}")
    return {"scheme": params.scheme.model_dump(), "calibration_rows": len(ids),
            "calibration_tokens": rows.numel(),
            **tables, "experts": experts, "goals": goals(tables, experts)}


def goals(tables: dict, experts: dict) -> dict:
    """Whether GPTQ / AWQ are no worse than RTN, on general held-out bits per byte (`_le_rtn`)
    and on KL to the full-precision model (`_kl_le_rtn`), and whether every expert was
    calibrated on some tokens."""
    out = {}
    for name, t in tables.items():
        for method in ("gptq", "awq"):
            if method in t and "rtn" in t:
                out[f"{name}_{method}_le_rtn"] = t[method]["eval_bpb"] <= t["rtn"]["eval_bpb"]
                out[f"{name}_{method}_kl_le_rtn"] = t[method]["eval_kl"] <= t["rtn"]["eval_kl"]
    if experts:
        out["no_expert_uncalibrated"] = all(n > 0 for layer in experts["calibration_tokens"]
                                            for n in layer)
    return out
