"""Learning-rate schedules: multipliers of the peak rate for `torch.optim.lr_scheduler.LambdaLR`.

- `cosine`: linear warmup, then cosine decay to `min_lr_ratio` at the last step.
- `wsd` (warmup-stable-decay, Hu et al. 2024 "MiniCPM"): linear warmup, constant, then a linear
  decay to `min_lr_ratio` over the last `decay_fraction` of the steps. A run can be continued from
  any checkpoint of the stable phase, which is why continued pre-training prefers it.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_multiplier(kind: str, total_steps: int, warmup_steps: int, min_lr_ratio: float,
                  decay_fraction: float) -> Callable[[int], float]:
    warmup = min(warmup_steps, max(total_steps - 1, 0))

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup - 1)
        cos = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return min_lr_ratio + (1 - min_lr_ratio) * cos

    start = decay_start(total_steps, warmup_steps, decay_fraction)

    def wsd(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < start:
            return 1.0
        progress = (step - start + 1) / max(1, total_steps - start)
        return 1.0 - (1.0 - min_lr_ratio) * min(progress, 1.0)

    return {"cosine": cosine, "wsd": wsd}[kind]


def decay_start(total_steps: int, warmup_steps: int, decay_fraction: float) -> int:
    """The first step of a WSD decay: the steps before it are the stable phase, whose end is the
    checkpoint continued training starts from."""
    warmup = min(warmup_steps, max(total_steps - 1, 0))
    return max(warmup, total_steps - max(1, round(decay_fraction * total_steps)))
