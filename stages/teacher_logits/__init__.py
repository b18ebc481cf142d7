"""teacher_logits: the adapted teacher's top-k log-probabilities, computed once for distillation.

A fixed set of training sequences (the first ceil(`tokens` / seq_len) of a seeded permutation of
`data/tokenize/train`, whatever the student will be) is run through the teacher (`data/adapt`,
eval mode, fp32); at every input position the k largest next-token log-probabilities (full-vocab
log-softmax, sorted descending) and their token ids are kept. `distill` trains on exactly these
sequences, so a student hyperparameter never re-runs the teacher.

`data/teacher_logits/` (memory-mappable .npy, `index.json` describes them):

- `logp.npy`  (sequences, seq_len - 1, k) `dtype` (float16 by default): log-probs
- `idx.npy`   (sequences, seq_len - 1, k) uint16 (uint32 if vocab > 65536): token ids
- `seq_ids.npy` (sequences,) int64: rows of `data/tokenize/train`, ascending

Position j of a row holds the teacher's prediction of token j + 1 of the sequence, i.e. of
`targets[j]` in `stages.train.batches.inputs_targets`. `index.json` also records the vocab size
and an xxh3 of the selected token rows, which `distill` checks (`cache.py` reads the cache).
"""

from __future__ import annotations

import json
import math
from typing import Literal

import numpy as np
from pydantic import Field

from stages.params import StrictModel
from stages.runner import StageContext
from stages.teacher_logits.cache import rows_digest

TEACHER = "data/adapt"
TOKENS = "data/tokenize"
OUT = "data/teacher_logits"
BATCH = 8  # sequences per teacher forward: a constant, since another batch could round otherwise
SALT = 0x7EAC4E12  # the selection's own stream of base.seed (not pretrain's epoch permutations)


class Params(StrictModel):
    tokens: int = Field(131_072, ge=1, description="training tokens to score, rounded up to whole "
                        "sequences (all of data/tokenize/train if it holds fewer)")
    k: int = Field(128, ge=1, description="top-k log-probs kept per position")
    dtype: Literal["float16", "float32"] = Field("float16", description="of the log-probs")


def select(n_sequences: int, seq_len: int, tokens: int, seed: int) -> np.ndarray:
    """The sequences scored: a seeded choice independent of any student param, ascending."""
    count = min(n_sequences, math.ceil(tokens / seq_len))
    return np.sort(np.random.default_rng([seed, SALT]).permutation(n_sequences)[:count])


def run(params: Params, ctx: StageContext) -> dict:
    import torch

    from stages.model import load_training_model
    from stages.train.batches import IGNORE, Split, inputs_targets

    teacher_dir, tok = ctx.dep(TEACHER), ctx.dep(TOKENS)
    vocab = json.loads((tok / "manifest.json").read_text())["vocab_size"]
    train = Split.open(tok / "train")
    pad, positions = int(train.index["pad_id"]), train.seq_len - 1
    torch.set_num_threads(ctx.workers)
    model = load_training_model(teacher_dir).eval()
    if model.config.vocab_size != vocab:
        raise ValueError(f"{TEACHER} has vocab {model.config.vocab_size}, {TOKENS} {vocab}: the "
                         "teacher must use the pipeline's tokenizer")
    k = min(params.k, vocab)
    seq_ids = select(train.sequences, train.seq_len, params.tokens, ctx.base.seed)
    n = len(seq_ids)
    idx_dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    out = ctx.out(OUT)
    out.mkdir(parents=True, exist_ok=True)
    shape = (n, positions, k)
    logp_mm = np.lib.format.open_memmap(out / "logp.npy", "w+", np.dtype(params.dtype), shape)
    idx_mm = np.lib.format.open_memmap(out / "idx.npy", "w+", idx_dtype, shape)
    np.save(out / "seq_ids.npy", seq_ids.astype(np.int64))

    nll = mass = 0.0
    scored = 0
    batches = range(0, n, BATCH)
    with torch.no_grad():
        for start in ctx.progress(batches, len(batches), "teacher top-k"):
            rows = seq_ids[start:start + BATCH]
            x, y = inputs_targets(train, rows, pad)
            logp = model(x).logits.float().log_softmax(-1)
            top, top_i = logp.topk(k, dim=-1)
            valid = y != IGNORE
            gold = logp.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            nll -= gold[valid].double().sum().item()
            mass += top.exp().sum(-1)[valid].double().sum().item()
            scored += int(valid.sum())
            logp_mm[start:start + len(rows)] = top.numpy().astype(params.dtype)
            idx_mm[start:start + len(rows)] = top_i.numpy().astype(idx_dtype)
    logp_mm.flush()
    idx_mm.flush()
    del logp_mm, idx_mm
    index = {
        "format": 1, "sequences": n, "positions": positions, "seq_len": train.seq_len, "k": k,
        "vocab_size": vocab, "logp_dtype": params.dtype, "idx_dtype": np.dtype(idx_dtype).name,
        "files": {"logp": "logp.npy", "idx": "idx.npy", "seq_ids": "seq_ids.npy"},
        "tokens_digest": rows_digest(train.tokens[seq_ids]), "seed": ctx.base.seed,
        "teacher": {"arch": model.config.arch, "params": model.num_params(),
                    "params_active": model.num_params(active=True)},
    }
    (out / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    ce = nll / max(scored, 1)
    ctx.log.info("teacher top-%d on %d sequences (%d scored tokens): CE %.4f, top-k mass %.4f, "
                 "%.1f MB", k, n, scored, ce, mass / max(scored, 1), size / 2**20)
    return {
        "sequences": n, "train_sequences": train.sequences, "tokens_scored": scored,
        "positions_stored": n * positions, "k": k, "logp_dtype": params.dtype,
        "teacher_ce": ce, "teacher_ppl": math.exp(min(ce, 50.0)),
        "topk_mass_mean": mass / max(scored, 1), "bytes": size,
        "bytes_per_position": size / max(n * positions, 1),
    }
