"""Next-token cross-entropy fused with the output projection, without keeping the logits.

`F.cross_entropy(lm_head(h))` keeps the (tokens, vocab) logits and their log-softmax for the
backward pass, then fills a zero gradient of that size and walks it twice more: the largest
tensors of a small model's step, all of it memory traffic. Here the logits are made a chunk of
rows at a time into one reused buffer, their gradient (softmax - one-hot) is taken in place in the
forward pass and folded at once into the gradients of `h` and of the weight (the approach of
Liger-Kernel's fused linear cross-entropy, in plain torch). The backward pass only scales them.
The matmuls run in the autocast dtype when autocast is on (as `lm_head` would); softmax and sums
in fp32, or in the inputs' dtype if wider.

Knowledge distillation (`linear_distillation_loss`) is the same pass with a second term per row,
from a teacher's top-k log-probs l_j (j in S, |S| = k; full-vocabulary log-probs, m = sum_S e^l_j
the mass they cover):

    objective = (1 - alpha) * CE + alpha * T^2 * D(q, p),   a = z / T (student logits z),

p = softmax(a) over the full vocabulary. The teacher's distribution q on the support:

- `tail` (default): S plus one bucket for the rest: q = softmax([l_S, log(1 - m)] / T), and the
  student coarse-grained the same way (its exact mass off S, p_rest = sum_{v not in S} p_v). At
  T = 1 this is the exact divergence between the two distributions over the k ids + "anything
  else" (a lower bound of the full-vocabulary one); at T != 1 the teacher's tail is tempered as if
  it were one token (its split over the vocabulary is not stored). The student is neither pushed
  to put all its mass on S nor left free off S.
- renormalised (`tail=False`, Hinton on the top-k): q = softmax(l_S / T) on S, 0 off S (exact for
  the tempered teacher conditioned on S). Forward and skew sum over S only, since q is 0 off S;
  reverse KL(p || q) is infinite off S, so the student is renormalised on S too (p~ = softmax(a_S))
  and gets no gradient off S from it. This target is over-confident by the teacher's tail mass,
  which on the demo (top-32 mass ~0.5) makes KD worse than no KD (docs/distill.md).

Divergences, summed over the buckets b (S, and the tail bucket if any):
- forward: D = KL(q || p) = sum_b q_b log(q_b / p_b).
- skew (DistiLLM's skew KL, Ko et al. 2024): D = KL(q || m), m = lam q + (1 - lam) p;
  lam = 0 is forward.
- reverse: D = KL(p || q) = sum_b p_b log(p_b / q_b).

Gradients in closed form, dD/da = f_off * p_i off S and h_i on S (`_divergence`): forward/skew
with r_b = q_b p_b / m_b and R = sum_b r_b: h = (1 - lam)(p R - r), f_off = (1 - lam)(R - q_t /
m_t) (without a tail bucket: (1 - lam) R); reverse with s_b = log(p_b / q_b): h = p (s - D),
f_off = s_t - D (renormalised: h = p~ (log p~ - log q - D), f_off = 0). dD/dz = dD/da / T, so the
T^2-scaled term's gradient is T dD/da (Hinton et al. 2015). All of it is formed per chunk and
folded into the same two matmuls as the CE gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100
# Logits per chunk. CPU: 2^23 (1024 rows at vocab 8192, 32 MB in fp32) measured fastest,
# 0.87x the time of 256-row chunks: a GEMM with more rows runs closer to the matmul rate. GPU: large
# enough to fill the device (2048 rows at vocab 32k).
CHUNK_ELEMENTS = {"cpu": 1 << 23}
GPU_CHUNK_ELEMENTS = 1 << 26
DIVERGENCES = ("forward", "reverse", "skew")


@dataclass(frozen=True)
class KDLoss:
    """The distillation term's settings (module docstring): `(1 - alpha) CE + alpha T^2 D`."""

    alpha: float = 0.5
    temperature: float = 1.0
    divergence: str = "forward"  # forward | reverse | skew
    skew: float = 0.1  # lam of the skew KL
    tail: bool = True  # the teacher's mass off its top-k as one bucket; False: renormalise

    def __post_init__(self):
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}")
        if not (0 <= self.alpha <= 1 and self.temperature > 0 and 0 <= self.skew < 1):
            raise ValueError("need 0 <= alpha <= 1, temperature > 0 and 0 <= skew < 1")


