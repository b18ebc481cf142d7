"""torchao's QAT flow on the student: the same quantization config fake-quantizes the Linears
while training (`prepare`) and quantizes the trained weights for real (`TorchAoConfig` on
load, which applies that config exactly as torchao's `convert` step does).

Every Linear but `lm_head` is quantized (the embedding is a table lookup, the head stays in full
precision as in the PTQ recipes). The fake-quantized model keeps the Linears' parameter names, so
the shared loop's checkpoints, resume and export work unchanged.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from stages.qat.config import QuantParams

KEEP = ["lm_head"]


def base_config(q: QuantParams):
    """The torchao config both the fake and the real quantization follow."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_primitives import MappingType

    dtype = getattr(torch, f"int{q.bits}")
    mapping = MappingType.SYMMETRIC if q.symmetric else MappingType.ASYMMETRIC
    if q.activations == "int8_dynamic":
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=dtype, weight_granularity=PerGroup(q.group_size),
            weight_mapping_type=mapping)
    return IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerGroup(q.group_size),
                                mapping_type=mapping)


def _quantized(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear) and fqn not in KEEP


def check_group_size(model: nn.Module, q: QuantParams) -> None:
    bad = [f"{n} ({m.in_features})" for n, m in model.named_modules()
           if _quantized(m, n) and m.in_features % q.group_size]
    if bad:
        raise ValueError(f"qat.quant.group_size {q.group_size} does not divide the input size of "
                         f"{len(bad)} layers (e.g. {bad[0]}); choose a divisor")


def prepare(model: nn.Module, q: QuantParams) -> None:
    """Swap every quantized Linear for torchao's fake-quantized one, in place."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    check_group_size(model, q)
    quantize_(model, QATConfig(base_config(q), step="prepare"), filter_fn=_quantized)


def load_quantized(float_dir: Path, q: QuantParams):
    """The full-precision transformers checkpoint at `float_dir`, quantized by torchao."""
    from transformers import AutoModelForCausalLM, TorchAoConfig

    return AutoModelForCausalLM.from_pretrained(
        float_dir, quantization_config=TorchAoConfig(base_config(q), modules_to_not_convert=KEEP))


def save_quantized(float_dir: Path, dest: Path, q: QuantParams) -> None:
    """`load_quantized` written to `dest` with the tokenizer: torchao tensors in safetensors,
    which `AutoModelForCausalLM.from_pretrained(dest)` loads as they are."""
    from stages.quant.ondisk import sort_metadata

    load_quantized(float_dir, q).save_pretrained(dest)
    sort_metadata(dest)
    for f in sorted(float_dir.glob("tokenizer*")):
        shutil.copy2(f, dest / f.name)
