"""Calibration data and how the teacher's router spreads it over the experts."""

from __future__ import annotations

import numpy as np
import torch

from stages.ptq.config import CalibrationParams, MoEParams
from stages.train.batches import Split

STREAM = 7  # the calibration sample's own seeded stream (seed, STREAM)


def calibration_rows(train: Split, p: CalibrationParams, seed: int
                     ) -> tuple[np.ndarray, torch.Tensor]:
    """A seeded sample of `p.samples` packed training rows whose first `p.seq_len` tokens hold
    no padding (all of them if the corpus has fewer: the caller reports how many): (their sorted
    row indices, the token prefixes as a long tensor)."""
    if p.seq_len > train.seq_len:
        raise ValueError(f"ptq.calibration.seq_len {p.seq_len} exceeds the packed sequence length "
                         f"{train.seq_len} of {train.dir}; lower it")
    prefixes = np.asarray(train.tokens[:, :p.seq_len])
    clean = np.flatnonzero((prefixes != int(train.index["pad_id"])).all(axis=1))
    if not len(clean):
        raise ValueError(f"{train.dir} has no row without padding in its first {p.seq_len} "
                         "tokens to calibrate on; lower ptq.calibration.seq_len")
    n = min(p.samples, len(clean))
    ids = np.sort(np.random.default_rng([seed, STREAM]).choice(clean, n, replace=False))
    return ids, torch.from_numpy(prefixes[ids].astype(np.int64))


def moe_routers(model) -> list[torch.nn.Module]:
    """The router of each MoE layer of a transformers Qwen2-MoE / Mixtral model (in order)."""
    return [layer.mlp.gate for layer in model.model.layers if hasattr(layer.mlp, "experts")]


@torch.no_grad()
def routed_tokens(model, rows: torch.Tensor, micro: int) -> list[list[int]]:
    """Calibration tokens the router sends to each expert, per MoE layer (top-k: a token counts
    once for each of its k experts)."""
    routers = moe_routers(model)
    counts = [torch.zeros(r.num_experts, dtype=torch.long) for r in routers]

    def counter(i: int):
        def hook(module, args, output) -> None:  # output: (logits, scores, expert indices)
            counts[i] += torch.bincount(output[2].flatten(), minlength=module.num_experts)
        return hook

    handles = [r.register_forward_hook(counter(i)) for i, r in enumerate(routers)]
    try:
        for start in range(0, len(rows), micro):
            model(input_ids=rows[start:start + micro])
    finally:
        for h in handles:
            h.remove()
    return [c.tolist() for c in counts]


def calibration_tokens(routed: list[list[int]], total: int, p: MoEParams) -> list[list[int]]:
    """Tokens each expert is calibrated on: every token with `calibrate_all_experts`, else its
    routed tokens, which must reach `min_expert_tokens` (an error names every expert short)."""
    if p.calibrate_all_experts:
        return [[total] * len(layer) for layer in routed]
    short = [f"layer {i} expert {e}: {n}" for i, layer in enumerate(routed)
             for e, n in enumerate(layer) if n < p.min_expert_tokens]
    if short:
        raise ValueError(
            f"{len(short)} experts get fewer than ptq.moe.min_expert_tokens "
            f"({p.min_expert_tokens}) routed calibration tokens ({'; '.join(short)}): their "
            "scales would come from too little data. Set ptq.moe.calibrate_all_experts: true "
            "(every expert sees every token) or raise ptq.calibration.samples")
    return routed
