"""LoRA adapters on the MoE through peft, and their merge back into plain weights.

peft wraps our plain `nn.Module` directly (`get_peft_model` needs no task type): `lora.Linear` on
the attention and shared-expert projections, and `ParamWrapper` (`target_parameters`) on the 3-D
expert tensors. ParamWrapper adds the update to the tensor itself through a parametrization while
the experts run; for peft, a 3-D tensor is (experts, out, in) unless the module says
`is_transposed`, which is our layout (and transformers'), so `Experts.matmul` sees
W + scale * B_e @ A_e per expert. The adapter weights keep transformers' module names, so the saved
adapter also applies to `Qwen2MoeForCausalLM` loaded from the input checkpoint.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import ParamWrapper, _LoraFactorsProxy
from torch import nn
from torch.nn.utils import parametrize

from stages.adapt.config import LoraParams


class StackedParamWrapper(ParamWrapper):
    """peft 0.21.2's ParamWrapper, fixed for a tensor with its own parametrization (the NF4 base).

    While the experts run, peft appends its LoRA proxy to the tensor's parametrizations. Two
    things go wrong when the tensor is already parametrized:
    - the wrappers of one module's tensors are nested, and the outer one runs the inner one inside
      `parametrize.cached()`; the inner one reads its tensor (`get_param`) before appending its
      proxy, so the cache holds the tensor without the update, and that LoRA would never apply
      (nor train). The stale entry is dropped once the proxy is in place;
    - afterwards peft deletes only a `_LoraParameterProxy`, not the `_LoraFactorsProxy` it uses for
      one adapter on a 3-D tensor: one more proxy (and update) would pile up with every forward.
    """

    @contextmanager
    def _activate_lora(self, active_adapters: list[str]):
        with super()._activate_lora(active_adapters):
            parametrize._cache.pop((id(self.get_base_layer()), self.parameter_name), None)
            yield

    def _remove_parametrizations(self) -> None:
        chain = self.get_base_layer().parametrizations[self.parameter_name]
        if len(chain) > 1 and isinstance(chain[-1], _LoraFactorsProxy):
            del chain[-1]
        else:
            super()._remove_parametrizations()


def expert_targets(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Full names of the targeted tensors: peft finds a tensor that is already parametrized (NF4)
    only by its exact name."""
    full = []
    for name, _ in model.named_modules():
        for target in targets:
            owner, _, tensor = target.rpartition(".")
            if name == owner or name.endswith(f".{owner}"):
                full.append(f"{name}.{tensor}")
    return full


def add_adapters(model: nn.Module, p: LoraParams) -> PeftModel:
    """`model` with fp32 LoRA adapters as its only trainable parameters."""
    # One regex, not a list: peft keeps a list as a set, whose order in adapter_config.json would
    # change from process to process (string hashing). It skips the modules that hold an NF4
    # weight's parametrizations, named `<module>.parametrizations.<tensor>` (e.g. `down_proj`).
    names = "|".join(re.escape(m) for m in p.target_modules)
    modules = rf"(?!.*\.parametrizations\.).*\.({names})" if names else []
    config = LoraConfig(r=p.rank, lora_alpha=p.alpha, lora_dropout=p.dropout,
                        target_modules=modules,
                        target_parameters=expert_targets(model, p.target_parameters))
    peft_model = get_peft_model(model, config)
    for module in peft_model.modules():
        if type(module) is ParamWrapper:
            module.__class__ = StackedParamWrapper
    for param in peft_model.parameters():  # adapters in full precision whatever the base's dtype
        if param.requires_grad:
            param.data = param.data.float()
    return peft_model


def merge(peft_model: PeftModel, adapter_dir: Path | None = None) -> nn.Module:
    """Save the adapter (if `adapter_dir`), then fold it into the base: the plain model."""
    if adapter_dir is not None:
        peft_model.save_pretrained(adapter_dir)
        (adapter_dir / "README.md").unlink()  # peft's blank model-card template
    with torch.no_grad():
        return peft_model.merge_and_unload()


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
