"""Refine: phase 2 (annealing) from pretrain's stable-phase checkpoint, then a LIMO-style SFT pass.

1. Data (`data.py`), chosen by curation metadata: the curated documents with the highest
   textbook score per domain (`curated_top_fraction`), synth's accepted documents (optionally
   only some template families), and replay of phase-1 training sequences; each step takes
   `mix` shares of its sequences from them. Then `sft.epochs` passes over synth's LIMO train
   set in the `sft.template` format, loss on the responses only (`stages.train.sft`).
2. Training: the shared loop (`stages.train`) runs `stages.refine.task` from
   `data/pretrain/stable` (the end of pretrain's WSD stable phase: refine is the decay, by
   default to zero) or pretrain's final weights (`init: final`).
3. Output `data/refine`: a transformers checkpoint whose tokenizer carries the SFT format as its
   chat template. Metrics: held-out bits per byte (`eval_bpb`) and reasoning loss
   (`reasoning_loss`) after refine, at its start (`*_at_init`) and for pretrain's final model
   (`phase1_*`), with the usual training numbers; curves and `reports/refine/loss.png`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from stages.refine.config import Params
from stages.runner import StageContext, StageInputError

__all__ = ["Params", "run"]

PRETRAIN = "data/pretrain"
TOKENS = "data/tokenize"
DEDUP = "data/dedup/corpus"
SIGNALS = "data/signals"
GENERATED = "data/synth/generated"
LIMO = "data/synth/limo"
OUT = "data/refine"
CHECKPOINTS = "checkpoints/refine"
REPORTS = "reports/refine"
LABELS = {"eval": "held-out (ingest)", "reasoning": "held-out reasoning (responses)"}


def run(params: Params, ctx: StageContext) -> dict:
    from stages.model import load_training_model
    from stages.refine import data
    from stages.refine.task import eval_sets, plan
    from stages.train import corpus, launch
    from stages.train.batches import Split
    from stages.train.loop import evaluate_model

    pretrain, tokens, limo = ctx.dep(PRETRAIN), ctx.dep(TOKENS), ctx.dep(LIMO)
    init = pretrain / "stable" if params.init == "stable" else pretrain
    if not (init / "config.json").is_file():
        raise StageInputError(
            f"{init.relative_to(ctx.root)} holds no checkpoint: pretrain exports its stable-phase "
            "weights only with a WSD schedule; set refine.init: final or pretrain.schedule.kind: "
            "wsd")
    sp = corpus.load_tokenizer(tokens / "tokenizer")
    seq_len = Split.open(tokens / "train").seq_len
    with tempfile.TemporaryDirectory(prefix="refine-data-") as scratch:
        chosen = {
            "curated": data.textbook_top(ctx.dep(DEDUP), ctx.dep(SIGNALS),
                                         params.curated_top_fraction),
            "synthetic": data.synthetic_docs(ctx.dep(GENERATED), params.synthetic_templates),
        }
        for name, docs in chosen.items():
            if docs:
                corpus.pack(docs, sp, seq_len, Path(scratch) / name, {"split": name})
        spec = {"tokens_dir": str(tokens), "data_dir": scratch, "limo_dir": str(limo),
                "init_dir": str(init), "seed": ctx.base.seed}
        mixture, examples, cpt_steps, sft_steps = plan(params, spec, sp, seq_len)
        inputs = [Path(scratch), tokens / "train", tokens / "eval", tokens / "tokenizer", limo,
                  init]
        training, report = launch.train(ctx, params, "stages.refine.task", inputs, ctx.out(OUT),
                                        ctx.persist(CHECKPOINTS), spec)
        evals = eval_sets(params, spec, sp, seq_len)
    phase1 = evaluate_model(load_training_model(pretrain).eval(), evals, params.eval.micro_seqs)
    step_tokens = params.batch.global_seqs * seq_len
    marks = {cpt_steps * step_tokens: "SFT"} if sft_steps else {}
    launch.curves(ctx, training, REPORTS, LABELS, marks)
    return launch.metrics(training, report, params.precision.mode) | {
        "init": params.init, "cpt_steps": cpt_steps, "sft_steps": sft_steps,
        "sft_examples": len(examples.examples),
        "docs": {name: len(docs) for name, docs in chosen.items()},
        "sequences_per_step": mixture.per_step,
        **{f"phase1_{k}": v for k, v in phase1.items() if k.endswith(("_loss", "_bpb"))},
    }
