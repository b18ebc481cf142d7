"""qat + ptq on the tiny profile, from the session's one `dvc repro` of the whole lineage.

Every artifact loads with `AutoModelForCausalLM` and gives finite logits; its weights are integers
on disk (packed int4 words for compressed-tensors, int8-held values in [-8, 7] for torchao),
not just a flag in a config; the teacher's experts are all calibrated and reported, also when the
router never picks one; the QAT model computes what its fake-quantized training model computed;
a SIGKILLed `qat` resumes to bit-identical weights. (That a `ptq` edit leaves `qat`, `distill`
and upstream up to date in DVC and Dagster alike is checked in tests/test_parity.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from stages.model import load_training_model
from stages.qat import CHECKPOINTS, OUT
from stages.qat.config import QuantParams
from stages.qat.fakequant import prepare
from stages.quant.ondisk import int_weights
from stages.runner import run_stage
from tests import stage_process
from tests.conftest import TINY, copy_tree, set_params

pytestmark = pytest.mark.slow
PTQ = "data/ptq"


def _logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _expected_linears(config: dict) -> int:
    """Quantized Linears per checkpoint: attention (4) and MLPs, experts one by one."""
    moe = config["moe_config"]
    per_layer = 4 + (3 if not moe["n_experts"] else 3 * moe["n_experts"] + 3)
    return per_layer * moe["n_layers"]


def test_ptq_artifacts_load_hold_packed_int4_and_are_scored(reproduced_project: Path):
    root = reproduced_project
    metrics = json.loads((root / "reports/ptq/metrics.json").read_text())
    ids = torch.arange(1, 40).unsqueeze(0)
    for name in ("student", "teacher"):
        source = json.loads((root / f"data/{'distill' if name == 'student' else 'adapt'}"
                             "/config.json").read_text())
        assert set(metrics[name]) == {"fp32", "rtn", "gptq", "awq"}
        for method in ("rtn", "gptq", "awq"):
            out = root / PTQ / name / method
            config = json.loads((out / "config.json").read_text())["quantization_config"]
            assert config["quant_method"] == "compressed-tensors"
            assert config["format"] == "pack-quantized"
            assert torch.isfinite(_logits(out, ids)).all()
            stored = int_weights(out)
            assert stored["storage_bits_per_weight"] == 4.0
            assert stored["quantized_tensors"] == _expected_linears(source)
            with safe_open(out / "model.safetensors", "pt") as f:
                packed = f.get_tensor("model.layers.0.self_attn.q_proj.weight_packed")
                shape = f.get_tensor("model.layers.0.self_attn.q_proj.weight_shape").tolist()
                scales = f.get_tensor("model.layers.0.self_attn.q_proj.weight_scale")
            group = TINY["ptq"]["scheme"]["group_size"]
            assert packed.dtype == torch.int32 and list(packed.shape) == [shape[0], shape[1] // 8]
            assert list(scales.shape) == [shape[0], shape[1] // group]
            row = metrics[name][method]
            assert row["eval_bpb"] == pytest.approx(metrics[name]["fp32"]["eval_bpb"], abs=0.05)
            assert row["eval_kl"] >= 0 and 0 < row["eval_top1"] <= 1
            assert row["bytes"] < metrics[name]["fp32"]["bytes"]
    calibration = json.loads((root / PTQ / "calibration.json").read_text())
    assert len(calibration["rows"]) == TINY["ptq"]["calibration"]["samples"]
    assert (root / "reports/ptq/bpb.png").stat().st_size > 0


def test_every_expert_is_calibrated_and_reported(reproduced_project: Path):
    metrics = json.loads((reproduced_project / "reports/ptq/metrics.json").read_text())
    model = TINY["pretrain"]["model"]
    experts, tokens = metrics["experts"], metrics["calibration_tokens"]
    assert len(experts["routed_tokens"]) == model["n_layers"]
    for routed, calibrated in zip(experts["routed_tokens"], experts["calibration_tokens"],
                                  strict=True):
        assert len(routed) == model["n_experts"] and sum(routed) == tokens * model["top_k"]
        assert calibrated == [tokens] * model["n_experts"]  # calibrate_all_experts
    assert metrics["goals"]["no_expert_uncalibrated"] is True


def test_a_router_that_never_picks_an_expert(reproduced_project: Path, tmp_path: Path,
                                             monkeypatch):
    """Expert 0 gets no routed token: with every expert calibrated on every token it is still
    quantized from data (and reported with 0 routed tokens); with routed tokens only, the stage
    stops before quantizing and names the expert."""
    from transformers.models.qwen2_moe import modeling_qwen2_moe as qwen2_moe

    route = qwen2_moe.Qwen2MoeTopKRouter.forward

    def never_expert_0(self, hidden):
        logits, _, _ = route(self, hidden)
        logits = logits.clone()
        logits[..., 0] = float("-inf")
        probs = logits.softmax(-1)
        top, idx = probs.topk(self.top_k, dim=-1)
        return logits, top, idx

    monkeypatch.setattr(qwen2_moe.Qwen2MoeTopKRouter, "forward", never_expert_0)
    root = copy_tree(reproduced_project, tmp_path / "project")
    set_params(root, ptq={"models": ["teacher"], "methods": ["gptq"]})
    metrics = run_stage("ptq", root)
    routed = metrics["experts"]["routed_tokens"]
    assert all(layer[0] == 0 for layer in routed)
    assert all(n == metrics["calibration_tokens"] for layer in metrics["experts"][
        "calibration_tokens"] for n in layer)
    with safe_open(root / PTQ / "teacher/gptq/model.safetensors", "pt") as f:
        assert "model.layers.0.mlp.experts.0.gate_proj.weight_packed" in f.keys()

    set_params(root, ptq={"moe": {"calibrate_all_experts": False}})
    with pytest.raises(ValueError, match=r"layer 0 expert 0: 0\b.*calibrate_all_experts"):
        run_stage("ptq", root)


def test_qat_model_is_int4_and_computes_what_training_computed(reproduced_project: Path):
    root = reproduced_project
    metrics = json.loads((root / "reports/qat/metrics.json").read_text())
    out = root / OUT
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    weight = model.model.layers[0].mlp.up_proj.weight
    assert type(weight).__name__ == "IntxUnpackedToInt8Tensor"
    assert weight.target_dtype == torch.int4 and weight.qdata.dtype == torch.int8
    stored = int_weights(out)
    assert stored["value_range"][0] >= -8 and stored["value_range"][1] <= 7
    assert stored["quantized_tensors"] == _expected_linears(
        json.loads((out / "float/config.json").read_text()))
    assert type(model.lm_head.weight) is torch.nn.Parameter  # the head stays full precision

    # the trained weights, fake-quantized as in training, compute what the int4 model computes
    trained = load_training_model(out / "float").eval()
    prepare(trained, QuantParams(**TINY["qat"]["quant"]))
    ids = torch.arange(1, 60).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, trained(ids).logits,
                                   atol=1e-4, rtol=1e-4)

    table = metrics["table"]
    assert set(table) == {"student", "student_rtn", "control", "control_rtn", "qat"}
    assert all(torch.isfinite(torch.tensor(row["eval_bpb"])) for row in table.values())
    assert (out / "control/model.safetensors").is_file()
    for rel in ("loss.png", "bpb.png", "control/loss.png"):
        assert (root / "reports/qat" / rel).stat().st_size > 0


def test_qat_resume_after_two_sigkills_is_bit_identical(reproduced_project: Path,
                                                       tmp_path: Path):
    """One kill in the control's run, one in the QAT run: both resume exactly. A quantization
    edit then retrains the QAT run only (the control's identity leaves `quant` out)."""
    project, reference = stage_process.resume_pair(
        reproduced_project, tmp_path, "qat", CHECKPOINTS, OUT,
        qat={"train_tokens": 30 * 512, "eval": {"every_steps": 15},
             "checkpoint": {"every_steps": 4}})

    first = stage_process.kill_after_checkpoint(project, "qat", f"{CHECKPOINTS}/control", 0)
    second = stage_process.kill_after_checkpoint(project, "qat", f"{CHECKPOINTS}/qat", 0)
    assert 0 < first < 30 and 0 < second < 30
    assert not (project / OUT).exists()  # a killed run never publishes its output
    metrics = stage_process.run_ok(project, "qat")
    assert metrics["resumed_from_step"] >= second
    stage_process.assert_same_bytes(project / OUT, reference / OUT, (
        "model.safetensors", "float/model.safetensors", "control/model.safetensors",
        "control/float/model.safetensors", "training.json"))

    # int8 dynamic activations too: the QAT run retrains, the control is only re-quantized
    control = (project / OUT / "control/float/model.safetensors").read_bytes()
    set_params(project, qat={"quant": {"activations": "int8_dynamic"}})
    metrics = run_stage("qat", project)
    assert metrics["resumed_from_step"] == 0 and metrics["quant"]["activations"] == "int8_dynamic"
    assert (project / OUT / "control/float/model.safetensors").read_bytes() == control
    for sub in ("", "control"):
        model = AutoModelForCausalLM.from_pretrained(project / OUT / sub)
        assert model.model.layers[0].mlp.up_proj.weight.activation_quantization == (
            "int8_asym_per_token")
