"""Correctness of the model's own GPU code paths, for a session that is lent a GPU.

What the CPU tests cannot reach: the fused cross-entropy with its GPU chunk size (several chunks at
vocab 32k), sliding-window attention through CUDA's masked SDPA kernels with grouped queries, the
torch.compile'd RMSNorm / RoPE / SwiGLU kernels (`compile: kernels`) as Triton code, and a short
BF16-autocast training run, eager and whole-model compiled (one graph). Each check compares
against plain PyTorch math in fp32 and prints `PASS|FAIL name: detail`; the exit status is the
number of failures. Needs only torch and this repository (the bare device machine has no
transformers/accelerate):

    PYTHONPATH=. python scripts/gpu_checks.py            # then bench/gpu_precision.py
    PYTHONPATH=. python scripts/gpu_checks.py --device cpu   # the same checks, small, on CPU
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.model.config import MoEConfig  # noqa: E402
from stages.model.loss import IGNORE, linear_cross_entropy  # noqa: E402
from stages.model.moe import (  # noqa: E402
    Attention,
    MoEForCausalLM,
    apply_rope,
    fused_kernels,
    kernels,
    rope_cache,
    sliding_mask,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def grads(fn, *inputs: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """[output, grad of each input] for a random output gradient."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    out.backward(g)
    return [out.detach(), *(x.grad for x in leaves)]


def compare(got: list[torch.Tensor], ref: list[torch.Tensor], tol: float) -> str:
    errs = [rel_err(a, b) for a, b in zip(got, ref, strict=True)]
    if max(errs) > tol:
        raise AssertionError(f"relative errors {errs} > {tol}")
    return f"max relative error {max(errs):.2e} (tolerance {tol})"


def check_fused_ce(dev: torch.device, small: bool) -> str:
    rows, d, vocab = (300, 64, 5000) if small else (4096, 512, 32000)
    h = torch.randn(rows, d, device=dev)
    w = torch.randn(vocab, d, device=dev) * 0.05
    t = torch.randint(0, vocab, (rows,), device=dev)
    t[::7] = IGNORE

    def plain(h, w):
        return F.cross_entropy(h @ w.t(), t, ignore_index=IGNORE)

    out = [compare(grads(lambda h, w: linear_cross_entropy(h, w, t), h, w),
                   grads(plain, h, w), 1e-5)]
    if dev.type == "cuda":
        with torch.autocast("cuda", torch.bfloat16):
            got = grads(lambda h, w: linear_cross_entropy(h, w, t), h, w)
        out.append("bf16 " + compare(got, grads(plain, h, w), 2e-2))
    return "; ".join(out)


def check_sliding_attention(dev: torch.device, small: bool) -> str:
    cfg = MoEConfig(d_model=256, n_heads=8, n_kv_heads=2, sliding_window=32 if small else 256)
    t = 96 if small else 1024
    attn = Attention(cfg, sliding=True).to(dev)
    cos, sin = rope_cache(cfg, t, dev)
    groups = cfg.n_heads // cfg.n_kv_heads
    masks = {cfg.sliding_window: sliding_mask(t, cfg.sliding_window, dev).repeat(groups, 1)}

    def reference(x):
        b = x.shape[0]
        q = attn.q_proj(x).view(b, t, cfg.n_heads, -1).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, cfg.n_kv_heads, -1).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, cfg.n_kv_heads, -1).transpose(1, 2)
        q, k = apply_rope(q, k, cos, sin)
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~sliding_mask(t, cfg.sliding_window, dev), float("-inf"))
        y = scores.softmax(-1) @ v
        return attn.o_proj(y.transpose(1, 2).reshape(b, t, -1))

    x = torch.randn(2, t, cfg.d_model, device=dev)
    ref = grads(reference, x)
    out = [compare(grads(lambda x: attn(x, cos, sin, masks), x), ref, 1e-4)]
    if dev.type == "cuda":
        with torch.autocast("cuda", torch.bfloat16):
            got = grads(lambda x: attn(x, cos, sin, masks), x)
        out.append("bf16 " + compare(got, ref, 3e-2))
    return "; ".join(out)


