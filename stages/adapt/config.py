"""`adapt` params: the mode (full fine-tuning, LoRA or QLoRA), the domain corpus, the adapters and
the 4-bit base, plus the shared training params (`stages.train.config`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.params import StrictModel
from stages.train.config import TrainParams

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EXPERT_TENSORS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
# Never adapted: the router and the shared-expert gate decide where tokens go, and the forward
# reads `lm_head.weight` directly in its fused loss (a LoRA wrapper around lm_head never runs).
FROZEN = ("gate", "shared_expert_gate", "lm_head", "embed_tokens")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # bitsandbytes' 4-bit block sizes


class CorpusParams(StrictModel):
    """Which curated documents are the domain: a `domain` label (curation's classification) or an
    ingest `source` name; the same selection picks the held-out documents it is evaluated on."""

    by: Literal["domain", "source"] = "domain"
    name: str = Field("code", min_length=1)


class LoraParams(StrictModel):
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="on the adapters' input; linears only")
    target_modules: tuple[str, ...] = Field(LINEARS, description="nn.Linear names (suffixes)")
    target_parameters: tuple[str, ...] = Field(
        EXPERT_TENSORS, description="3-D expert tensors, adapted through peft's ParamWrapper")

    @model_validator(mode="after")
    def _targets(self) -> LoraParams:
        frozen = sorted(set(self.target_modules) & set(FROZEN))
        if frozen:
            raise ValueError(f"target_modules may not include {frozen}: the router, the shared-"
                             "expert gate, the embeddings and lm_head stay frozen (the fused loss "
                             "reads lm_head.weight directly, so a wrapper there would never run)")
        unknown = sorted(set(self.target_parameters) - set(EXPERT_TENSORS))
        if unknown:
            raise ValueError(f"target_parameters {unknown} unknown; choose from {EXPERT_TENSORS}")
        if not (self.target_modules or self.target_parameters):
            raise ValueError("target_modules and target_parameters are both empty: nothing trains")
        if self.dropout and self.target_parameters:
            raise ValueError(
                f"dropout must be 0 while target_parameters is set (got {self.dropout}): peft's "
                "ParamWrapper adds the low-rank update to the expert weights themselves, so there "
                "is no separate adapter input to drop out; set dropout: 0, or "
                "target_parameters: [] to adapt only the linears")
        return self


class QLoraParams(StrictModel):
    """The frozen base in 4-bit NF4 (bitsandbytes), dequantised to `compute_dtype` per use."""

    blocksize: int = Field(64, description=f"weights per absmax scale, one of {BLOCKSIZES}")
    double_quant: bool = Field(True, description="quantise the absmax scales too (8-bit)")
    compute_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="what the weights dequantise to; bfloat16 with precision.mode bf16 "
        "(GPUs: bf16 matmuls are ~100x slower on these CPUs)")

    @model_validator(mode="after")
    def _blocksize(self) -> QLoraParams:
        if self.blocksize not in BLOCKSIZES:
            raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {self.blocksize}")
        return self


class Params(TrainParams):
    mode: Literal["full", "lora", "qlora"] = Field(
        "lora", description="full: every weight trains; lora: low-rank adapters on a frozen "
        "base; qlora: the same adapters on a frozen 4-bit NF4 base")
    corpus: CorpusParams = CorpusParams()
    activation_checkpointing: bool = Field(
        False, description="keep only each decoder block's input for the backward pass and "
        "recompute the rest there: far less activation memory for one more forward pass")
    lora: LoraParams = LoraParams()
    qlora: QLoraParams = QLoraParams()

    @model_validator(mode="after")
    def _precision(self) -> Params:
        if self.mode != "full" and self.precision.mode not in ("fp32", "bf16"):
            raise ValueError(f"mode {self.mode} trains with precision.mode fp32 or bf16, not "
                             f"{self.precision.mode} (the FP8 modes swap the linears peft wraps)")
        if (self.mode == "qlora" and self.qlora.compute_dtype == "bfloat16"
                and self.precision.mode != "bf16"):
            raise ValueError("qlora.compute_dtype bfloat16 needs precision.mode bf16 (its autocast "
                             "runs the matmuls of bf16 weights and fp32 activations)")
        return self
