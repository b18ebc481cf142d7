"""`pretrain` params: the model and the sampling of the packed tokens, plus the shared training
params (`stages.train.config`). The vocabulary size and context length are not params here: they
come from the `tokenize` output the stage trains on."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.model.config import ARCHS
from stages.params import StrictModel
from stages.train.config import TrainParams


class ModelParams(StrictModel):
    """Fields of `stages.model.MoEConfig` (see there), minus vocab_size and max_seq_len."""

    arch: Literal[ARCHS] = "qwen2_moe"  # type: ignore[valid-type]
    d_model: int = Field(256, ge=8)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(8, ge=1)
    n_kv_heads: int = Field(2, ge=1)
    n_experts: int = Field(8, ge=1)
    top_k: int = Field(2, ge=1)
    expert_size: int = Field(512, ge=1)
    shared_expert_size: int = Field(512, ge=0)
    sliding_window: int = Field(128, ge=1)
    layer_pattern: str = Field("SSSF", pattern="^[SF]+$")
    rope_theta: float = Field(10000.0, gt=0)
    aux_loss_coef: float = Field(0.01, ge=0)
    z_loss_coef: float = Field(0.001, ge=0)
    tie_embeddings: bool = False
    init_std: float = Field(0.02, gt=0)


class Params(TrainParams):
    model: ModelParams = ModelParams()
    sampling: Literal["softdedup", "uniform"] = Field(
        "softdedup", description="softdedup: draw sequences in proportion to their SoftDedup "
        "weight; uniform: seeded epoch permutations")
