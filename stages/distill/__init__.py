"""distill: a dense student trained on the adapted teacher's cached top-k, and its no-KD baseline.

Two runs of the shared loop (`stages.distill.task`) on exactly the sequences `teacher_logits`
scored, at the same token budget and from the same initialisation: the baseline (plain CE,
`kd.alpha` 0) and the KD student (`(1 - alpha) CE + alpha T^2 D` on the teacher's top-k). Each
resumes from its own checkpoints (`checkpoints/distill/{baseline,kd}`); the baseline's identity
leaves out `kd` and the teacher's log-probs, so a KD edit never retrains it.

Outputs: `data/distill/` the KD student (a transformers Llama checkpoint llama.cpp converts, the
tokenizer, `training.json`) and `data/distill/baseline/` the same for the baseline. Reports: the
KD run's `loss.png` and curves (the baseline's under `baseline/`), `kd_vs_baseline.png`, and
metrics: the KD student's (as pretrain's), `baseline_*`, and `tokens_to_target_fraction`: the
tokens the KD student needs to reach the baseline's final held-out loss (linear interpolation
between evaluations) over the baseline's budget; None if it never does.
"""

from __future__ import annotations

from stages.distill.config import KDParams, Params
from stages.runner import StageContext

__all__ = ["Params", "run"]

CACHE = "data/teacher_logits"
TOKENS = "data/tokenize"
OUT = "data/distill"
CHECKPOINTS = "checkpoints/distill"
REPORTS = "reports/distill"
TASK = "stages.distill.task"
LABELS = {"val": "validation", "eval": "held-out (ingest)"}
BASELINE_KEYS = ("eval_loss", "eval_bpb", "eval_bpb_at_init", "val_loss", "val_bpb",
                 "train_loss", "tokens_per_s_step", "resumed_from_step")


def run(params: Params, ctx: StageContext) -> dict:
    from stages.distill.report import plot_kd_vs_baseline
    from stages.train import launch
    from stages.train.report import tokens_to_reach

    cache, tokens = ctx.dep(CACHE), ctx.dep(TOKENS)
    ckpt, out = ctx.persist(CHECKPOINTS), ctx.out(OUT)
    extra = {"cache_dir": str(cache), "tokens_dir": str(tokens)}
    # The baseline reads only the cache's sequence ids: its identity hashes those, not the
    # teacher's log-probs, and its params carry no KD settings.
    baseline = params.model_copy(update={"kd": KDParams(alpha=0.0)})
    base_training, base_report = launch.train(
        ctx, baseline, TASK, [cache / "seq_ids.npy", tokens], out / "baseline",
        ckpt / "baseline", extra)
    training, report = launch.train(ctx, params, TASK, [cache, tokens], out, ckpt / "kd", extra)

    launch.curves(ctx, training, REPORTS, LABELS)
    launch.curves(ctx, base_training, f"{REPORTS}/baseline", LABELS)
    target = base_training["evals"][-1]["eval_loss"]
    reached = tokens_to_reach(training["evals"], "eval_loss", target)
    fraction = reached / base_training["tokens"] if reached is not None else None
    plot_kd_vs_baseline(training["evals"], base_training["evals"], target, reached,
                        ctx.out(f"{REPORTS}/kd_vs_baseline.png"), params.kd)
    base = launch.metrics(base_training, base_report, params.precision.mode)
    ctx.log.info("held-out loss: KD %.4f, baseline %.4f; KD reaches the baseline's final loss "
                 "at %s of its tokens", training["evals"][-1]["eval_loss"], target,
                 f"{fraction:.3f}" if fraction is not None else "never (not within the budget)")
    return launch.metrics(training, report, params.precision.mode) | {
        f"baseline_{k}": base[k] for k in BASELINE_KEYS} | {
        "target_eval_loss": target, "tokens_to_target": reached,
        "tokens_to_target_fraction": fraction, "kd": params.kd.model_dump(),
        "bpb_gain_vs_baseline": base["eval_bpb"] - training["evals"][-1]["eval_bpb"],
    }