def _divergence(lq, lp, lq_t, lp_t, kd: KDLoss):
    """Per row: (D, f_off, h) with dD/da = f_off * p off S and h on S (module docstring). `lq`,
    `lp`: teacher and student log-probs on S; `lq_t`, `lp_t`: their tail buckets (None: the
    top-k renormalised)."""
    lam, tail = (kd.skew if kd.divergence == "skew" else 0.0), lq_t is not None
    q, p = lq.exp(), lp.exp()
    if kd.divergence == "reverse":
        if not tail:  # the student renormalised on S
            ln = lp - lp.logsumexp(1, keepdim=True)
            d = (ln.exp() * (ln - lq)).sum(1, keepdim=True)
            return d, 0.0, ln.exp() * (ln - lq - d)
        s, s_t = lp - lq, lp_t - lq_t
        d = (p * s).sum(1, keepdim=True) + lp_t.exp() * s_t
        return d, s_t - d, p * (s - d)
    # forward is skew with lam 0: D = sum_b q_b (log q_b - log m_b), m = lam q + (1 - lam) p
    m = lam * q + (1 - lam) * p
    r = q * p / m
    d = (q * (lq - m.log())).sum(1, keepdim=True)
    big_r = r.sum(1, keepdim=True)
    f_off = (1 - lam) * big_r if lam else 1.0  # forward: R = sum_S q = 1
    if tail:
        q_t = lq_t.exp()
        m_t = lam * q_t + (1 - lam) * lp_t.exp()
        d = d + q_t * (lq_t - m_t.log())
        big_r = big_r + q_t * lp_t.exp() / m_t
        f_off = (1 - lam) * (big_r - q_t / m_t)
    return d, f_off, (1 - lam) * (p * big_r - r)


