"""`distill` params: the dense student and the distillation loss, plus the shared training params
(`stages.train.config`). Vocabulary and context length come from the tokenize output; the
sequences trained on are the teacher cache's (`teacher_logits`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.params import StrictModel
from stages.train.config import TrainParams


class StudentParams(StrictModel):
    """A dense `stages.model.MoEConfig` (arch llama, n_experts 0, full attention; see there)."""

    d_model: int = Field(192, ge=8)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(6, ge=1)
    n_kv_heads: int = Field(2, ge=1)
    ffn_size: int = Field(512, ge=1, description="SwiGLU hidden size")
    rope_theta: float = Field(10000.0, gt=0)
    tie_embeddings: bool = False
    init_std: float = Field(0.02, gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> StudentParams:
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError("d_model % n_heads and n_heads % n_kv_heads must be 0")
        return self


class KDParams(StrictModel):
    """`(1 - alpha) * CE + alpha * T^2 * D(teacher top-k, student)`: see `stages.model.loss`."""

    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")
    temperature: float = Field(1.0, gt=0, description="T of both softmaxes; the term is x T^2")
    divergence: Literal["forward", "reverse", "skew"] = Field(
        "forward", description="forward KL(q||p) | reverse KL(p~||q) on the top-k | skew "
        "KL(q || lam q + (1 - lam) p)")
    skew: float = Field(0.1, ge=0, lt=1, description="lam of the skew divergence")
    tail: bool = Field(True, description="the teacher's mass outside its top-k as one more "
                       "bucket (matched by the student's); false: renormalise over the top-k")


class Params(TrainParams):
    student: StudentParams = StudentParams()
    kd: KDParams = KDParams()
