"""Training precision modes, switched by config (torchtitan style: a model transform + a context).

- `fp32`: plain fp32 (the CPU default; bf16 matmuls are ~100x slower than fp32 on these CPUs).
- `bf16`: CUDA autocast to bf16 over fp32 master weights.
- `fp8_emulated`: FP8 numerics on any device. Around every matmul of the attention projections,
  shared expert and experts: per-tensor scaled quantise-dequantise of inputs and weights to e4m3
  and of output gradients to e5m2, so the backward GEMMs see FP8 operands as on real hardware.
  Recipe `delayed` scales from the max of an amax history (as Transformer Engine's
  DelayedScaling; an empty history falls back to the current amax instead of TE's scale of 1),
  `current` from the tensor's own amax. Arithmetic stays fp32: numerics only, no speed.
- `fp8_torchao`: torchao float8 training (`convert_to_float8_training`, recipe `tensorwise` or
  `rowwise`) inside bf16 autocast; on CUDA the experts use torchao's FP8 rowwise grouped GEMM.
- `fp8_te`: Transformer Engine `te.Linear` layers under `fp8_autocast` with recipe `delayed`,
  `current`, `mxfp8` or `nvfp4`. Experts stay bf16 grouped GEMMs (TE's GroupedLinear is not wired
  in). Needs CUDA and TE; neither exists on the CPU machines, so this path is untested here.

The router, the shared-expert gate, embeddings and lm_head always stay in high precision.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version

import torch
import torch.nn.functional as F
from torch import nn

from stages.model.config import PrecisionConfig
from stages.model.moe import Experts

HIGH_PRECISION = ("lm_head", "shared_expert_gate")  # plus the router, which is not an nn.Linear
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def precision_metadata(pc: PrecisionConfig) -> dict:
    """What the checkpoint records about how it was trained."""
    backend = {"fp8_torchao": "torchao", "fp8_te": "transformer_engine"}.get(pc.mode, "torch")
    try:
        backend_version = version(backend)
    except PackageNotFoundError:
        backend_version = "missing"
    return {**asdict(pc), "backend": backend, "backend_version": backend_version}


# ---------------------------------------------------------------- FP8 emulation
def _qdq(x: torch.Tensor, history: torch.Tensor, dtype: torch.dtype, margin: int,
         delayed: bool, record: bool) -> torch.Tensor:
    """Scale, saturate, cast to `dtype` and back; `record` rolls this amax into `history`."""
    fmax = torch.finfo(dtype).max
    amax = x.detach().abs().amax().float()
    ref = history.max() if delayed else amax
    ref = torch.where(ref > 0, ref, amax)
    scale = torch.where(ref > 0, fmax / ref / 2.0**margin, torch.ones_like(ref))
    if record:
        history.copy_(history.roll(1))
        history[0] = amax
    q = (x.float() * scale).clamp(-fmax, fmax).to(dtype)
    return (q.float() / scale).to(x.dtype)


class _ForwardQDQ(torch.autograd.Function):
    """e4m3 quantise-dequantise in forward; straight-through gradient."""

    @staticmethod
    def forward(ctx, x, history, margin, delayed, record):
        return _qdq(x, history, E4M3, margin, delayed, record)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


class _GradQDQ(torch.autograd.Function):
    """Identity in forward; e5m2 quantise-dequantise of the incoming gradient."""

    @staticmethod
    def forward(ctx, y, history, margin, delayed, record):
        ctx.args = history, margin, delayed, record
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        history, margin, delayed, record = ctx.args
        return _qdq(grad, history, E5M2, margin, delayed, record), None, None, None, None


class Fp8Meta(nn.Module):
    """Amax histories of one matmul's input, weight and output gradient (checkpointed buffers),
    recorded in training mode only so evaluation passes never move the scales."""

    def __init__(self, history_len: int, margin: int, delayed: bool):
        super().__init__()
        for name in ("x", "w", "grad"):
            self.register_buffer(f"amax_{name}", torch.zeros(history_len))
        self.margin, self.delayed = margin, delayed

    def matmul(self, mm, x: torch.Tensor, w: torch.Tensor, *args) -> torch.Tensor:
        opts = self.margin, self.delayed, self.delayed and self.training
        xq = _ForwardQDQ.apply(x, self.amax_x, *opts)
        wq = _ForwardQDQ.apply(w, self.amax_w, *opts)
        return _GradQDQ.apply(mm(xq, wq, *args), self.amax_grad, *opts)


class Fp8EmulatedLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fp8.matmul(F.linear, x, self.weight)


class Fp8EmulatedExperts(Experts):
    def matmul(self, x: torch.Tensor, name: str, offs: torch.Tensor) -> torch.Tensor:
        return self.fp8[name].matmul(self.linear, x, getattr(self, name), offs)


class TorchaoFp8Experts(Experts):
    """Experts through torchao's FP8 rowwise grouped GEMM (CUDA, SM90+; groups padded to 16).
    `fp8_grouped_mm` is set at conversion, so torchao is imported only in this mode."""

    def matmul(self, x: torch.Tensor, name: str, offs: torch.Tensor) -> torch.Tensor:
        # A row-major (S, in); B_t (E, in, out) column-major, i.e. the transpose of the contiguous
        # (E, out, in) weight. S and every group in `offs` are multiples of 16 (`align`), which the
        # backward needs: its wgrad quantises A and grad_output column-major, stride (1, S).
        w = getattr(self, name).to(torch.bfloat16).contiguous().transpose(-2, -1)
        return self.fp8_grouped_mm(x.to(torch.bfloat16).contiguous(), w, offs,
                                   out_dtype=torch.bfloat16, pad_token_groups_for_grouped_mm=False)


# ---------------------------------------------------------------- applying a mode
def _fp8_linears(model: nn.Module):
    """(parent, attribute name, module) of every nn.Linear that may run in FP8."""
    for module in list(model.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear) and child_name not in HIGH_PRECISION:
                yield module, child_name, child


def _bf16_autocast(device_type: str):
    return lambda: torch.autocast(device_type, dtype=torch.bfloat16)


def _import_te():
    try:
        import transformer_engine.pytorch as te
        from transformer_engine.common import recipe
    except Exception as e:  # the bare meta package raises on import, not only ImportError
        raise RuntimeError(
            "precision mode fp8_te needs NVIDIA Transformer Engine with its PyTorch extension on a "
            "CUDA machine (pip install 'transformer-engine[pytorch]'); import failed: "
            f"{type(e).__name__}: {e}") from e
    return te, recipe


def _te_recipe(pc: PrecisionConfig, recipe):
    fmt = recipe.Format.HYBRID  # e4m3 forward, e5m2 gradients
    return {
        "delayed": lambda: recipe.DelayedScaling(
            margin=pc.margin, fp8_format=fmt, amax_history_len=pc.amax_history_len,
            amax_compute_algo="max"),
        "current": lambda: recipe.Float8CurrentScaling(fp8_format=fmt),
        "mxfp8": lambda: recipe.MXFP8BlockScaling(),
        "nvfp4": lambda: recipe.NVFP4BlockScaling(),
    }[pc.recipe]()


def apply_precision(model: nn.Module, pc: PrecisionConfig, device_type: str = "cpu", *,
                    fp8_auto_filter: bool = False):
    """Transform `model` in place for `pc`; return a zero-argument factory of the context manager
    that every forward (and loss) must run under. Build the optimizer after calling this, and
    torch.compile (if at all) after it too, so compile traces the converted modules.

    `fp8_auto_filter` (fp8_torchao only) also keeps in bf16 the linears whose K, N torchao's
    `_auto_filter_for_recipe` deems too small for FP8 to pay off (torchtitan's
    `auto_filter_small_kn`); by default every 16-divisible linear but the HIGH_PRECISION ones
    is converted, as torchtitan does."""
    if pc.mode == "fp32":
        return contextlib.nullcontext
    if pc.mode == "bf16":
        return _bf16_autocast(device_type)
    if pc.mode == "fp8_emulated":
        delayed = pc.recipe == "delayed"

        def meta(module: nn.Module) -> Fp8Meta:
            return Fp8Meta(pc.amax_history_len, pc.margin, delayed).train(module.training)

        for _, _, lin in _fp8_linears(model):
            lin.__class__ = Fp8EmulatedLinear
            lin.fp8 = meta(lin)
        for experts in [m for m in model.modules() if type(m) is Experts]:
            experts.__class__ = Fp8EmulatedExperts
            experts.fp8 = nn.ModuleDict({n: meta(experts) for n in ("gate_up_proj", "down_proj")})
        return contextlib.nullcontext
    if pc.mode == "fp8_torchao":
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        allowed = {id(lin) for _, _, lin in _fp8_linears(model)}
        size_ok = lambda m, fqn: True  # noqa: E731
        if fp8_auto_filter:
            from torchao.float8.float8_linear_utils import _auto_filter_for_recipe

            size_ok = _auto_filter_for_recipe(pc.recipe, filter_fqns=[])

        def module_filter(m: nn.Module, fqn: str) -> bool:
            return (id(m) in allowed and m.in_features % 16 == 0 and m.out_features % 16 == 0
                    and size_ok(m, fqn))

        # torchtitan's single-device recipe: no FSDP float8 all-gather (the recipe default).
        config = Float8LinearConfig.from_recipe_name(pc.recipe)
        convert_to_float8_training(model, config=config, module_filter_fn=module_filter)
        if device_type == "cuda" and pc.recipe == "rowwise":
            # as torchtitan does for rowwise (pytorch/pytorch#150859): inductor rounds the
            # intermediate casts of the scale computation as eager does
            import torch._inductor.config as inductor_config

            inductor_config.emulate_precision_casts = True
        if device_type == "cuda":
            from torchao.prototype.moe_training.fp8_grouped_mm import (
                _to_fp8_rowwise_then_scaled_grouped_mm,
            )

            for experts in [m for m in model.modules() if type(m) is Experts]:
                experts.__class__ = TorchaoFp8Experts
                experts.align = 16
                experts.fp8_grouped_mm = _to_fp8_rowwise_then_scaled_grouped_mm
        return _bf16_autocast(device_type)
    te, recipe = _import_te()
    for parent, name, lin in list(_fp8_linears(model)):
        new = te.Linear(lin.in_features, lin.out_features, bias=False,
                        params_dtype=lin.weight.dtype, device=lin.weight.device)
        with torch.no_grad():
            new.weight.copy_(lin.weight)
        setattr(parent, name, new)
    fp8_recipe = _te_recipe(pc, recipe)
    bf16 = _bf16_autocast(device_type)

    @contextlib.contextmanager
    def context():
        with bf16(), te.fp8_autocast(enabled=True, fp8_recipe=fp8_recipe):
            yield

    return context
