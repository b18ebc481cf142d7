"""`qat` params: the fake quantization, plus the shared training params (`stages.train.config`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.params import StrictModel
from stages.train.config import TrainParams


class QuantParams(StrictModel):
    """torchao's integer weight quantization (group-wise), optionally int8 dynamic activations."""

    bits: int = Field(4, ge=2, le=8, description="weight bits")
    group_size: int = Field(32, ge=8, description="weights per scale along the input dim")
    symmetric: bool = True
    activations: Literal["none", "int8_dynamic"] = Field(
        "none", description="none: weight-only; int8_dynamic: per-token int8 activations too")


class Params(TrainParams):
    quant: QuantParams = QuantParams()

    @model_validator(mode="after")
    def _plain_precision(self) -> Params:
        if self.precision.mode not in ("fp32", "bf16"):
            raise ValueError("qat fake-quantizes nn.Linear weights: precision.mode must be fp32 "
                             f"or bf16, not {self.precision.mode!r} (FP8 modes swap the Linears)")
        return self