def _distill_rows(logits: torch.Tensor, t: torch.Tensor, idx: torch.Tensor, lt: torch.Tensor,
                  kd: KDLoss, acc: torch.dtype, in_place: bool, need_grad: bool):
    """One chunk's (objective rows, CE rows, gradient of the objective rows w.r.t. the logits or
    None): the distillation objective of the module docstring. `lt` is the teacher's top-k
    log-probs at `idx`; `in_place` lets it overwrite `logits`."""
    a, T = kd.alpha, kd.temperature
    z = logits if in_place else logits.to(acc)
    lt = lt.to(acc)
    if kd.tail:  # the teacher's mass off S as one more bucket, tempered like a token
        rest = torch.log1p(-lt.exp().sum(1, keepdim=True).clamp_max(1 - 1e-6))
        lq = torch.cat([lt, rest], 1).div_(T).log_softmax(1)
        lq, lq_t = lq[:, :-1], lq[:, -1:]
    else:
        lq, lq_t = (lt / T).log_softmax(1), None
    logp1 = torch.log_softmax(z, 1, out=z) if in_place else z.log_softmax(1)
    logp = logp1 if T == 1 else (logp1 / T).log_softmax(1)  # = log softmax(z / T)
    ce = -logp1.gather(1, t).squeeze(1)
    lp1 = logp1.gather(1, idx)
    lp = lp1 if T == 1 else logp.gather(1, idx)
    if kd.tail:  # S masked out: what exp leaves sums to the student's exact mass off S
        logp.scatter_(1, idx, float("-inf"))
    p = logp.exp_()  # softmax(z / T) (0 on S with a tail); with T == 1 also softmax(z)
    lp_t = p.sum(1, keepdim=True).log() if kd.tail else None
    d, f_off, h = _divergence(lq, lp, lq_t, lp_t, kd)
    rows = (1 - a) * ce + a * T * T * d.squeeze(1)
    if not need_grad:
        return rows, ce, None
    # g = (1 - a) (softmax(z) - onehot(t)) + a T dD/da: off S from the full rows, S set after
    if T == 1:
        g = p
        if not isinstance(f_off, float) or f_off != 1:
            g.mul_((1 - a) + a * f_off)
    else:
        g = logp1.exp_().mul_(1 - a)
        if not isinstance(f_off, float) or f_off:
            g.add_(p.mul_(a * T * f_off))
    g.scatter_(1, idx, (1 - a) * lp1.exp() + (a * T) * h)
    g.scatter_add_(1, t, torch.full_like(t, a - 1, dtype=g.dtype))
    return rows, ce, g


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                teacher_idx: torch.Tensor | None = None, teacher_logp: torch.Tensor | None = None,
                kd: KDLoss | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
        ce_total = torch.zeros((), dtype=acc, device=h.device)  # plain CE (distillation only)
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
                if kd is not None:
                    rows_, ce, g = _distill_rows(
                        logits, t, teacher_idx[start:start + rows],
                        teacher_logp[start:start + rows], kd, acc, in_place, need_grad)
                    total += torch.where(valid[:, 0], rows_, 0).sum()
                    ce_total += torch.where(valid[:, 0], ce, 0).sum()
                    if need_grad:
                        _fold(g.mul_(valid).to(dtype), hc, w, grad_h[start:start + rows], grad_w,
                              dtype == acc)
                    continue
                logp = (torch.log_softmax(logits, 1, out=logits) if in_place
                        else logits.to(acc).log_softmax(dim=-1))
                total -= (logp.gather(1, t) * valid).sum()
                if not need_grad:
                    continue
                g = logp.exp_().scatter_add_(1, t, torch.full_like(t, -1, dtype=logp.dtype))
                _fold(g.mul_(valid).to(dtype), hc, w, grad_h[start:start + rows], grad_w,
                      dtype == acc)
        if need_grad:
            ctx.save_for_backward(grad_h.to(h.dtype), grad_w.to(weight.dtype))
        if kd is None:
            ce_total = total.detach().clone()
        ctx.mark_non_differentiable(ce_total)
        return total, ce_total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor, _grad_ce):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_total.to(grad_h.dtype), grad_w * grad_total.to(grad_w.dtype),
                None, None, None, None)


def _fold(g: torch.Tensor, hc: torch.Tensor, w: torch.Tensor, grad_h: torch.Tensor,
          grad_w: torch.Tensor, same_dtype: bool) -> None:
    """A chunk's logits gradient into the gradients of `h` (its rows) and of the weight."""
    torch.mm(g, w, out=grad_h)
    if same_dtype:
        grad_w.addmm_(g.t(), hc)
    else:
        grad_w += (g.t() @ hc).to(grad_w.dtype)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor,
                         targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` (rows, vocab) against `targets` (rows,), IGNORE
    skipped: what `F.cross_entropy(F.linear(h, weight), targets)` returns, with its gradients."""
    return _LinearCrossEntropy.apply(h, weight, targets)[0] / (targets != IGNORE).sum()


def linear_distillation_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             teacher_idx: torch.Tensor, teacher_logp: torch.Tensor,
                             kd: KDLoss) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean distillation objective, mean CE) of `h @ weight.T` over the rows whose target is not
    IGNORE; `teacher_idx` (rows, k) int64 and `teacher_logp` (rows, k) are the teacher's top-k
    ids and log-probs at each row. Only the objective carries a gradient."""
    n = (targets != IGNORE).sum()
    total, ce = _LinearCrossEntropy.apply(h, weight, targets, teacher_idx, teacher_logp, kd)
    return total / n, ce / n
