"""Distill's part of the shared loop: a freshly initialised dense student on the teacher cache.

Every step draws `batch.global_seqs` rows of the cache (`data/teacher_logits`) by seeded epoch
permutations (`stages.train.batches.epoch_batch`), reads their tokens from
`data/tokenize/train`, and, when `kd.alpha` > 0, their teacher top-k; the loss is the fused
distillation objective (`stages.model.loss`), plain CE for alpha 0 (the baseline). Evaluation is
pretrain's: the validation split and ingest's held-out slice (bits per byte).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from stages.distill.config import Params
from stages.model import MoEConfig, MoEForCausalLM, save_hf
from stages.model.loss import KDLoss
from stages.model.precision import apply_precision, precision_metadata
from stages.teacher_logits.cache import open_cache, rows_digest
from stages.train.batches import Split, epoch_batch, eval_sets, inputs_targets
from stages.train.loop import flops_per_token
from stages.train.task import Task

__all__ = ["Params", "build", "student_config"]


def student_config(p: Params, vocab_size: int, seq_len: int) -> MoEConfig:
    """The dense Llama-exportable student (full attention in every layer)."""
    s = p.student
    return MoEConfig(
        arch="llama", vocab_size=vocab_size, max_seq_len=seq_len, d_model=s.d_model,
        n_layers=s.n_layers, n_heads=s.n_heads, n_kv_heads=s.n_kv_heads, ffn_size=s.ffn_size,
        rope_theta=s.rope_theta, tie_embeddings=s.tie_embeddings, init_std=s.init_std,
        n_experts=0, top_k=0, expert_size=0, shared_expert_size=0, layer_pattern="F",
        aux_loss_coef=0.0, z_loss_coef=0.0)


def build(p: Params, spec: dict, acc) -> Task:
    tok, cache = Path(spec["tokens_dir"]), Path(spec["cache_dir"])
    manifest = json.loads((tok / "manifest.json").read_text())
    train = Split.open(tok / "train")
    index, logp, idx, seq_ids = open_cache(cache)
    if (index["vocab_size"] != manifest["vocab_size"] or index["seq_len"] != train.seq_len
            or index["tokens_digest"] != rows_digest(train.tokens[seq_ids])):
        raise ValueError(f"{cache} was computed on other tokens than {tok}: re-run "
                         "teacher_logits")
    pad, seq_len = int(train.index["pad_id"]), train.seq_len
    evals = eval_sets({"val": tok / "validation", "eval": tok / "eval"}, pad, p.eval.max_bytes)
    model = MoEForCausalLM(student_config(p, manifest["vocab_size"], seq_len))
    pc = p.precision_config()
    autocast = apply_precision(model, pc, acc.device.type)
    g = p.batch.global_seqs
    total_steps = p.steps(seq_len)
    kd = KDLoss(**p.kd.model_dump()) if p.kd.alpha > 0 else None

    def batch(step: int) -> dict:
        rows = epoch_batch(len(seq_ids), step, g, spec["seed"])
        x, y = inputs_targets(train, np.asarray(seq_ids[rows]), pad)
        out = {"input_ids": x, "targets": y}
        if kd is not None:
            out["teacher_idx"] = torch.from_numpy(idx[rows].astype(np.int64))
            out["teacher_logp"] = torch.from_numpy(logp[rows].astype(np.float32))
        return out

    def forward(model, b: dict):
        return model(b["input_ids"], b["targets"], b.get("teacher_idx"), b.get("teacher_logp"),
                     kd)

    def export(trained, state: dict, out: Path) -> None:
        save_hf(trained, out, precision_metadata(pc), state)
        for f in sorted((tok / "tokenizer").iterdir()):
            shutil.copy2(f, out / f.name)

    return Task(
        model=model, batch=batch, total_steps=total_steps, step_tokens=g * seq_len, evals=evals,
        export=export, flops_per_token=flops_per_token(model, seq_len),
        counts={"total": model.num_params(), "active": model.num_params(active=True),
                "trainable": model.num_params()},
        autocast=autocast, precision=precision_metadata(pc), forward=forward)
