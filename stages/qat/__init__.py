"""qat: quantization-aware training of the distilled student (torchao), and its control.

Two runs of the shared loop (`stages.qat.task`) from the distilled student, on the curated
training rows at the same budget and schedule: the QAT run trains with the Linears
fake-quantized (`qat.quant`: int4 weights per group, optionally int8 dynamic activations) and is
converted to a real torchao-quantized model; the control trains in full precision and is then
quantized round-to-nearest by the same config. The control separates what QAT buys from what the
extra training buys: `recovery` is the share of the control's quantization loss (its RTN bits per
byte minus its full-precision bits per byte) that QAT wins back. Each run resumes from its own
checkpoints (`checkpoints/qat/{qat,control}`); the control's identity leaves out `quant`, so a
quantization edit never retrains it.

Outputs: `data/qat/` the QAT model (torchao int4 weights in safetensors, `AutoModelForCausalLM`
loads it), `data/qat/float/` its trained full-precision weights (what llama.cpp converts),
`data/qat/control/` the same two for the control. Metrics: the QAT run's (as every training
stage's), a table scored by the shared held-out evaluation (`stages.quant.heldout`) of the
distilled student and its RTN, the control and its RTN, and the QAT model, and `recovery`.
Reports: curves and `loss.png` (the control's under `control/`), `bpb.png`. See
docs/quantization.md.
"""

from __future__ import annotations

from stages.qat.config import Params, QuantParams
from stages.runner import StageContext

__all__ = ["Params", "run"]

STUDENT = "data/distill"
TOKENS = "data/tokenize"
ADAPT = "data/adapt"
OUT = "data/qat"
CONTROL = "control"
CHECKPOINTS = "checkpoints/qat"
REPORTS = "reports/qat"
TASK = "stages.qat.task"
LABELS = {"eval": "held-out (general)", "domain": "held-out (domain)"}


def run(params: Params, ctx: StageContext) -> dict:
    from stages.model.hf import load_hf
    from stages.qat.fakequant import load_quantized, save_quantized
    from stages.qat.task import FLOAT
    from stages.quant.heldout import DOMAIN_SPLIT, heldout_sets, score
    from stages.quant.ondisk import int_weights
    from stages.quant.report import plot_bpb
    from stages.train import launch

    student, tokens, adapt = ctx.dep(STUDENT), ctx.dep(TOKENS), ctx.dep(ADAPT)
    out, ckpt = ctx.out(OUT), ctx.persist(CHECKPOINTS)
    inputs = [student, tokens, adapt / DOMAIN_SPLIT]
    extra = {"student_dir": str(student), "tokens_dir": str(tokens), "adapt_dir": str(adapt)}
    control = params.model_copy(update={"quant": QuantParams()})
    ctrl_training, _ = launch.train(ctx, control, TASK, inputs, out / CONTROL, ckpt / CONTROL,
                                    extra | {"fake_quant": False})
    save_quantized(out / CONTROL / FLOAT, out / CONTROL, params.quant)
    training, report = launch.train(ctx, params, TASK, inputs, out, ckpt / "qat",
                                    extra | {"fake_quant": True})
    launch.curves(ctx, training, REPORTS, LABELS)
    launch.curves(ctx, ctrl_training, f"{REPORTS}/{CONTROL}", LABELS)

    evals = heldout_sets(tokens, adapt, params.eval.max_bytes)
    micro = params.eval.micro_seqs
    table = {
        "student": score(load_hf(student).eval(), evals, micro),
        "student_rtn": score(load_quantized(student, params.quant).eval(), evals, micro),
        "control": score(load_hf(out / CONTROL / FLOAT).eval(), evals, micro),
        "control_rtn": score(load_hf(out / CONTROL).eval(), evals, micro),
        "qat": score(load_hf(out).eval(), evals, micro) | int_weights(out),
    }
    recovery = {key: recovered(table, key) for key in ("eval_bpb", "domain_bpb")}
    q = params.quant
    plot_bpb({"student": table}, ctx.out(f"{REPORTS}/bpb.png"),
             f"int{q.bits} g{q.group_size}" + (" + int8 act" if q.activations != "none" else ""))
    ctx.log.info("held-out bits per byte: control %.4f, its RTN %.4f, QAT %.4f: QAT recovers "
                 "%.0f%% of the RTN loss", table["control"]["eval_bpb"],
                 table["control_rtn"]["eval_bpb"], table["qat"]["eval_bpb"],
                 100 * recovery["eval_bpb"] if recovery["eval_bpb"] is not None else float("nan"))
    return launch.metrics(training, report, params.precision.mode) | {
        "quant": q.model_dump(), "table": table, "recovery": recovery,
        "recovery_goal_met": recovery["eval_bpb"] is not None and recovery["eval_bpb"] >= 0.3,
    }


MIN_RTN_LOSS = 1e-3  # bits per byte: below it RTN loses nothing measurable, nothing to recover


def recovered(table: dict, key: str) -> float | None:
    """(control RTN - QAT) / (control RTN - control) on `key`; None when RTN loses less than
    `MIN_RTN_LOSS` (a ratio over a vanishing gap says nothing: the demo once gave 90x)."""
    gap = table["control_rtn"][key] - table["control"][key]
    return (table["control_rtn"][key] - table["qat"][key]) / gap if gap >= MIN_RTN_LOSS else None
