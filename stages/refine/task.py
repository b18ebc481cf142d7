"""Refine's part of the shared loop: continued pretraining on the phase-2 mix, then the SFT pass.

Steps [0, cpt_steps) draw from the mix, the remaining steps from the LIMO-style examples; one
schedule spans both (by default a short warmup, then a linear decay to zero: the annealing a WSD
run defers). Evaluated on ingest's held-out text (`eval`, bits per byte) and on synth's held-out
reasoning items (`reasoning`, loss on the responses).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stages.model import load_training_model, save_hf
from stages.model.precision import apply_precision, precision_metadata
from stages.refine.config import Params
from stages.refine.data import Examples, Mixture, counts
from stages.train import corpus, sft
from stages.train.batches import Split, eval_set
from stages.train.loop import flops_per_token
from stages.train.task import EvalSet, Task

__all__ = ["Params", "build"]


def eval_sets(p: Params, spec: dict, sp, seq_len: int) -> dict[str, EvalSet]:
    tok = Path(spec["tokens_dir"])
    heldout = Split.open(tok / "eval")
    return {"eval": eval_set(heldout, int(heldout.index["pad_id"]), p.eval.max_bytes),
            "reasoning": sft.reasoning_set(Path(spec["limo_dir"]) / "eval.jsonl", sp,
                                           p.sft.template, seq_len)}


def plan(p: Params, spec: dict, sp, seq_len: int) -> tuple[Mixture, Examples, int, int]:
    """The mixture, the SFT examples, and the steps of each phase."""
    tok, data = Path(spec["tokens_dir"]), Path(spec["data_dir"])
    splits = {"replay": Split.open(tok / "train")}
    splits |= {name: Split.open(data / name) for name in ("curated", "synthetic")
               if (data / name).is_dir()}
    g = p.batch.global_seqs
    per_step = counts(p, g, {s: s in splits and splits[s].sequences > 0
                             for s in ("curated", "synthetic", "replay")})
    pad = int(splits["replay"].index["pad_id"])
    mixture = Mixture(splits, per_step, spec["seed"], pad)
    examples = Examples(sft.encode(sft.read_jsonl(Path(spec["limo_dir"]) / "train.jsonl"), sp,
                                   p.sft.template, seq_len), spec["seed"])
    cpt_steps = p.steps(seq_len)
    sft_steps = examples.steps(p.sft.epochs, g) if examples.examples else 0
    return mixture, examples, cpt_steps, sft_steps


def build(p: Params, spec: dict, acc) -> Task:
    tok = Path(spec["tokens_dir"])
    sp = corpus.load_tokenizer(tok / "tokenizer")
    seq_len = Split.open(tok / "train").seq_len
    mixture, examples, cpt_steps, sft_steps = plan(p, spec, sp, seq_len)
    g = p.batch.global_seqs

    def batch(step: int) -> dict:
        return (mixture.batch(step) if step < cpt_steps
                else examples.batch(step - cpt_steps, g))

    model = load_training_model(spec["init_dir"])
    pc = p.precision_config()
    autocast = apply_precision(model, pc, acc.device.type)

    def export(trained, state: dict, out: Path) -> None:
        save_hf(trained, out, precision_metadata(pc), state)
        for f in sorted((tok / "tokenizer").iterdir()):
            shutil.copy2(f, out / f.name)
        config = json.loads((out / "tokenizer_config.json").read_text())
        config["chat_template"] = sft.chat_template(p.sft.template)
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True)
                                                   + "\n")

    return Task(
        model=model, batch=batch, total_steps=cpt_steps + sft_steps, step_tokens=g * seq_len,
        evals=eval_sets(p, spec, sp, seq_len), export=export,
        flops_per_token=flops_per_token(model, seq_len),
        counts={"total": model.num_params(), "active": model.num_params(active=True),
                "trainable": model.num_params()},
        autocast=autocast, precision=precision_metadata(pc))
