"""Params every training stage shares: precision, optimizer, schedule, batch, budget, evaluation.

A stage's `Params` subclasses `TrainParams` and adds only what differs (its model, data, loss).
`checkpoint` knobs do not change the result (resume is exact): stages declare every other key and
leave `checkpoint` out, so changing the cadence never makes a stage stale.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from stages.model.config import RECIPES, PrecisionConfig
from stages.params import StrictModel


class PrecisionParams(StrictModel):
    mode: Literal[tuple(RECIPES)] = "fp32"  # type: ignore[valid-type]
    recipe: str | None = Field(None, description="None: the mode's default (see precision.py)")
    amax_history_len: int = Field(16, ge=1)
    margin: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _recipe_known(self) -> PrecisionParams:
        PrecisionConfig(**self.model_dump())  # the model's own check, before any work starts
        return self


class OptimizerParams(StrictModel):
    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0, description="on matrices only, not norms")
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")


class ScheduleParams(StrictModel):
    kind: Literal["wsd", "cosine"] = "wsd"
    warmup_steps: int = Field(20, ge=0)
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of steps decaying")
    min_lr_ratio: float = Field(0.1, ge=0, le=1)


class BatchParams(StrictModel):
    global_seqs: int = Field(16, ge=1, description="sequences per optimizer step, all processes")
    micro_seqs: int = Field(8, ge=1, description="sequences per forward/backward per process")


class EvalParams(StrictModel):
    every_steps: int = Field(25, ge=1, description="evaluation cadence")
    micro_seqs: int = Field(8, ge=1)
    max_bytes: int = Field(0, ge=0, description="evaluate, in order, each document of a split "
                           "that still fits in this many UTF-8 bytes of text (same texts for any "
                           "tokenizer); 0 = all")


class CheckpointParams(StrictModel):
    every_steps: int = Field(25, ge=1)
    keep_last: int = Field(2, ge=1)


class TrainParams(StrictModel):
    precision: PrecisionParams = PrecisionParams()
    optimizer: OptimizerParams = OptimizerParams()
    schedule: ScheduleParams = ScheduleParams()
    batch: BatchParams = BatchParams()
    train_tokens: int = Field(320_000, ge=1, description="stop after this many sequence tokens "
                              "(rounded up to whole steps)")
    compile: Literal["none", "kernels", "model"] = Field(
        "none", description="none: eager PyTorch; kernels: the model's elementwise work (RMSNorm, "
        "RoPE, SwiGLU) as torch.compile'd fused kernels, the rest eager (~10% faster CPU steps for "
        "a few seconds of compiling per process, ~20 s the first time on a machine); model: "
        "torch.compile the whole model (GPUs)")
    seed: int | None = Field(None, description="model init and data order; None = base.seed "
                             "(what a seed ablation varies, the data splits staying put)")
    log_every: int = Field(5, ge=1)
    eval: EvalParams = EvalParams()
    checkpoint: CheckpointParams = CheckpointParams()

    def steps(self, seq_len: int) -> int:
        """Optimizer steps that cover `train_tokens` at this global batch."""
        return math.ceil(self.train_tokens / (self.batch.global_seqs * seq_len))

    def precision_config(self) -> PrecisionConfig:
        return PrecisionConfig(**self.precision.model_dump())
