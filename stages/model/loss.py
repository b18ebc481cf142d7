"""Next-token cross-entropy fused with the output projection, without keeping the logits.

`F.cross_entropy(lm_head(h))` keeps the (tokens, vocab) logits and their log-softmax for the
backward pass, then fills a zero gradient of that size and walks it twice more: the largest
tensors of a small model's step, all of it memory traffic. Here the logits are made a chunk of
rows at a time into one reused buffer, their gradient (softmax - one-hot) is taken in place in the
forward pass and folded at once into the gradients of `h` and of the weight (the approach of
Liger-Kernel's fused linear cross-entropy, in plain torch). The backward pass only scales them.
The matmuls run in the autocast dtype when autocast is on (as `lm_head` would); softmax and sums
in fp32, or in the inputs' dtype if wider.
"""

from __future__ import annotations

import torch

IGNORE = -100
# Logits per chunk. CPU: 2^23 (1024 rows at vocab 8192, 32 MB in fp32) measured fastest,
# 0.87x the time of 256-row chunks: a GEMM with more rows runs closer to the matmul rate. GPU: large
# enough to fill the device (2048 rows at vocab 32k).
CHUNK_ELEMENTS = {"cpu": 1 << 23}
GPU_CHUNK_ELEMENTS = 1 << 26


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        rows = max(1, CHUNK_ELEMENTS.get(device, GPU_CHUNK_ELEMENTS) // weight.shape[0])
        rows = min(rows, h.shape[0])
        need_grad = any(ctx.needs_input_grad[:2])  # not in evaluation: the loss only
        acc = torch.promote_types(dtype, torch.float32)  # softmax and sums: fp32 or wider
        if need_grad:
            grad_h = torch.empty_like(h, dtype=dtype)
            grad_w = torch.zeros_like(weight, dtype=acc)
        total = torch.zeros((), dtype=acc, device=h.device)
        # One logits buffer reused by every chunk: a fresh chunk-sized tensor per matmul costs
        # page faults on CPU. There the log-softmax is written into it too (when already fp32);
        # elsewhere it gets its own tensor (CUDA's caching allocator makes that cheap, and the
        # in-place kernel is only measured and tested on CPU).
        buffer = h.new_empty(rows, weight.shape[0], dtype=dtype)
        in_place = device == "cpu" and dtype == acc
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)
            for start in range(0, h.shape[0], rows):
                hc = h[start:start + rows].to(dtype)
                t = targets[start:start + rows]
                valid = (t != IGNORE).unsqueeze(1)
                t = t.clamp_min(0).unsqueeze(1)
                logits = torch.mm(hc, w.t(), out=buffer[:hc.shape[0]])
                logp = (torch.log_softmax(logits, 1, out=logits) if in_place
                        else logits.to(acc).log_softmax(dim=-1))
                total -= (logp.gather(1, t) * valid).sum()
                if not need_grad:
                    continue
                g = logp.exp_().scatter_add_(1, t, torch.full_like(t, -1, dtype=logp.dtype))
                g = g.mul_(valid).to(dtype)
                torch.mm(g, w, out=grad_h[start:start + rows])
                if dtype == acc:
                    grad_w.addmm_(g.t(), hc)
                else:
                    grad_w += (g.t() @ hc).to(acc)
        if need_grad:
            ctx.save_for_backward(grad_h.to(h.dtype), grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_total.to(grad_h.dtype), grad_w * grad_total.to(grad_w.dtype), None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor,
                         targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` (rows, vocab) against `targets` (rows,), IGNORE
    skipped: what `F.cross_entropy(F.linear(h, weight), targets)` returns, with its gradients."""
    return _LinearCrossEntropy.apply(h, weight, targets) / (targets != IGNORE).sum()
