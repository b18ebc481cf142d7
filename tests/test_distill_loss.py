"""The fused distillation loss matches an unfused reference over full logits (values and
gradients) for every divergence and temperature, and the dense student is a Llama checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from stages.model import MoEConfig, MoEForCausalLM, load_hf, load_training_model, save_hf
from stages.model import loss as loss_module
from stages.model.loss import KDLoss, linear_distillation_loss
from stages.train.loop import flops_per_token

IGNORE = loss_module.IGNORE
V, D, ROWS, K = 300, 16, 150, 8
DENSE = MoEConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, n_experts=0,
                  top_k=0, expert_size=0, shared_expert_size=0, ffn_size=48, layer_pattern="F",
                  arch="llama", sliding_window=6)


def reference(h, w, t, idx, lt, kd: KDLoss) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective written out over the full (rows, vocab) logits with autograd."""
    z = h @ w.t()
    a, T, lam = kd.alpha, kd.temperature, kd.skew
    valid = t != IGNORE
    ce = F.cross_entropy(z, t, reduction="none", ignore_index=IGNORE)
    logp = F.log_softmax(z / T, -1)
    lp = logp.gather(1, idx)
    if kd.tail:  # buckets: the k ids and everything else
        rest = torch.log1p(-lt.exp().sum(-1, keepdim=True))
        lq = F.log_softmax(torch.cat([lt, rest], -1) / T, -1)
        off = torch.ones_like(z, dtype=torch.bool).scatter(1, idx, False)
        lp = torch.cat([lp, logp.masked_fill(~off, float("-inf")).logsumexp(-1, True)], -1)
    else:  # the teacher renormalised over its top-k
        lq = F.log_softmax(lt / T, -1)
    q = lq.exp()
    if kd.divergence == "forward":
        div = (q * (lq - lp)).sum(-1)
    elif kd.divergence == "skew":
        div = (q * (lq - torch.log(lam * q + (1 - lam) * lp.exp()))).sum(-1)
    elif kd.tail:
        div = (lp.exp() * (lp - lq)).sum(-1)
    else:  # the student renormalised over the teacher's top-k
        ln = F.log_softmax(lp, -1)
        div = (ln.exp() * (ln - lq)).sum(-1)
    obj = (1 - a) * ce + a * T * T * div
    n = valid.sum()
    return obj[valid].sum() / n, ce[valid].sum() / n


