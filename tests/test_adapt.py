"""Adapt stage on the tiny profile, in each mode (full, LoRA, QLoRA): the merged checkpoint loads
with transformers and computes what the adapted model computed before merging; LoRA and QLoRA
train only their adapters (low-rank updates of the targeted weights, every other weight unchanged)
and QLoRA's base is stored in 4 bits while it trains; the LoRA adapter applies to the refined
transformers model; training resumes bit-identically (after two SIGKILLs for LoRA, from an
earlier checkpoint for full and QLoRA); activation checkpointing changes no weight; bad params stop
with a clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from stages import params as stage_params
from stages.adapt import CHECKPOINTS, OUT, nf4, task
from stages.adapt.config import LINEARS
from stages.model import load_training_model
from stages.runner import run_stage
from stages.train.checkpoint import complete
from tests import stage_process
from tests.conftest import TINY, copy_tree, set_params

pytestmark = pytest.mark.slow
MODES = ("full", "lora", "qlora")
CODE = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n"


@pytest.fixture(scope="module")
def refined(pretrained_project: Path, tmp_path_factory) -> Path:
    """The tiny project through refine."""
    root = copy_tree(pretrained_project, tmp_path_factory.mktemp("adapt") / "project")
    run_stage("refine", root)
    return root


@pytest.fixture(scope="module")
def runs(refined: Path, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each mode run once, in process, in its own copy: mode -> (root, metrics)."""
    out = {}
    for mode in MODES:
        root = copy_tree(refined, tmp_path_factory.mktemp(mode) / "project")
        set_params(root, adapt={"mode": mode})
        run_stage("adapt", root)
        out[mode] = root, json.loads((root / "reports/adapt/metrics.json").read_text())
    return out


def _params(root: Path) -> task.Params:
    return stage_params.load(root)["adapt"]


def _before_merge(root: Path):
    """The adapted model as it trained (NF4 base for qlora, adapters unmerged), with the weights of
    the run's last checkpoint."""
    model = task.adapted(_params(root), load_training_model(root / "data/refine"))
    model.load_state_dict(load_file(complete(root / CHECKPOINTS)[-1] / "model.safetensors"))
    return model.eval()


def _ids(root: Path) -> torch.Tensor:
    return AutoTokenizer.from_pretrained(root / OUT)(CODE, return_tensors="pt").input_ids


def _targeted(name: str) -> bool:
    """Whether LoRA adapts the weight `name` (with the default targets)."""
    return name.endswith(("experts.gate_up_proj", "experts.down_proj")) or (
        name.endswith(".weight") and name.split(".")[-2] in LINEARS)


def _expected_adapter_params(root: Path, rank: int) -> int:
    """rank x (in + out) per targeted linear, and per expert of each targeted expert tensor."""
    moe, n = load_training_model(root / "data/refine"), 0
    for name, module in moe.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rpartition(".")[2] in LINEARS:
            n += rank * (module.in_features + module.out_features)
        if name.endswith("mlp.experts"):
            for tensor in (module.gate_up_proj, module.down_proj):
                n += rank * tensor.shape[0] * (tensor.shape[1] + tensor.shape[2])
    return n


@pytest.mark.parametrize("mode", MODES)
def test_merged_checkpoint_computes_the_adapted_model(runs, mode: str):
    root, metrics = runs[mode]
    hf = AutoModelForCausalLM.from_pretrained(root / OUT).eval()
    assert type(hf).__name__ == "Qwen2MoeForCausalLM"
    assert hf.config.training_precision["adapt"] == mode
    template = AutoTokenizer.from_pretrained(root / "data/refine").chat_template
    assert AutoTokenizer.from_pretrained(root / OUT).chat_template == template
    ids = _ids(root)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, _before_merge(root)(ids).logits,
                                   rtol=1e-4, atol=1e-4)
    assert metrics["mode"] == mode and metrics["steps"] == 6
    assert metrics["domain_bpb"] < metrics["domain_bpb_at_init"]
    for key in ("eval_bpb", "other_bpb", "train_memory_mb", "peak_memory_mb"):
        assert metrics[key] > 0, key
    evals = json.loads((root / "reports/adapt/eval_curve.json").read_text())
    assert [r["step"] for r in evals] == [0, 3, 6]
    assert (root / "reports/adapt/loss.png").stat().st_size > 0


