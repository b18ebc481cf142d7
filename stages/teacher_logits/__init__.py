"""teacher_logits: the adapted teacher's top-k log-probabilities, computed once for distillation.

A fixed set of training sequences (the first ceil(`tokens` / seq_len) of a seeded permutation of
`data/tokenize/train`, whatever the student will be) is run through the teacher (`data/adapt`,
eval mode, fp32, in batches of 8; chunks of 4 batches are the tasks on the stage's executor:
local processes or Ray, one thread each, so the bytes do not depend on the worker count); at
every input position the k largest next-token log-probabilities (full-vocab
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

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
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
CHUNK_BATCHES = 4  # teacher batches per executor task
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


@dataclass(frozen=True)
class _Chunk:
    """Consecutive teacher batches: one task on the stage's executor."""

    teacher: str
    tokens: str
    rows: np.ndarray
    k: int
    logp_dtype: str
    idx_dtype: str


@functools.lru_cache(maxsize=1)
def _teacher(path: str):
    from stages.model import load_training_model

    return load_training_model(Path(path)).eval()


def _score(chunk: _Chunk) -> list[tuple[np.ndarray, np.ndarray, float, float, int]]:
    """Per batch of the chunk: (top-k log-probs, their ids, gold NLL sum, top-k mass sum, scored
    positions). One thread per task, so the floats are the same whatever the worker count."""
    import torch

    from stages.train.batches import Split, inputs_targets

    model = _teacher(chunk.teacher)  # loaded once per worker process
    train = Split.open(Path(chunk.tokens) / "train")
    pad = int(train.index["pad_id"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = [_score_batch(model, *inputs_targets(train, chunk.rows[s:s + BATCH], pad), chunk)
                   for s in range(0, len(chunk.rows), BATCH)]
    finally:
        torch.set_num_threads(threads)  # a chunk scored in the stage's own process
    return out


def _score_batch(model, x, y, chunk: _Chunk) -> tuple[np.ndarray, np.ndarray, float, float, int]:
    from stages.train.batches import IGNORE

    logp = model(x).logits.float().log_softmax(-1)
    top, top_i = logp.topk(chunk.k, dim=-1)
    valid = y != IGNORE
    gold = logp.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (top.numpy().astype(chunk.logp_dtype), top_i.numpy().astype(chunk.idx_dtype),
            -gold[valid].double().sum().item(), top.exp().sum(-1)[valid].double().sum().item(),
            int(valid.sum()))


def run(params: Params, ctx: StageContext) -> dict:
    import torch

    from stages.model import MoEForCausalLM
    from stages.model.hf import training_config
    from stages.train.batches import Split

    teacher_dir, tok = ctx.dep(TEACHER), ctx.dep(TOKENS)
    vocab = json.loads((tok / "manifest.json").read_text())["vocab_size"]
    train = Split.open(tok / "train")
    positions = train.seq_len - 1
    cfg = training_config(teacher_dir)  # the weights load where the scoring runs, once
    if cfg.vocab_size != vocab:
        raise ValueError(f"{TEACHER} has vocab {cfg.vocab_size}, {TOKENS} {vocab}: the "
                         "teacher must use the pipeline's tokenizer")
    with torch.device("meta"):  # parameter counts for index.json, no memory
        skeleton = MoEForCausalLM(cfg)
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

    step = BATCH * CHUNK_BATCHES
    chunks = [_Chunk(str(teacher_dir), str(tok), seq_ids[i:i + step], k, params.dtype,
                     np.dtype(idx_dtype).name) for i in range(0, n, step)]
    nll = mass = 0.0
    scored = row = 0
    with ctx.executor() as pool:
        results = pool.map(_score, chunks)
        for batches in ctx.progress(results, len(chunks), "teacher top-k"):
            for top, top_i, nll_b, mass_b, scored_b in batches:  # in order: the same sums
                logp_mm[row:row + len(top)] = top
                idx_mm[row:row + len(top)] = top_i
                nll, mass, scored = nll + nll_b, mass + mass_b, scored + scored_b
                row += len(top)
    logp_mm.flush()
    idx_mm.flush()
    del logp_mm, idx_mm
    index = {
        "format": 1, "sequences": n, "positions": positions, "seq_len": train.seq_len, "k": k,
        "vocab_size": vocab, "logp_dtype": params.dtype, "idx_dtype": np.dtype(idx_dtype).name,
        "files": {"logp": "logp.npy", "idx": "idx.npy", "seq_ids": "seq_ids.npy"},
        "tokens_digest": rows_digest(train.tokens[seq_ids]), "seed": ctx.base.seed,
        "teacher": {"arch": cfg.arch, "params": skeleton.num_params(),
                    "params_active": skeleton.num_params(active=True)},
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
