"""Pretrain: phase-1 training of the MoE model on the packed tokens, resumable exactly.

The shared training loop (`stages.train`) runs `stages.pretrain.task`: a freshly initialised MoE
(`stages.model`) on `data/tokenize`'s train split, evaluated on its validation split and on
ingest's held-out slice. Identity, resume and launch (one process, gloo, DDP, FSDP) are the loop's.

The output `data/pretrain` is a transformers checkpoint (`AutoModelForCausalLM` and
`AutoTokenizer` load it), `stable/` (the same at the end of the WSD stable phase, for continued
training) and `training.json` (curve and evaluations; deterministic). Metrics (losses,
perplexity, bits per byte on the held-out text, tokens/s, MFU, overhead) go to
`reports/pretrain/metrics.json`; curves to `reports/pretrain/{train,eval}_curve.json` (DVC
plots, x = tokens) and `reports/pretrain/loss.png`.
"""

from __future__ import annotations

from stages.pretrain.config import Params
from stages.runner import StageContext

__all__ = ["Params", "run"]

TOKENS = "data/tokenize"
OUT = "data/pretrain"
CHECKPOINTS = "checkpoints/pretrain"
REPORTS = "reports/pretrain"
LABELS = {"val": "validation", "eval": "held-out (ingest)"}


def run(params: Params, ctx: StageContext) -> dict:
    from stages.train import launch

    tokens = ctx.dep(TOKENS)
    training, report = launch.train(ctx, params, "stages.pretrain.task", [tokens], ctx.out(OUT),
                                    ctx.persist(CHECKPOINTS), {"tokens_dir": str(tokens)})
    launch.curves(ctx, training, REPORTS, LABELS)
    return launch.metrics(training, report, params.precision.mode)
