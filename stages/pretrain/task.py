"""Pretrain's part of the shared loop: a freshly initialised MoE on the packed token splits.

Batches are a function of (seed, step) (`stages.train.batches`); evaluation on the validation
split and on ingest's held-out slice (`eval_bpb`: the number every model of the lineage is
compared by). With a WSD schedule the weights at the end of the stable phase are exported too
(`data/pretrain/stable`): continued training (`refine`) starts from there and decays.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stages.model import MoEConfig, MoEForCausalLM, save_hf
from stages.model.precision import apply_precision, precision_metadata
from stages.pretrain.config import Params
from stages.train.batches import Split, eval_sets, global_batch, inputs_targets
from stages.train.loop import flops_per_token
from stages.train.schedule import decay_start
from stages.train.task import Task

__all__ = ["Params", "build"]

STABLE = "stable"  # the snapshot at the end of the WSD stable phase


def model_config(p: Params, vocab_size: int, seq_len: int) -> MoEConfig:
    return MoEConfig(vocab_size=vocab_size, max_seq_len=seq_len, **p.model.model_dump())


def build(p: Params, spec: dict, acc) -> Task:
    tok = Path(spec["tokens_dir"])
    manifest = json.loads((tok / "manifest.json").read_text())
    train = Split.open(tok / "train")
    pad = int(train.index["pad_id"])
    seq_len = train.seq_len
    evals = eval_sets({"val": tok / "validation", "eval": tok / "eval"}, pad, p.eval.max_bytes)
    model = MoEForCausalLM(model_config(p, manifest["vocab_size"], seq_len))
    pc = p.precision_config()
    autocast = apply_precision(model, pc, acc.device.type)
    g = p.batch.global_seqs
    total_steps = p.steps(seq_len)

    def batch(step: int) -> dict:
        x, y = inputs_targets(train, global_batch(train, step, g, spec["seed"], p.sampling), pad)
        return {"input_ids": x, "targets": y}

    def export(trained, state: dict, out: Path) -> None:
        save_hf(trained, out, precision_metadata(pc), state)
        for f in sorted((tok / "tokenizer").iterdir()):
            shutil.copy2(f, out / f.name)

    s = p.schedule
    snapshots = ({decay_start(total_steps, s.warmup_steps, s.decay_fraction): STABLE}
                 if s.kind == "wsd" else {})
    return Task(
        model=model, batch=batch, total_steps=total_steps, step_tokens=g * seq_len, evals=evals,
        export=export, flops_per_token=flops_per_token(model, seq_len),
        counts={"total": model.num_params(), "active": model.num_params(active=True),
                "trainable": model.num_params()},
        autocast=autocast, precision=precision_metadata(pc), snapshots=snapshots)