@pytest.mark.parametrize("mode", ("lora", "qlora"))
def test_lora_modes_train_only_low_rank_adapters(runs, mode: str):
    root, metrics = runs[mode]
    rank = _params(root).lora.rank
    assert metrics["params_trainable"] == _expected_adapter_params(root, rank)
    assert metrics["params_trainable"] < 0.25 * metrics["params_total"]
    before = _before_merge(root)
    assert all(("lora_" in n) == p.requires_grad for n, p in before.named_parameters())
    trained_b = [n for n, p in before.named_parameters() if "lora_B" in n and p.abs().max() > 0]
    assert len(trained_b) == sum("lora_B" in n for n, _ in before.named_parameters())  # all of them
    nf4.dequantize_all(before)  # qlora: the base the adapters trained on, as plain weights
    base = {k.replace("base_layer.", ""): v for k, v in before.get_base_model().state_dict().items()
            if "lora_" not in k}
    merged = AutoModelForCausalLM.from_pretrained(root / OUT).state_dict()
    assert set(base) == set(merged)
    for name, weight in merged.items():
        if not _targeted(name):  # router, shared-expert gate, norms, embeddings, lm_head
            assert torch.equal(weight, base[name]), name
            continue
        delta = weight.double() - base[name].double()
        assert delta.abs().max() > 0, name  # every targeted weight was adapted
        for matrix in delta.reshape(-1, *delta.shape[-2:]):  # per expert for 3-D tensors
            assert torch.linalg.matrix_rank(matrix, rtol=1e-5) <= rank, name


def test_qlora_base_is_stored_in_4_bits_while_training(runs):
    root, metrics = runs["qlora"]
    model = _before_merge(root)
    stored = nf4.quantized(model)
    weights = load_training_model(root / "data/refine").state_dict()
    assert len(stored) == sum(map(_targeted, weights))
    with torch.no_grad():
        model(_ids(root))  # a forward applies peft's LoRA parametrization and removes it again
    for module, name, quant in stored:
        chain = module.parametrizations[name]
        assert list(chain) == [quant]  # no LoRA proxy left behind
        numel = torch.Size(quant.shape).numel()
        assert chain.original.nbytes * 8 == 4 * numel  # 4 bits a weight
        assert getattr(module, name).shape == quant.shape  # read back dequantised
    # the training checkpoint holds the codes, not full-precision copies of the targeted weights
    saved = load_file(complete(root / CHECKPOINTS)[-1] / "model.safetensors")
    codes = {k: v for k, v in saved.items() if k.endswith(".original")}
    assert len(codes) == len(stored)
    assert not [k for k in saved if k.endswith(("base_layer.weight", "experts.gate_up_proj",
                                                "experts.down_proj"))]
    full_bytes = sum(torch.Size(q.shape).numel() * 4 for _, _, q in stored)
    assert sum(v.nbytes for v in codes.values()) == full_bytes // 8


def test_lora_adapter_applies_to_the_refined_transformers_model(runs):
    root, _ = runs["lora"]
    base = AutoModelForCausalLM.from_pretrained(root / "data/refine")
    adapted = PeftModel.from_pretrained(base, root / OUT / task.ADAPTER).eval()
    merged = AutoModelForCausalLM.from_pretrained(root / OUT).eval()
    ids = _ids(root)
    with torch.no_grad():
        torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ("full", "qlora"))
def test_resume_from_an_earlier_checkpoint_is_bit_identical(runs, mode: str, tmp_path: Path):
    done, _ = runs[mode]
    root = copy_tree(done, tmp_path / "project")
    shutil.rmtree(root / OUT)
    last = complete(root / CHECKPOINTS)[-1]
    shutil.rmtree(last)  # resume from the one before (step 3 of 6)
    run_stage("adapt", root)
    metrics = json.loads((root / "reports/adapt/metrics.json").read_text())
    assert metrics["resumed_from_step"] == 3
    for name in _outputs(mode):
        assert (root / OUT / name).read_bytes() == (done / OUT / name).read_bytes(), name