def case(seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(ROWS, D, dtype=dtype, generator=g, requires_grad=True)
    w = torch.randn(V, D, dtype=dtype, generator=g, requires_grad=True)
    t = torch.randint(0, V, (ROWS,), generator=g)
    t[::7] = IGNORE
    teacher = torch.randn(ROWS, V, dtype=dtype, generator=g) * 2
    lt, idx = F.log_softmax(teacher, -1).topk(K, -1)
    return h, w, t, idx, lt


KDS = [KDLoss(alpha, temp, div, lam, tail)
       for tail in (True, False)
       for alpha, temp, div, lam in [
           (0.5, 1.0, "forward", 0.1), (0.7, 2.0, "forward", 0.1), (1.0, 0.5, "forward", 0.1),
           (0.5, 1.0, "reverse", 0.1), (0.3, 3.0, "reverse", 0.1),
           (0.5, 1.0, "skew", 0.1), (0.6, 2.0, "skew", 0.3), (0.0, 2.0, "forward", 0.1)]]


@pytest.mark.parametrize("kd", KDS, ids=lambda kd: (
    f"{kd.divergence}-a{kd.alpha}-T{kd.temperature}-l{kd.skew}-{'tail' if kd.tail else 'renorm'}"))
def test_fused_distillation_loss_matches_the_unfused_reference(monkeypatch, kd):
    monkeypatch.setitem(loss_module.CHUNK_ELEMENTS, "cpu", V * 64)  # 64-row chunks, ragged last
    h, w, t, idx, lt = case(0)
    obj, ce = linear_distillation_loss(h, w, t, idx, lt, kd)
    assert not ce.requires_grad  # logged only: the objective is what trains
    (2 * obj).backward()
    grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref_obj, ref_ce = reference(h, w, t, idx, lt, kd)
    (2 * ref_obj).backward()
    torch.testing.assert_close(obj, ref_obj, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ce, ref_ce, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads, (h.grad, w.grad), rtol=1e-9, atol=1e-12)
    if kd.alpha == 0:  # the plain fused cross-entropy
        torch.testing.assert_close(obj, loss_module.linear_cross_entropy(h, w, t))


def test_fused_distillation_gradcheck():
    """Finite differences of the fused function itself (float64, tiny sizes)."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(10, 4, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.tensor([1, 2, IGNORE, 4, 5, 9])
    lt, idx = F.log_softmax(torch.randn(6, 10, dtype=torch.float64, generator=g), -1).topk(3, -1)
    for kd in [KDLoss(0.5, 2.0, div, 0.2, tail) for div in ("forward", "reverse", "skew")
               for tail in (True, False)]:
        assert torch.autograd.gradcheck(
            lambda h, w, kd=kd: linear_distillation_loss(h, w, t, idx, lt, kd)[0], (h, w))


def test_fp32_in_place_path_and_a_half_precision_teacher(monkeypatch):
    """The CPU fp32 path overwrites its logits buffer in place; the teacher comes as float16."""
    monkeypatch.setitem(loss_module.CHUNK_ELEMENTS, "cpu", V * 64)
    h, w, t, idx, lt = case(2, torch.float32)
    for kd in (KDLoss(0.5, 2.0, "forward"), KDLoss(0.5, 1.0, "skew"),
               KDLoss(0.5, 2.0, "reverse"), KDLoss(0.5, 1.0, "reverse", tail=False)):
        obj, ce = linear_distillation_loss(h, w, t, idx, lt.half(), kd)
        obj.backward()
        grads = h.grad.clone(), w.grad.clone()
        h.grad = w.grad = None
        ref_obj, ref_ce = reference(h, w, t, idx, lt.half().float(), kd)
        ref_obj.backward()
        torch.testing.assert_close((obj, ce), (ref_obj, ref_ce), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grads, (h.grad, w.grad), rtol=1e-4, atol=1e-5)
        h.grad = w.grad = None


def test_model_forward_mixes_the_objective_and_keeps_plain_ce():
    torch.manual_seed(0)
    model = MoEForCausalLM(DENSE)
    x = torch.randint(0, 128, (2, 24))
    y = torch.randint(0, 128, (2, 24))
    lt, idx = F.log_softmax(torch.randn(2, 24, 128), -1).topk(5, -1)
    kd = KDLoss(0.5, 2.0)
    out = model(x, y, idx, lt, kd)
    plain = model(x, y)
    torch.testing.assert_close(out.ce, plain.ce)
    ref, _ = reference(model.model.norm(_hidden(model, x)).reshape(-1, 32), model.lm_head.weight,
                       y.reshape(-1), idx.reshape(-1, 5), lt.reshape(-1, 5), kd)
    torch.testing.assert_close(out.token_loss, ref)
    assert out.loss is out.token_loss and out.aux_loss is None  # dense: no router terms


def _hidden(model, x):
    from stages.model.moe import rope_cache

    cos, sin = rope_cache(model.config, x.shape[1], x.device)
    h = model.model.embed_tokens(x)
    for layer in model.model.layers:
        h = layer(h, cos, sin, {}, [])
    return h


def test_dense_student_exports_as_llama_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = MoEForCausalLM(DENSE).eval()
    save_hf(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["intermediate_size"] == 48 and "num_experts_per_tok" not in config
    hf = load_hf(tmp_path).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    x = torch.randint(0, 128, (2, 40))  # longer than sliding_window: full attention regardless
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, atol=2e-5, rtol=1e-5)
        again = load_training_model(tmp_path).eval()
        torch.testing.assert_close(again(x).logits, model(x).logits, atol=0, rtol=0)


def test_dense_param_counts_and_flops():
    model = MoEForCausalLM(DENSE)
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params(active=True) == model.num_params() == total
    layer = 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 48 + 2 * 32  # q,o + k,v (2 of 4 heads) + mlp
    assert total == 2 * 128 * 32 + 2 * layer + 32
    assert flops_per_token(model, 100) == 6 * (total - 128 * 32) + 2 * 12 * 32 * 100


def test_invalid_dense_configs_are_rejected():
    base = {k: v for k, v in DENSE.to_dict().items()}
    with pytest.raises(ValueError, match="dense"):
        MoEConfig(**{**base, "n_experts": 4})
    with pytest.raises(ValueError, match="layer_pattern 'F'"):
        MoEConfig(**{**base, "layer_pattern": "SF"})
    with pytest.raises(ValueError, match="ffn_size must be 0"):
        MoEConfig(vocab_size=128, d_model=32, n_heads=4, ffn_size=8)
    with pytest.raises(ValueError, match="divergence"):
        KDLoss(divergence="jsd")
