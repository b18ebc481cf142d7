"""The MoE training model computes what the exported transformers checkpoint computes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from stages.model import MoEConfig, MoEForCausalLM, load_hf, load_training_model, save_hf
from stages.model import loss as loss_module
from stages.model.moe import fused_kernels, kernels, rms_norm, sliding_mask

TINY = dict(vocab_size=128, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, n_experts=4, top_k=2,
            expert_size=48, sliding_window=6)
QWEN = MoEConfig(**TINY, shared_expert_size=32, layer_pattern="SSF")
MIXTRAL = MoEConfig(**TINY, shared_expert_size=0, layer_pattern="S", arch="mixtral")


def ids(seed: int, shape=(2, 24)) -> torch.Tensor:
    return torch.randint(0, 128, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cfg", [QWEN, MIXTRAL], ids=["qwen2_moe", "mixtral"])
@pytest.mark.parametrize("experts", ["grouped_mm", "eager"])
def test_logits_match_transformers(tmp_path, cfg, experts):
    torch.manual_seed(0)
    model = MoEForCausalLM(cfg).eval()
    save_hf(model, tmp_path)
    hf = load_hf(tmp_path, experts_implementation=experts).eval()
    assert type(hf).__name__ == {"qwen2_moe": "Qwen2MoeForCausalLM",
                                 "mixtral": "MixtralForCausalLM"}[cfg.arch]
    x = ids(1)  # 24 tokens > window 6: the sliding layers really mask
    with torch.no_grad():
        ours, theirs = model(x[:, :-1], x[:, 1:]), hf(x, output_router_logits=True)
        logits = model(x).logits
    torch.testing.assert_close(logits, theirs.logits, atol=2e-5, rtol=1e-5)
    ce = torch.nn.functional.cross_entropy(theirs.logits[:, :-1].reshape(-1, 128),
                                           x[:, 1:].reshape(-1))
    torch.testing.assert_close(ours.ce, ce, atol=1e-5, rtol=1e-5)  # the fused loss
    aux = hf(x[:, :-1], output_router_logits=True).aux_loss
    torch.testing.assert_close(ours.aux_loss, aux, atol=1e-5, rtol=1e-5)


def test_export_keeps_the_per_layer_pattern(tmp_path):
    save_hf(MoEForCausalLM(QWEN), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2MoeForCausalLM"]  # what llama.cpp's converter reads
    assert config["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention",
                                     "sliding_attention"]
    assert config["sliding_window"] == 6 and config["use_sliding_window"]


@pytest.mark.parametrize("pattern,changed_from", [("S", 4), ("F", 24)])
def test_sliding_window_bounds_the_receptive_field(pattern, changed_from):
    """One sliding layer with window 4: position t sees tokens t-3..t only."""
    cfg = MoEConfig(**{**TINY, "n_layers": 1, "sliding_window": 4}, shared_expert_size=0,
                    layer_pattern=pattern, arch="mixtral")
    model = MoEForCausalLM(cfg).eval()
    x = ids(2, (1, 24))
    y = x.clone()
    y[0, 0] = (x[0, 0] + 1) % 128
    with torch.no_grad():
        diff = (model(x).logits - model(y).logits).abs().amax(-1)[0]
    assert (diff[:changed_from] > 1e-3).all()
    assert (diff[changed_from:] < 1e-6).all()  # not 0: routing changes the grouped GEMM blocking


def test_sliding_mask_rule():
    assert sliding_mask(4, 2, "cpu").int().tolist() == [
        [1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]


def test_grouped_loop_and_padded_experts_agree():
    torch.manual_seed(0)
    ref = MoEForCausalLM(QWEN, experts_impl="loop")
    x = ids(3)
    results = []
    for impl, align in [("loop", 1), ("grouped_mm", 1), ("grouped_mm", 16)]:
        model = MoEForCausalLM(QWEN, experts_impl=impl)
        model.load_state_dict(ref.state_dict())
        for layer in model.model.layers:
            layer.mlp.experts.align = align
        out = model(x, x)
        out.loss.backward()
        results.append((out.loss, [p.grad for p in model.parameters()]))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], atol=1e-5, rtol=1e-5)
        for g, g0 in zip(grads, results[0][1], strict=True):
            torch.testing.assert_close(g, g0, atol=1e-5, rtol=1e-4)


def test_checkpoint_round_trip_and_metadata(tmp_path):
    torch.manual_seed(0)
    cfg = MoEConfig(**{**TINY, "n_layers": 2}, shared_expert_size=0, layer_pattern="F",
                    arch="mixtral", tie_embeddings=True)
    model = MoEForCausalLM(cfg).eval()
    precision = {"mode": "fp8_emulated", "recipe": "delayed"}
    save_hf(model, tmp_path, precision=precision)
    again = load_training_model(tmp_path).eval()
    assert again.lm_head.weight is again.model.embed_tokens.weight
    x = ids(4)
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, model(x).logits, atol=0, rtol=0)
        torch.testing.assert_close(load_hf(tmp_path)(x).logits, model(x).logits, atol=2e-5,
                                   rtol=1e-5)
    assert json.loads((tmp_path / "config.json").read_text())["training_precision"] == precision
    with safe_open(tmp_path / "model.safetensors", "pt") as f:  # the canonical per-expert layout
        assert "model.layers.0.block_sparse_moe.experts.0.w1.weight" in f.keys()


def test_invalid_configs_are_rejected():
    with pytest.raises(ValueError, match="one window"):
        MoEConfig(**TINY, shared_expert_size=0, layer_pattern="SF", arch="mixtral")
    with pytest.raises(ValueError, match="shared expert"):
        MoEConfig(**TINY, shared_expert_size=0)
    with pytest.raises(ValueError, match="layer_pattern"):
        MoEConfig(**TINY, layer_pattern="SX")


def test_param_counts():
    model = MoEForCausalLM(QWEN)
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert model.num_params() == total
    assert model.num_params(active=True) == total - experts + experts * 2 // 4
    assert model.num_params(embeddings=False) == total - 128 * 32


def test_loss_is_cross_entropy_plus_router_terms():
    cfg = MoEConfig(**TINY, shared_expert_size=32, layer_pattern="SSF", z_loss_coef=1e-3)
    model = MoEForCausalLM(cfg)
    x, y = ids(5), ids(6)
    out = model(x, y)
    ce = torch.nn.functional.cross_entropy(model(x).logits.view(-1, 128), y.view(-1))
    torch.testing.assert_close(out.ce, ce)
    torch.testing.assert_close(out.loss, ce + 0.01 * out.aux_loss + 1e-3 * out.z_loss)
    assert out.z_loss > 0 and out.aux_loss > 0


def test_fused_linear_cross_entropy_matches_unfused(monkeypatch):
    monkeypatch.setitem(loss_module.CHUNK_ELEMENTS, "cpu", 300 * 64)  # 64-row chunks, ragged last
    torch.manual_seed(0)
    h = torch.randn(150, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 300, (150,))
    t[::7] = loss_module.IGNORE
    fused = loss_module.linear_cross_entropy(h, w, t)
    (2 * fused).backward()
    grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    plain = torch.nn.functional.cross_entropy(h @ w.t(), t)
    (2 * plain).backward()
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads, (h.grad, w.grad), rtol=1e-9, atol=1e-12)


def test_fused_cross_entropy_under_bf16_autocast_matches_the_autocast_loss(monkeypatch):
    """The mixed-precision path (GPU training): bf16 matmuls, fp32 softmax, fp32 gradients out."""
    monkeypatch.setitem(loss_module.CHUNK_ELEMENTS, "cpu", 300 * 64)
    torch.manual_seed(0)
    h = torch.randn(150, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)
    t = torch.randint(0, 300, (150,))
    t[::7] = loss_module.IGNORE
    with torch.autocast("cpu", torch.bfloat16):
        fused = loss_module.linear_cross_entropy(h, w, t)
    fused.backward()
    grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    with torch.autocast("cpu", torch.bfloat16):
        logits = torch.nn.functional.linear(h, w)
    torch.nn.functional.cross_entropy(logits.float(), t).backward()
    assert fused.dtype == grads[0].dtype == grads[1].dtype == torch.float32
    torch.testing.assert_close(fused, torch.nn.functional.cross_entropy(logits.float(), t))
    torch.testing.assert_close(grads, (h.grad, w.grad), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "compiled"])
def test_swiglu_computes_scaled_silu_gate_times_up_and_its_gradients(fused):
    """Eager and as the compiled kernel, fused projection (gate_up) or separate (gate, up): values
    and the gradients of all inputs (the routing weight included) against finite differences."""
    with fused_kernels(fused):
        swiglu = kernels.swiglu
    torch.manual_seed(0)
    gate_up = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(10, dtype=torch.float64, requires_grad=True)
    gate, up = gate_up.detach().chunk(2, dim=-1)
    expected = scale.detach()[:, None] * torch.nn.functional.silu(gate) * up
    torch.testing.assert_close(swiglu(scale, gate_up), expected)
    torch.autograd.gradcheck(swiglu, (scale, gate_up))
    gate, up = gate.clone().requires_grad_(), up.clone().requires_grad_()
    torch.testing.assert_close(swiglu(scale, gate, up), expected)
    torch.autograd.gradcheck(swiglu, (scale, gate, up))


def test_fused_kernels_compute_what_the_eager_model_computes():
    """`compile: kernels`: RMSNorm, RoPE and SwiGLU compiled, the same loss and gradients (up to
    rounding) as eager; the eager kernels are back after the block."""
    torch.manual_seed(0)
    model, x = MoEForCausalLM(QWEN), ids(2)

    def loss_and_grads():
        model.zero_grad()
        loss = model(x[:, :-1], x[:, 1:]).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager = loss_and_grads()
    with fused_kernels():
        assert kernels.rms_norm is not rms_norm
        fused = loss_and_grads()
    assert kernels.rms_norm is rms_norm
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-4)
