"""Precision modes: FP8 emulation tracks fp32 training, changes numerics, spares router and head."""

from __future__ import annotations

import importlib.util
import json
import statistics

import pytest
import torch
from torch import nn

from stages.model import MoEConfig, MoEForCausalLM, save_hf
from stages.model.moe import Experts, Router
from stages.model.precision import (
    E4M3,
    Fp8EmulatedExperts,
    Fp8EmulatedLinear,
    Fp8Meta,
    PrecisionConfig,
    _qdq,
    apply_precision,
    precision_metadata,
)

V, T, B = 256, 64, 8
CFG = MoEConfig(vocab_size=V, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, n_experts=4, top_k=2,
                expert_size=64, shared_expert_size=64, sliding_window=16, layer_pattern="SF")


def markov_batches(steps: int):
    """A fixed, learnable stream: each token has 4 equally likely successors."""
    g = torch.Generator().manual_seed(1)
    successors = torch.randint(0, V, (V, 4), generator=g)
    for _ in range(steps):
        x = torch.empty(B, T + 1, dtype=torch.long)
        x[:, 0] = torch.randint(0, V, (B,), generator=g)
        for t in range(T):
            x[:, t + 1] = successors[x[:, t], torch.randint(0, 4, (B,), generator=g)]
        yield x


def train(pc: PrecisionConfig, steps: int = 40) -> tuple[list[float], nn.Module]:
    torch.manual_seed(0)
    model = MoEForCausalLM(CFG)
    context = apply_precision(model, pc)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for x in markov_batches(steps):
        with context():
            loss = model(x[:, :-1], x[:, 1:]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, model


@pytest.fixture(scope="module")
def fp32_losses():
    return train(PrecisionConfig("fp32"))[0]


@pytest.mark.parametrize("recipe", ["delayed", "current"])
def test_fp8_emulated_training_tracks_fp32(fp32_losses, recipe):
    losses, model = train(PrecisionConfig("fp8_emulated", recipe))
    ref, got = statistics.mean(fp32_losses[-5:]), statistics.mean(losses[-5:])
    assert ref < 0.6 * fp32_losses[0]  # it learned something
    assert abs(got - ref) / ref < 0.02
    assert max(abs(a - b) for a, b in zip(losses, fp32_losses, strict=True)) > 1e-5  # changed
    if recipe == "delayed":
        metas = [m for m in model.modules() if isinstance(m, Fp8Meta)]
        assert metas and all((m.amax_grad > 0).all() and (m.amax_x > 0).all() for m in metas)


def test_fp8_emulation_swaps_matmuls_but_not_router_or_head():
    model = MoEForCausalLM(CFG)
    apply_precision(model, PrecisionConfig("fp8_emulated"))
    assert type(model.lm_head) is nn.Linear
    for layer in model.model.layers:
        mlp, attn = layer.mlp, layer.self_attn
        assert type(mlp.gate) is Router and type(mlp.shared_expert_gate) is nn.Linear
        assert type(mlp.experts) is Fp8EmulatedExperts
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                    mlp.shared_expert.gate_proj, mlp.shared_expert.down_proj):
            assert type(lin) is Fp8EmulatedLinear


def test_fp8_emulation_changes_logits_by_fp8_amounts_and_eval_keeps_scales():
    torch.manual_seed(0)
    ref = MoEForCausalLM(CFG).eval()
    fp8 = MoEForCausalLM(CFG).eval()
    fp8.load_state_dict(ref.state_dict())
    apply_precision(fp8, PrecisionConfig("fp8_emulated"))
    before = {k: v.clone() for k, v in fp8.state_dict().items() if "amax" in k}
    x = next(markov_batches(1))
    with torch.no_grad():
        a, b = ref(x).logits, fp8(x).logits
    rel = ((a - b).norm() / a.norm()).item()
    assert 1e-3 < rel < 0.2, rel
    assert all(torch.equal(v, fp8.state_dict()[k]) for k, v in before.items())


