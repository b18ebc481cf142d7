"""A frozen 4-bit NF4 base for QLoRA: every targeted weight, 2-D linear and 3-D expert tensor alike.

bitsandbytes quantises and dequantises NF4 (`quantize_4bit` / `dequantize_4bit`, on CPUs and GPUs)
but its module form, `bnb.nn.Linear4bit`, is a 2-D linear only: nothing holds the (E, out, in)
expert tensors that `Experts.matmul` reads. So the storage is a `torch.nn.utils.parametrize`
parametrization, which works for any parameter of any module: `right_inverse` quantises the weight
once and its output, the packed 4-bit codes, becomes the parameter's single `original` tensor;
`forward` dequantises it to the compute dtype each time the module reads the weight. The codes
sit in a tensor of the weight's own dtype (bitsandbytes' `quant_storage`, its FSDP-QLoRA device):
parametrize requires one `original` of the same dtype, and peft, which stacks its LoRA
parametrization on top for `target_parameters`, reads `parametrizations[name].original`. The
quantisation state (absmax scales, their 8-bit codes and offset under double quantisation) lives in
buffers of the parametrization module, so it is in the state dict that checkpoints save.

Quantising is deterministic, so a resumed run quantises the same input weights to the same codes
(and loads them from the checkpoint anyway).
"""

from __future__ import annotations

import bitsandbytes.functional as bnb
import torch
from torch import nn
from torch.nn.utils import parametrize

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class NF4(nn.Module):
    """NF4 storage of one weight: 4-bit codes in `original`, scales in buffers."""

    def __init__(self, blocksize: int, double_quant: bool, compute_dtype: torch.dtype):
        super().__init__()
        self.blocksize, self.double_quant = blocksize, double_quant
        self.compute_dtype = compute_dtype

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.numel() % 8:  # two codes a byte, four bytes a float32 storage element
            raise ValueError(f"NF4 storage needs a multiple of 8 weights, got shape "
                             f"{tuple(weight.shape)}")
        codes, state = bnb.quantize_4bit(weight, blocksize=self.blocksize, quant_type="nf4",
                                         compress_statistics=self.double_quant,
                                         quant_storage=weight.dtype)
        self.shape = weight.shape
        self.register_buffer("absmax", state.absmax)
        if state.nested:
            self.register_buffer("offset", state.offset.reshape(1))
            self.register_buffer("absmax2", state.state2.absmax)
            self.register_buffer("code2", state.state2.code)
            self.blocksize2 = state.state2.blocksize
        return codes

    def quant_state(self) -> bnb.QuantState:
        nested = (bnb.QuantState(absmax=self.absmax2, code=self.code2, blocksize=self.blocksize2,
                                 dtype=torch.float32) if self.double_quant else None)
        return bnb.QuantState(absmax=self.absmax, shape=self.shape, dtype=self.compute_dtype,
                              blocksize=self.blocksize, quant_type="nf4",
                              offset=self.offset[0] if nested else None, state2=nested)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return bnb.dequantize_4bit(codes, self.quant_state())


def quantize(module: nn.Module, name: str, blocksize: int, double_quant: bool,
             compute_dtype: torch.dtype) -> None:
    """Store `module.<name>` as NF4 from now on (frozen: quantised weights do not train)."""
    getattr(module, name).requires_grad_(False)
    # unsafe: the weight reads back in the compute dtype, which may differ from the stored one
    parametrize.register_parametrization(module, name, NF4(blocksize, double_quant, compute_dtype),
                                         unsafe=compute_dtype != getattr(module, name).dtype)


def quantized(model: nn.Module) -> list[tuple[nn.Module, str, NF4]]:
    """(module, tensor name, its NF4 parametrization) of every NF4 weight of `model`."""
    return [(m, name, plist[0]) for m in model.modules()
            if parametrize.is_parametrized(m)
            for name, plist in m.parametrizations.items() if isinstance(plist[0], NF4)]


@torch.no_grad()
def dequantize_all(model: nn.Module) -> None:
    """Replace every NF4 weight by its dequantised values, a plain parameter in the dtype it was
    stored from (full precision: what LoRA merges into)."""
    for module, name, nf4 in quantized(model):
        nf4.compute_dtype = module.parametrizations[name].original.dtype
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
