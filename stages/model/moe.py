"""The training model: a decoder-only MoE whose parameter names are the transformers ones.

`state_dict()` loads unchanged into `Qwen2MoeForCausalLM` / `MixtralForCausalLM` (see `hf.py`),
or, for the dense variant (`arch="llama"`, `n_experts=0`: one SwiGLU MLP per layer, the
distillation student), into `LlamaForCausalLM`: one model, so the fused loss, RoPE, RMSNorm and
the precision modes are the same code for both.
Numerics follow those classes (RMSNorm in fp32, half-split RoPE, softmax -> top-k routing with
Mixtral's renormalisation, load-balancing loss pooled over layers as transformers computes it).
For speed, token slots are sorted by expert and each expert projection is one grouped matmul
(an opaque custom op, so torch.compile also takes it in fp32); no per-token loops or gathers of
expert weights. The elementwise work, RMSNorm, RoPE and SwiGLU with its routing weight (applied
before the down projection, the same by linearity), can run as torch.compile'd fused kernels
while the model stays eager (`fused_kernels`; eager runs each op as its own pass over memory, the
main cost besides matmuls on CPU), each with its backward. Expert outputs are scattered onto
the shared expert's output, sliding-window layers run each KV group's queries as one sequence
(masked flash kernel, no K/V copies), and the training loss is fused with the output projection
(`loss.py`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from itertools import pairwise
from types import SimpleNamespace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stages.model.config import MoEConfig
from stages.model.loss import KDLoss, linear_cross_entropy, linear_distillation_loss

EXPERTS_IMPLS = ("grouped_mm", "loop")


class Output(NamedTuple):
    logits: torch.Tensor | None  # None when targets were given (see `linear_cross_entropy`)
    loss: torch.Tensor | None  # what to backpropagate: ce + router terms
    ce: torch.Tensor | None  # next-token cross-entropy (for perplexity / bits per byte)
    aux_loss: torch.Tensor | None
    z_loss: torch.Tensor | None
    token_loss: torch.Tensor | None = None  # the per-token objective in `loss`: ce, or ce
    # mixed with the distillation term when teacher top-k log-probs were given


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rope_cache(cfg: MoEConfig, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / cfg.rope_theta ** (
        torch.arange(0, cfg.head_dim, 2, device=device, dtype=torch.float32) / cfg.head_dim)
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    return rotate(q, cos, sin), rotate(k, cos, sin)


class Attention(nn.Module):
    def __init__(self, cfg: MoEConfig, sliding: bool):
        super().__init__()
        hd = cfg.head_dim
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, hd
        self.window = cfg.sliding_window if sliding else None
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos, sin, masks: dict) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.hd).transpose(1, 2)
        q, k = kernels.apply_rope(q, k, cos, sin)
        mask = masks.get(self.window)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               enable_gqa=self.n_kv != self.n_heads)
        else:  # the queries of a KV group as one sequence: a masked flash kernel, no K/V copies
            q = q.reshape(b, self.n_kv, -1, self.hd)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).view(b, -1, t, self.hd)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """Dense SwiGLU (the shared expert), each output row scaled by its gate."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        return self.down_proj(kernels.swiglu(scale, self.gate_proj(x), self.up_proj(x)))


class DenseMLP(MLP):
    """A dense layer's MLP (Llama's): SwiGLU without a gate scale; no router statistics."""

    def forward(self, x: torch.Tensor, stats: list) -> torch.Tensor:
        return super().forward(x, None)


