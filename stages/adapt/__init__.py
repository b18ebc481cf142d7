"""Adapt: domain adaptation of the refined model by full fine-tuning, LoRA or QLoRA (`adapt.mode`).

The domain corpus is the curated documents of one curation label (`adapt.corpus`: the `code`
domain by default, or an ingest source), packed with the pipeline's tokenizer; the shared training
loop (`stages.train`) runs `stages.adapt.task` on it from `data/refine`. Evaluation before and after
(and on cadence), in bits per byte: general held-out text (`eval_bpb`, as pretrain and refine
measure it), the domain's held-out documents (`domain_bpb`: what adaptation gains) and the
held-out documents of the other labels (`other_bpb`: what it forgets).

The output `data/adapt` is a merged full-precision transformers checkpoint (`AutoModelForCausalLM`
and `AutoTokenizer` load it), the LoRA adapter itself in `adapter/` (peft; lora and qlora), the
packed domain splits in `corpus/` and `training.json`. Metrics (bits per byte before and after on
both sets, trainable parameters and their fraction, memory, throughput) go to
`reports/adapt/metrics.json`; curves to `reports/adapt/{train,eval}_curve.json` and
`reports/adapt/loss.png`. See docs/adapt.md.
"""

from __future__ import annotations

from stages.adapt.config import Params
from stages.runner import StageContext

__all__ = ["Params", "run"]

BASE = "data/refine"
TOKENS = "data/tokenize"
CORPUS = "data/dedup/corpus"
HELDOUT = "data/ingest/heldout"
OUT = "data/adapt"
CORPUS_SPLITS = "corpus"  # the packed domain splits, inside the output
CHECKPOINTS = "checkpoints/adapt"
REPORTS = "reports/adapt"
LABELS = {"eval": "held-out (general)", "domain": "held-out (domain)",
          "other": "held-out (other domains)"}


def run(params: Params, ctx: StageContext) -> dict:
    from stages.adapt.data import pack_domain
    from stages.train import launch

    base, tokens, corpus, heldout = (ctx.dep(d) for d in (BASE, TOKENS, CORPUS, HELDOUT))
    out = ctx.out(OUT)
    splits = pack_domain(params.corpus, corpus, heldout, tokens, out / CORPUS_SPLITS,
                         params.eval.max_bytes)
    ctx.log.info("%s %s: %d documents, %d tokens to train on; %d held out (and %d of others)",
                 params.corpus.by, params.corpus.name, splits["train"]["docs"],
                 splits["train"]["tokens"], splits["domain"]["docs"],
                 splits.get("other", {}).get("docs", 0))
    training, report = launch.train(
        ctx, params, "stages.adapt.task", [base, tokens, corpus, heldout], out,
        ctx.persist(CHECKPOINTS),
        {"model_dir": str(base), "tokens_dir": str(tokens), "domain_dir": str(out / CORPUS_SPLITS)})
    launch.curves(ctx, training, REPORTS, LABELS)
    metrics = launch.metrics(training, report, params.precision.mode)
    return metrics | {
        "mode": params.mode,
        "params_trainable_fraction": metrics["params_trainable"] / metrics["params_total"],
        "domain_docs": splits["train"]["docs"], "domain_tokens": splits["train"]["tokens"],
        "domain_heldout_docs": splits["domain"]["docs"],
    }