def test_activation_checkpointing_trains_the_same_weights(runs, tmp_path: Path):
    """Recomputing each block's activations in the backward pass gives the same gradients, bit
    for bit, so the same adapted model (qlora: NF4 dequantised twice, the LoRA proxies re-applied
    in the recomputation)."""
    done, metrics = runs["qlora"]
    root = copy_tree(done, tmp_path / "project")
    shutil.rmtree(root / OUT)
    set_params(root, adapt={"activation_checkpointing": True})
    run_stage("adapt", root)
    assert json.loads((root / "reports/adapt/metrics.json").read_text())["resumed_from_step"] == 0
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        assert (root / OUT / name).read_bytes() == (done / OUT / name).read_bytes(), name
    evals = json.loads((root / "reports/adapt/eval_curve.json").read_text())
    assert evals[-1]["domain_bpb"] == metrics["domain_bpb"]


def _outputs(mode: str) -> tuple[str, ...]:
    adapter = ("adapter/adapter_model.safetensors", "adapter/adapter_config.json")
    return ("model.safetensors", "config.json", "training.json",
            *(adapter if mode != "full" else ()))






def test_lora_resume_after_two_sigkills_is_bit_identical(refined: Path, tmp_path: Path):
    project = copy_tree(refined, tmp_path / "project")
    steps = 40
    set_params(project, adapt={"mode": "lora", "train_tokens": steps * 4 * 128,
                               "eval": {"every_steps": 20}, "checkpoint": {"every_steps": 4}})
    reference = copy_tree(project, tmp_path / "reference")
    run_stage("adapt", reference)

    first = stage_process.kill_after_checkpoint(project, "adapt", CHECKPOINTS, 0)
    second = stage_process.kill_after_checkpoint(project, "adapt", CHECKPOINTS, first)
    assert 0 < first < second < steps
    assert not (project / OUT).exists()  # a killed run never publishes its output
    run_stage("adapt", project)
    metrics = json.loads((project / "reports/adapt/metrics.json").read_text())
    assert metrics["resumed_from_step"] >= second
    for name in _outputs("lora"):
        assert (project / OUT / name).read_bytes() == (reference / OUT / name).read_bytes(), name


@pytest.mark.parametrize(("section", "message"), [
    ({"mode": "dora"}, "adapt.mode: Input should be 'full', 'lora' or 'qlora'"),
    ({"lora": {"dropout": 0.1}}, "dropout must be 0 while target_parameters is set"),
    ({"lora": {"target_modules": ["q_proj", "lm_head"]}}, "may not include ['lm_head']"),
    ({"mode": "qlora", "qlora": {"blocksize": 100}}, "blocksize must be one of"),
    ({"mode": "lora", "precision": {"mode": "fp8_emulated"}}, "fp32 or bf16, not fp8_emulated"),
    ({"mode": "qlora", "qlora": {"compute_dtype": "bfloat16"}}, "needs precision.mode bf16"),
])
def test_bad_params_stop_with_a_clear_message(section: dict, message: str):
    raw = {"adapt": {**TINY["adapt"], **section}}
    with pytest.raises(stage_params.ParamsError) as err:
        stage_params.validate(raw)
    assert message in str(err.value)


def test_a_domain_without_documents_names_the_labels_there_are(refined: Path, tmp_path: Path):
    root = copy_tree(refined, tmp_path / "project")
    set_params(root, adapt={"corpus": {"by": "source", "name": "nowhere"}})
    with pytest.raises(ValueError, match=r"no document of .* has source 'nowhere'; there are "
                                         r"\{'builtin-code': \d+, 'builtin-prose': \d+\}"):
        run_stage("adapt", root)
    assert not (root / OUT).exists()
