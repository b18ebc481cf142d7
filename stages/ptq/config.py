"""`ptq` params: which models and methods, the int4 scheme they share, calibration, evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.params import StrictModel

METHODS = ("rtn", "gptq", "awq")
MODELS = ("student", "teacher")


class SchemeParams(StrictModel):
    """Weight-only integer quantization of every Linear but `lm_head` and the MoE gates."""

    bits: int = Field(4, ge=2, le=8)
    group_size: int = Field(32, ge=8, description="weights per scale along the input dim; must "
                            "divide every quantized layer's input size")
    symmetric: bool = True


class CalibrationParams(StrictModel):
    """A seeded sample of the curated training corpus (tokenize's packed `train` split)."""

    samples: int = Field(64, ge=1, description="sequences")
    seq_len: int = Field(256, ge=8, description="tokens per sequence (a prefix of a packed row)")


class GPTQParams(StrictModel):
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="added to the Hessian diagonal, "
                                  "as a fraction of its mean")
    block_size: int = Field(128, ge=1, description="columns quantized per lazy-update block")
    actorder: Literal["static", "weight", "group"] | None = Field(
        "static", description="activation ordering (None: input order)")


class AWQParams(StrictModel):
    n_grid: int = Field(20, ge=1, description="scale exponents tried per mapping")
    duo_scaling: bool = Field(True, description="scales from activations and weights (False: "
                              "activations only)")


class MoEParams(StrictModel):
    """How the teacher's experts are calibrated (see docs/quantization.md)."""

    calibrate_all_experts: bool = Field(
        True, description="every expert sees every calibration token (its outputs still combine "
        "by the router's choice): no expert is calibrated on zero tokens")
    min_expert_tokens: int = Field(
        64, ge=1, description="with calibrate_all_experts false: the fewest routed tokens an "
        "expert may be calibrated on; fewer stops the stage before quantizing")


class EvalParams(StrictModel):
    micro_seqs: int = Field(8, ge=1)
    max_bytes: int = Field(0, ge=0, description="leading held-out bytes scored (0: all); the "
                           "distilled student's setting makes the numbers comparable")


class Params(StrictModel):
    models: list[Literal[MODELS]] = Field(list(MODELS), min_length=1)  # type: ignore[valid-type]
    methods: list[Literal[METHODS]] = Field(list(METHODS), min_length=1)  # type: ignore[valid-type]
    scheme: SchemeParams = SchemeParams()
    calibration: CalibrationParams = CalibrationParams()
    gptq: GPTQParams = GPTQParams()
    awq: AWQParams = AWQParams()
    moe: MoEParams = MoEParams()
    eval: EvalParams = EvalParams()
