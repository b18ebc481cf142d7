"""The three int4 recipes, all llm-compressor modifiers over one compressed-tensors scheme.

- `rtn`: round-to-nearest (min-max scales per group, no calibration): the baseline.
- `gptq`: GPTQ (Frantar et al. 2022), layer by layer on calibration activations.
- `awq`: AWQ (Lin et al. 2023): activation-aware per-channel scales folded into the preceding
  norm / projection, then the same quantization.
The router and the shared-expert gate stay in full precision (tiny, and they decide routing), as
does `lm_head` (as llm-compressor's published recipes keep it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from stages.ptq.config import Params

IGNORE = ["lm_head", "re:.*mlp.gate$", "re:.*shared_expert_gate$"]

# llm-compressor's Qwen2-MoE mappings leave out the shared expert, which reads the same normed
# input as the routed experts: smoothing that norm must rescale every consumer of it, or the
# model changes. These add the shared expert and its gate.
QWEN2_MOE_AWQ = (
    ("re:.*input_layernorm$", ["re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"]),
    ("re:.*v_proj$", ["re:.*o_proj$"]),
    ("re:.*post_attention_layernorm$", [
        "re:.*mlp.gate$", "re:.*mlp.experts.*.gate_proj$", "re:.*mlp.experts.*.up_proj$",
        "re:.*shared_expert.gate_proj$", "re:.*shared_expert.up_proj$",
        "re:.*shared_expert_gate$"]),
    ("re:.*up_proj$", ["re:.*down_proj$"]),
)


def check_group_size(model, group: int, src) -> None:
    """Every Linear the scheme quantizes (experts linearized first) must have an input size that
    is a multiple of the group size; the error names one that is not."""
    from compressed_tensors.utils import match_named_modules
    from llmcompressor.modeling.moe.linearize import linearize_moe

    linearize_moe(model)
    bad = [f"{name} ({m.in_features})" for name, m in match_named_modules(model, ["Linear"], IGNORE)
           if m.in_features % group]
    if bad:
        raise ValueError(f"ptq.scheme.group_size {group} does not divide the input size of "
                         f"{len(bad)} layers of {src} (e.g. {bad[0]}); choose a divisor")


def scheme(p: Params):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    s = p.scheme
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=s.bits, type="int", symmetric=s.symmetric, strategy="group",
        group_size=s.group_size))


def modifier(method: str, p: Params, model_type: str):
    """The llm-compressor recipe of `method` for a model of this transformers `model_type`."""
    groups = {"group_0": scheme(p)}
    if method == "rtn":
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return QuantizationModifier(config_groups=groups, ignore=IGNORE)
    if method == "gptq":
        from llmcompressor.modifiers.quantization import GPTQModifier

        return GPTQModifier(config_groups=groups, ignore=IGNORE, block_size=p.gptq.block_size,
                            dampening_frac=p.gptq.dampening_frac, actorder=p.gptq.actorder)
    if method == "awq":
        from llmcompressor.modifiers.awq import AWQMapping, AWQModifier

        mappings = ([AWQMapping(smooth, balance) for smooth, balance in QWEN2_MOE_AWQ]
                    if model_type == "qwen2_moe" else None)  # None: llm-compressor's registry
        return AWQModifier(config_groups=groups, ignore=IGNORE, mappings=mappings,
                           n_grid=p.awq.n_grid, duo_scaling=p.awq.duo_scaling)
    raise ValueError(f"unknown ptq method {method!r}")


@contextlib.contextmanager
def cpu_pinning_off() -> Iterator[None]:
    """AWQ pins its cached activations for fast host-to-device copies; without an accelerator
    `pin_memory` raises. Pinning changes no value, so on CPU it is skipped."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def quantize(model, method: str, rows: torch.Tensor, p: Params) -> None:
    """Apply `method` to `model` in place, calibrating on `rows` (sequences x tokens)."""
    from datasets import Dataset
    from llmcompressor import LoggerConfig, configure_logger, oneshot

    # errors only (LLM_COMPRESSOR_LOG_LEVEL overrides): on CPU it warns once per module that
    # no accelerator is present; the stage logs each method's result itself
    configure_logger(LoggerConfig(console_log_level="ERROR"))

    data = Dataset.from_dict({"input_ids": rows.tolist(),
                              "attention_mask": torch.ones_like(rows).tolist()})
    with cpu_pinning_off():
        oneshot(model=model, recipe=modifier(method, p, model.config.model_type),
                dataset=data, num_calibration_samples=len(rows), max_seq_length=rows.shape[1],
                shuffle_calibration_samples=False,
                moe_calibrate_all_experts=p.moe.calibrate_all_experts)
