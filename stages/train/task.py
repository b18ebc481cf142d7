"""What a training stage gives the shared loop: its model, data, loss and export.

A stage's task module (named in the launch spec) defines `Params` (a `TrainParams` subclass) and
`build(params, spec, accelerator) -> Task`. Everything else (optimizer, schedule, gradient
accumulation, processes, exact resume, evaluation, progress, reports) is the loop's, the same for
every stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class EvalSet:
    """Windows of held-out tokens: `targets` IGNORE where not scored. `n_bytes` is the UTF-8 size
    of the scored text (bits per byte), or None for a loss-only set (e.g. reasoning answers)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    n_bytes: int | None


def default_forward(model: nn.Module, batch: dict[str, torch.Tensor]):
    """The model's own loss: next-token cross-entropy (+ its regularisers)."""
    return model(batch["input_ids"], batch["targets"])


@dataclass
class Task:
    model: nn.Module  # what trains: its parameters that require grad are optimised
    batch: Callable[[int], dict[str, torch.Tensor]]  # step -> global batch: input_ids, targets, ...
    total_steps: int
    step_tokens: int  # sequence tokens per optimizer step
    evals: dict[str, EvalSet]  # key -> set; rows are `<key>_loss` (and `_ppl`, `_bpb`)
    export: Callable[[nn.Module, dict, Path], None]  # (model, full state dict, directory)
    flops_per_token: float  # training FLOPs per token (MFU)
    counts: dict[str, int]  # parameter counts for the report: total, active, trainable
    autocast: Callable  # the precision mode's context
    precision: dict  # what the checkpoint records about the precision
    # (model, micro-batch) -> output with `token_loss` (mean over the micro-batch's targets),
    # `loss` (token_loss + regularisers) and `ce` (logged)
    forward: Callable = default_forward
    snapshots: dict[int, str] = field(default_factory=dict)  # step -> name: weights exported to
    # out/<name> as they were after that many steps (e.g. the end of a WSD stable phase)