def check_compiled_kernels(dev: torch.device, small: bool) -> str:
    rows, d, inter = (64, 32, 48) if small else (4096, 1024, 2816)
    x, w = torch.randn(rows, d, device=dev), torch.rand(d, device=dev) + 0.5
    gate_up = torch.randn(rows, 2 * inter, device=dev)
    scale = torch.rand(rows, device=dev)
    q, k = torch.randn(2, 8, 64, 64, device=dev), torch.randn(2, 2, 64, 64, device=dev)
    cos, sin = rope_cache(MoEConfig(d_model=512, n_heads=8, n_kv_heads=2), 64, dev)

    def rms_ref(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    def swiglu_ref(s, gu):
        g, u = gu.chunk(2, -1)
        return s[:, None] * F.silu(g) * u

    def rope_ref(q, k):
        def rot(z):
            z1, z2 = z.chunk(2, -1)
            return z * cos + torch.cat((-z2, z1), -1) * sin
        return torch.cat([rot(q).flatten(), rot(k).flatten()])

    with fused_kernels():  # what `compile: kernels` trains with
        rms_norm, swiglu, rope = kernels.rms_norm, kernels.swiglu, kernels.apply_rope
    done = []
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        cast = [z.to(dtype) for z in (x, w, scale, gate_up, q, k)]
        x_, w_, s_, gu_, q_, k_ = cast
        compare(grads(lambda x, w: rms_norm(x, w, 1e-6), x_, w_), grads(rms_ref, x, w), tol)
        compare(grads(swiglu, s_, gu_), grads(swiglu_ref, scale, gate_up), tol)
        compare(grads(lambda q, k: torch.cat([r.flatten() for r in rope(q, k, cos, sin)]),
                      q_, k_), grads(rope_ref, q, k), tol)
        done.append(str(dtype).removeprefix("torch."))
    return "RMSNorm, SwiGLU, RoPE: values and gradients match in " + ", ".join(done)


def check_training(dev: torch.device, small: bool) -> str:
    cfg = MoEConfig(vocab_size=512 if small else 8192, d_model=64 if small else 512,
                    n_layers=2 if small else 4, n_heads=4 if small else 8, n_kv_heads=2,
                    expert_size=64 if small else 1024, shared_expert_size=64 if small else 1024,
                    sliding_window=16 if small else 256, layer_pattern="SF")
    t, b = (64, 4) if small else (1024, 8)
    motif = torch.randint(0, cfg.vocab_size, (b, 32), generator=torch.Generator().manual_seed(0))
    data = motif.repeat(1, t // 32 + 1)[:, :t + 1].to(dev)  # each row repeats a 32-token motif
    amp = torch.autocast(dev.type, torch.bfloat16, enabled=dev.type == "cuda")
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = MoEForCausalLM(cfg).to(dev)
        run = torch.compile(model) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        curve = []
        for _ in range(30):
            with amp:
                loss = run(data[:, :-1], data[:, 1:]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            curve.append(loss.item())
        if not all(map(math.isfinite, curve)) or curve[-1] > 0.9 * curve[0]:
            raise AssertionError(f"compiled={compiled}: loss {curve[0]:.3f} -> {curve[-1]:.3f}")
        losses[compiled] = curve
    graphs = torch._dynamo.explain(model)(data[:, :-1], data[:, 1:]).graph_count
    first, tenth = (abs(losses[True][i] - losses[False][i]) / losses[False][i] for i in (0, 9))
    if graphs != 1 or first > 1e-2 or tenth > 5e-2:
        raise AssertionError(f"compiled: {graphs} graphs; losses {losses[True][:10]} vs eager "
                             f"{losses[False][:10]}")
    return (f"30 steps{' bf16 autocast' if dev.type == 'cuda' else ''}: eager "
            f"{losses[False][0]:.3f} -> {losses[False][-1]:.3f}, compiled (1 graph) "
            f"{losses[True][0]:.3f} -> {losses[True][-1]:.3f}")


CHECKS = {"fused_cross_entropy": check_fused_ce, "sliding_attention": check_sliding_attention,
          "compiled_kernels": check_compiled_kernels, "training": check_training}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev = torch.device(args.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"# torch {torch.__version__} on {where}", flush=True)
    failures = 0
    for name, check in CHECKS.items():
        try:
            print(f"PASS {name}: {check(dev, small=dev.type != 'cuda')}", flush=True)
        except Exception:  # report every check, then fail
            failures += 1
            print(f"FAIL {name}:\n{traceback.format_exc()}", flush=True)
    return failures


if __name__ == "__main__":
    sys.exit(main())