@torch.library.custom_op("slm::grouped_linear", mutates_args=())
def grouped_linear(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """Rows of `x` sorted by group g get `x @ w[g].T`; `w` is (groups, out, in), `offs` the
    cumulative row counts. An opaque op, so torch.compile accepts fp32 (inductor's is bf16-only)."""
    return F.grouped_mm(x, w.transpose(1, 2), offs=offs)


@torch.library.custom_op("slm::grouped_linear_backward", mutates_args=())
def grouped_linear_backward(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor,
                            grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grad = grad.contiguous()  # the kernel rejects expanded (stride-0) gradients
    return F.grouped_mm(grad, w, offs=offs), F.grouped_mm(grad.t(), x, offs=offs)


@grouped_linear.register_fake
def _(x, w, offs):
    return x.new_empty(x.shape[0], w.shape[1])


@grouped_linear_backward.register_fake
def _(x, w, offs, grad):
    return x.new_empty(x.shape), w.new_empty(w.shape)


def _save(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    return (*grouped_linear_backward(*ctx.saved_tensors, grad), None)


grouped_linear.register_autograd(_backward, setup_context=_save)


def loop_linear(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """Same contract as `grouped_linear`: one matmul per contiguous group (one host sync)."""
    bounds = pairwise([0, *offs.tolist()])
    return torch.cat([x[s:e] @ w[i].T for i, (s, e) in enumerate(bounds)])


def swiglu(scale: torch.Tensor | None, *parts: torch.Tensor) -> torch.Tensor:
    """scale[:, None] * silu(gate) * up (no scale: None), with `parts` (gate_up,) or (gate, up)."""
    gate, up = parts[0].chunk(2, dim=-1) if len(parts) == 1 else parts
    acc = torch.promote_types(gate.dtype, torch.float32)
    y = F.silu(gate.to(acc)) * up.to(acc)
    if scale is not None:
        y = y * scale.to(acc).unsqueeze(-1)
    return y.to(gate.dtype)


ELEMENTWISE = {"rms_norm": rms_norm, "apply_rope": apply_rope, "swiglu": swiglu}
kernels = SimpleNamespace(**ELEMENTWISE)  # what the model calls: eager, or `fused_kernels`


@functools.cache
def _fused(name: str):
    return torch.compile(ELEMENTWISE[name], dynamic=True)  # one kernel for all shapes


@contextlib.contextmanager
def fused_kernels(enabled: bool = True) -> Iterator[None]:
    """Within: the model's elementwise functions run as torch.compile'd kernels (compiled on
    first use, for dynamic shapes: evaluation's batches reuse the training kernels), the rest of
    the model eager. Process-wide; the previous kernels are back on exit. Compiling costs a few
    seconds per process with inductor's on-disk cache warm, ~20 s the first time on a machine:
    it pays back over runs of more than a few dozen CPU steps (the training params' `compile:
    kernels`)."""
    before = vars(kernels).copy()
    vars(kernels).update({name: _fused(name) if enabled else fn
                          for name, fn in ELEMENTWISE.items()})
    try:
        yield
    finally:
        vars(kernels).update(before)


class Experts(nn.Module):
    """SwiGLU experts as 3D tensors in the transformers layout: gate_up (E, 2I, d), down (E, d, I).

    Token slots are sorted by expert and each projection is one grouped matmul. `align` > 1 pads
    every expert's group to a multiple of `align` rows (FP8 grouped GEMMs need 16)."""

    def __init__(self, cfg: MoEConfig, impl: str):
        super().__init__()
        if impl not in EXPERTS_IMPLS:
            raise ValueError(f"experts impl must be one of {EXPERTS_IMPLS}")
        n, d, i = cfg.n_experts, cfg.d_model, cfg.expert_size
        self.gate_up_proj = nn.Parameter(torch.empty(n, 2 * i, d))
        self.down_proj = nn.Parameter(torch.empty(n, d, i))
        self.linear = grouped_linear if impl == "grouped_mm" else loop_linear
        self.align = 1

    def matmul(self, x: torch.Tensor, name: str, offs: torch.Tensor) -> torch.Tensor:
        """x (S, in) @ per-group weight `name` (E, out, in)^T; the hook precision modes override."""
        w = getattr(self, name)
        if torch.is_autocast_enabled(x.device.type):  # grouped_mm is not autocast-aware
            dtype = torch.get_autocast_dtype(x.device.type)
            x, w = x.to(dtype), w.to(dtype)
        return self.linear(x, w, offs)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor,
                out: torch.Tensor) -> torch.Tensor:
        """`out` plus each token's weighted expert outputs."""
        n_experts, k = self.gate_up_proj.shape[0], idx.shape[1]
        expert, order = idx.reshape(-1).sort(stable=True)
        # Each group's end row, from the sorted ids: a static shape (bincount's is data-dependent
        # and breaks a torch.compile graph).
        ends = torch.searchsorted(expert, torch.arange(1, n_experts + 1, device=x.device),
                                  out_int32=True)
        token = order // k
        h = x.index_select(0, token)
        scale = weights.reshape(-1)[order]
        if self.align > 1:
            a = self.align
            counts = ends.diff(prepend=ends.new_zeros(1))
            padded = (counts + a - 1) // a * a
            starts = padded.cumsum(0, dtype=torch.int32) - padded
            shift = starts - (ends - counts)
            dest = torch.arange(expert.numel(), device=x.device) + shift[expert]
            # The buffer's row count is itself a multiple of `align` and the last group absorbs
            # the spare zero rows (offs[-1] == rows): the FP8 wgrad quantises A and grad_output
            # column-major, stride (1, rows), and the scaled grouped GEMM needs 16-byte strides.
            rows = (expert.numel() + n_experts * (a - 1) + a - 1) // a * a
            offs = torch.cat([starts[1:], starts.new_full((1,), rows)])
            h = h.new_zeros(rows, h.shape[1]).index_copy(0, dest, h)
            scale = scale.new_zeros(rows).index_copy(0, dest, scale)
        else:
            offs = ends
        gate_up = self.matmul(h, "gate_up_proj", offs)
        h = self.matmul(kernels.swiglu(scale, gate_up), "down_proj", offs)
        if self.align > 1:
            h = h.index_select(0, dest)
        return out.index_add(0, token, h.to(out.dtype))


class Router(nn.Module):
    """Linear router kept in full precision (never swapped by precision modes)."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_experts, cfg.d_model))
        self.top_k, self.renormalize = cfg.top_k, cfg.norm_topk_prob

    def forward(self, x: torch.Tensor):
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())
        probs = logits.softmax(dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            top_p = top_p / top_p.sum(dim=-1, keepdim=True)
        return logits, probs, top_i, top_p


class SparseMoE(nn.Module):
    def __init__(self, cfg: MoEConfig, impl: str):
        super().__init__()
        self.gate = Router(cfg)
        self.experts = Experts(cfg, impl)
        if cfg.shared_expert_size:
            self.shared_expert = MLP(cfg.d_model, cfg.shared_expert_size)
            self.shared_expert_gate = nn.Linear(cfg.d_model, 1, bias=False)

    def forward(self, x: torch.Tensor, stats: list) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits, probs, top_i, top_w = self.gate(x)
        stats.append((logits, probs, top_i))
        if hasattr(self, "shared_expert"):
            y = self.shared_expert(x, torch.sigmoid(self.shared_expert_gate(x)).squeeze(-1))
            y = y.to(x.dtype)  # a bf16 autocast output would also round the experts' sum
        else:
            y = torch.zeros_like(x)
        return self.experts(x, top_i, top_w, y).view(shape)


class Block(nn.Module):
    def __init__(self, cfg: MoEConfig, layer_type: str, impl: str):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg, sliding=layer_type == "sliding_attention")
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = DenseMLP(cfg.d_model, cfg.ffn_size) if cfg.dense else SparseMoE(cfg, impl)

    def forward(self, x, cos, sin, masks, stats):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, masks)
        return x + self.mlp(self.post_attention_layernorm(x), stats)


class Backbone(nn.Module):
    """Named `model` inside `MoEForCausalLM` so parameter names match transformers."""

    def __init__(self, cfg: MoEConfig, impl: str):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, t, impl) for t in cfg.layer_types)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


def sliding_mask(t: int, window: int, device) -> torch.Tensor:
    """Boolean (t, t): key j visible from query i iff i - window < j <= i (transformers' rule)."""
    i = torch.arange(t, device=device)
    diff = i[:, None] - i[None, :]
    return (diff >= 0) & (diff < window)


def load_balancing_loss(stats: list, n_experts: int) -> torch.Tensor:
    """Switch-style E * sum_e f_e * P_e pooled over layers, exactly as transformers computes it."""
    counts = sum(torch.zeros(n_experts, device=i.device).index_add_(
        0, i.reshape(-1), torch.ones(i.numel(), device=i.device)) for _, _, i in stats)
    prob_sum = sum(p.sum(0) for _, p, _ in stats)
    rows = sum(p.shape[0] for _, p, _ in stats)
    return n_experts * torch.sum(counts / rows * prob_sum / rows)


class MoEForCausalLM(nn.Module):
    def __init__(self, cfg: MoEConfig, experts_impl: str = "grouped_mm"):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg, experts_impl)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, std) weights, residual outputs scaled by 1/sqrt(2 * n_layers), unit norms."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj", "down_proj.weight")):
                p.normal_(0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                p.normal_(0.0, std)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                teacher_idx: torch.Tensor | None = None,
                teacher_logp: torch.Tensor | None = None, kd: KDLoss | None = None) -> Output:
        """`targets` are already shifted (token t predicts targets[t]); -100 is ignored. With
        targets the loss is fused with the output projection and `logits` is None. With a
        teacher's top-k (`teacher_idx`, `teacher_logp`: (batch, positions, k), the teacher's
        log-probs of those ids at each target position) and `kd`, `token_loss` is the mixed
        distillation objective (`loss.linear_distillation_loss`); `ce` stays plain CE."""
        cfg = self.config
        t = input_ids.shape[1]
        cos, sin = rope_cache(cfg, t, input_ids.device)
        windows = {w for w in (layer.self_attn.window for layer in self.model.layers) if w}
        groups = cfg.n_heads // cfg.n_kv_heads  # mask rows for the grouped queries (Attention)
        masks = {w: sliding_mask(t, w, input_ids.device).repeat(groups, 1)
                 for w in windows if w < t}
        x = self.model.embed_tokens(input_ids)
        stats: list = []
        for layer in self.model.layers:
            x = layer(x, cos, sin, masks, stats)
        h = self.model.norm(x)
        if targets is None:
            return Output(self.lm_head(h), None, None, None, None)
        h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
        if kd is None:
            ce = token_loss = linear_cross_entropy(h, self.lm_head.weight, targets)
        else:
            k = teacher_idx.shape[-1]
            token_loss, ce = linear_distillation_loss(
                h, self.lm_head.weight, targets, teacher_idx.reshape(-1, k),
                teacher_logp.reshape(-1, k), kd)
        if cfg.dense:  # no router: no router terms
            return Output(None, token_loss, ce, None, None, token_loss)
        aux = load_balancing_loss(stats, cfg.n_experts)
        z = torch.stack([torch.logsumexp(lg, dim=-1).pow(2).mean() for lg, _, _ in stats]).mean()
        loss = (token_loss + cfg.aux_loss_coef * aux
                + (cfg.z_loss_coef * z if cfg.z_loss_coef else 0.0))
        return Output(None, loss, ce, aux, z, token_loss)

    def num_params(self, active: bool = False, embeddings: bool = True) -> int:
        """Parameter count; `active` counts top_k of n_experts, `embeddings=False` drops the input
        embedding (the lm_head stays, as in the usual 6 * N FLOP estimate)."""
        cfg = self.config
        n = 0
        for name, p in self.named_parameters():
            if name == "model.embed_tokens.weight" and not embeddings:
                continue
            frac = cfg.top_k / cfg.n_experts if active and ".experts." in name else 1.0
            n += int(p.numel() * frac)
        if cfg.tie_embeddings and not embeddings:
            n += self.lm_head.weight.numel()
        return n