def test_qdq_lands_on_the_e4m3_grid_and_saturates():
    x = torch.randn(1000) * 3
    history = torch.tensor([6.0, 0.0])  # delayed: scale from max(history) = 6 < amax, so saturates
    q = _qdq(x, history, E4M3, margin=0, delayed=True, record=True)
    scaled = q * (448 / 6.0)
    torch.testing.assert_close(scaled.to(E4M3).float(), scaled, rtol=1e-6, atol=0)
    assert len(scaled.unique()) < 256
    assert q.abs().max() <= 6.0 + 1e-6 and torch.isfinite(q).all()
    assert history[0] == x.abs().max() and history[1] == 6.0


@pytest.mark.parametrize("delayed", [True, False])
def test_scaling_keeps_tiny_activations_and_gradients(delayed):
    """Values far below FP8's normal range survive only because of the per-tensor scales."""
    torch.manual_seed(0)
    meta = Fp8Meta(history_len=4, margin=0, delayed=delayed)
    x = (torch.randn(64, 32) * 1e-3).requires_grad_()
    w = (torch.randn(16, 32) * 1e-3).requires_grad_()
    grad = torch.randn(64, 16) * 1e-7
    for _ in range(2):  # the second pass uses the recorded history when delayed
        x.grad = w.grad = None
        y = meta.matmul(torch.nn.functional.linear, x, w)
        y.backward(grad)
    exact = x.detach() @ w.detach().T

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert 1e-3 < rel(y.detach(), exact) < 0.1  # e4m3 has 3 mantissa bits
    assert 1e-3 < rel(x.grad, grad @ w.detach()) < 0.2  # e5m2 has 2
    assert 1e-3 < rel(w.grad, grad.T @ x.detach()) < 0.2


def test_checkpoint_records_precision(tmp_path):
    pc = PrecisionConfig("fp8_emulated", "current", amax_history_len=4)
    model = MoEForCausalLM(CFG)
    apply_precision(model, pc)
    save_hf(model, tmp_path, precision=precision_metadata(pc))
    saved = json.loads((tmp_path / "config.json").read_text())["training_precision"]
    assert saved["mode"] == "fp8_emulated" and saved["recipe"] == "current"
    assert saved["amax_history_len"] == 4 and saved["backend"] == "torch"


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed")
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_torchao_float8_converts_linears_only(recipe):
    from torchao.float8.float8_linear import Float8Linear

    model = MoEForCausalLM(CFG)
    context = apply_precision(model, PrecisionConfig("fp8_torchao", recipe))
    assert type(model.lm_head) is nn.Linear
    assert type(model.model.layers[0].mlp.shared_expert_gate) is nn.Linear
    assert type(model.model.layers[0].mlp.experts) is Experts  # FP8 grouped GEMM is CUDA-only
    assert isinstance(model.model.layers[0].self_attn.q_proj, Float8Linear)
    x = next(markov_batches(1))
    with context():
        loss = model(x[:, :-1], x[:, 1:]).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_transformer_engine_missing_is_a_clear_error():
    if importlib.util.find_spec("transformer_engine") is not None:
        pytest.skip("Transformer Engine is installed")
    with pytest.raises(RuntimeError, match="Transformer Engine"):
        apply_precision(MoEForCausalLM(CFG), PrecisionConfig("fp8_te", "mxfp8"))


def test_unknown_recipe_is_rejected():
    with pytest.raises(ValueError, match="recipes"):
        PrecisionConfig("fp8_torchao", "delayed")
    assert PrecisionConfig("fp8_te").recipe == "delayed"


def test_padded_expert_groups_keep_fp8_grouped_gemm_strides_16_byte_aligned():
    """The FP8 wgrad quantises A and grad_output column-major with stride (1, rows): rows, and
    every group end in offs, must be multiples of 16 (the last group absorbs the spare rows)."""
    seen = []

    class Recording(Experts):
        def matmul(self, x, name, offs):
            seen.append((x.shape[0], offs.tolist()))
            return super().matmul(x, name, offs)

    torch.manual_seed(0)
    model = MoEForCausalLM(CFG)
    for layer in model.model.layers:
        layer.mlp.experts.__class__, layer.mlp.experts.align = Recording, 16
    x = next(markov_batches(1))
    model(x[:, :-1], x[:, 1:]).loss.backward()
    assert seen
    for rows, offs in seen:
        assert rows % 16 == 0 and offs[-1] == rows
        assert all(o % 16 == 0 for o in offs) and offs == sorted(offs)
