"""`gguf` params: which models, the full-precision type, the llama.cpp quant types, the checks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.params import StrictModel

MODELS = ("student", "qat", "phase1", "adapted")
# llama.cpp file types (`LLAMA_FTYPE_MOSTLY_<name>`) this stage offers (F16: the speed baseline)
QUANT_TYPES = ("F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q4_K_M", "Q4_K_S",
               "Q4_0", "Q3_K_M", "Q2_K", "IQ4_NL")


class Params(StrictModel):
    models: list[Literal[MODELS]] = Field(list(MODELS), min_length=1)  # type: ignore[valid-type]
    outtype: Literal["f32", "f16", "bf16"] = Field(
        "f32", description="the full-precision GGUF every quant type is made from")
    quant_types: list[Literal[QUANT_TYPES]] = Field(  # type: ignore[valid-type]
        ["F16", "Q8_0", "Q6_K", "Q4_K_M", "Q4_0"],
        description="llama.cpp quantizations of each model (F16: the speed goal's baseline)")
    check_tokens: int = Field(64, ge=2, description="held-out tokens whose logits the "
                              "full-precision file must reproduce (at most the model's context)")
    tolerance: float = Field(5e-3, gt=0, description="max |logit difference| vs transformers "
                             "(f32; f16/bf16 need more)")
    generate_tokens: int = Field(8, ge=1, description="greedy tokens each file must generate")
