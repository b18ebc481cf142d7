"""`refine` params: where it starts, the phase-2 mix, the SFT pass, plus the shared training
params (`stages.train.config`; `train_tokens` is the continued-pretraining budget)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.params import StrictModel
from stages.train.config import TrainParams


class MixParams(StrictModel):
    """Shares of the continued-pretraining sequences (normalised; 0 drops a source)."""

    curated: float = Field(0.5, ge=0, description="curated documents of top textbook score")
    synthetic: float = Field(0.3, ge=0, description="synth's accepted generated documents")
    replay: float = Field(0.2, ge=0, description="phase-1 training sequences (less forgetting)")

    @model_validator(mode="after")
    def _some(self) -> MixParams:
        if self.curated + self.synthetic + self.replay <= 0:
            raise ValueError("at least one of curated, synthetic, replay must be > 0")
        return self


class SFTParams(StrictModel):
    epochs: int = Field(1, ge=0, description="passes over synth's LIMO train set after the "
                        "continued pretraining; 0 = none")
    template: str = Field("### Problem\n{prompt}\n\n### Solution\n",
                          description="the prompt format (one {prompt} slot); the response "
                          "follows, then EOS; also the output tokenizer's chat template")


class Params(TrainParams):
    init: Literal["stable", "final"] = Field(
        "stable", description="stable: pretrain's weights at the end of its WSD stable phase "
        "(refine is then the decay); final: pretrain's last weights")
    mix: MixParams = MixParams()
    curated_top_fraction: float = Field(0.3, gt=0, le=1, description="per domain, the curated "
                                        "documents with the highest textbook score")
    synthetic_templates: list[str] = Field(
        default_factory=list, description="synthetic documents whose template (or a part of it, "
        "e.g. `explained` of `arithmetic/explained`) is listed; empty = all")
    sft: SFTParams = SFTParams()
