"""Pretrain stage on the tiny profile: the checkpoint loads with transformers and has learned,
converts to GGUF with llama.cpp's converter (llama.cpp tokenizes and computes the same), training
resumes bit-identically after two SIGKILLs, incomplete or foreign checkpoints are never
loaded, two gloo processes give the loss of one at the same global batch, and an FSDP config on
CPUs stops with a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stages import llama_cpp
from stages.model import load_training_model
from stages.pretrain import CHECKPOINTS, OUT
from stages.train.checkpoint import complete, read_state
from tests import stage_process
from tests.conftest import TINY, set_params, tiny_project_through
from tests.gguf_checks import assert_same_logits

pytestmark = pytest.mark.slow
UPSTREAM = ("ingest", "signals", "quality", "filter", "dedup", "synth", "mix", "tokenize")


@pytest.fixture(scope="module")
def tokens_project(tmp_path_factory) -> Path:
    """A tiny-profile project with every stage before pretrain run (no DVC needed here)."""
    return tiny_project_through(tmp_path_factory.mktemp("pretrain") / "project", UPSTREAM)


@pytest.fixture(scope="module")
def trained(tokens_project: Path, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the prepared project with pretrain run once: (root, metrics)."""
    root = tmp_path_factory.mktemp("trained") / "project"
    shutil.copytree(tokens_project, root, symlinks=True)
    return root, stage_process.run_ok(root, "pretrain")


@pytest.fixture
def project(tokens_project: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared project, so each test owns its checkpoints and outputs."""
    dest = tmp_path / "project"
    shutil.copytree(tokens_project, dest, symlinks=True)
    return dest








def test_checkpoint_loads_with_transformers_and_has_learned(trained: tuple[Path, dict]):
    project, metrics = trained
    out = project / OUT
    hf = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == "Qwen2MoeForCausalLM"
    assert hf.config.training_precision["mode"] == "fp32"
    ids = tok("def add(a, b):\n    return a + b\n", return_tensors="pt").input_ids
    ours = load_training_model(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, rtol=1e-4, atol=1e-4)

    assert metrics["steps"] == 12 and metrics["resumed_from_step"] == 0
    assert metrics["eval_bpb"] < metrics["eval_bpb_at_init"]
    assert metrics["train_loss"] < json.loads((out / "training.json").read_text())["curve"][0][
        "train_loss"]
    for rel in ("reports/pretrain/loss.png", "reports/pretrain/train_curve.json",
                "reports/pretrain/eval_curve.json"):
        assert (project / rel).stat().st_size > 0
    evals = json.loads((project / "reports/pretrain/eval_curve.json").read_text())
    assert [r["step"] for r in evals] == [0, 4, 8, 12]
    assert len(complete(project / CHECKPOINTS)) == TINY["pretrain"]["checkpoint"]["keep_last"]
    # the end of the WSD stable phase (step 10 of 12), where continued training starts
    stable = AutoModelForCausalLM.from_pretrained(out / "stable")
    assert not torch.equal(stable.lm_head.weight, hf.lm_head.weight)


def test_checkpoint_converts_to_gguf_and_llama_cpp_computes_the_same(trained, tmp_path: Path):
    out = trained[0] / OUT
    path = llama_cpp.convert(out, tmp_path / "model.gguf", "f32")
    tok = AutoTokenizer.from_pretrained(out)
    text = "def add(a, b):\n    return a + b  # 42 caf\u00e9 \u2014 \U0001f600\n\tx  =  [1,2]\n"
    ids = tok(text).input_ids
    assert llama_cpp.tokenize(path, text) == ids
    # llama.cpp's qwen2moe graph has no sliding window: the same function up to the window
    ids = ids[:TINY["pretrain"]["model"]["sliding_window"]]
    assert_same_logits(out, path, ids)


def test_resume_after_two_sigkills_is_bit_identical(project: Path, tmp_path: Path):
    long_run = {"train_tokens": 80 * 512, "eval": {"every_steps": 40},
                "checkpoint": {"every_steps": 10}, "compile": "kernels"}  # compiled kernels too
    set_params(project, pretrain=long_run)
    reference = tmp_path / "reference"
    shutil.copytree(project, reference, symlinks=True)
    stage_process.run_ok(reference, "pretrain")

    first = stage_process.kill_after_checkpoint(project, "pretrain", CHECKPOINTS, 0)
    second = stage_process.kill_after_checkpoint(project, "pretrain", CHECKPOINTS, first)
    assert 0 < first < second < 80
    assert not (project / OUT).exists()  # a killed run never publishes its output
    metrics = stage_process.run_ok(project, "pretrain")
    assert metrics["resumed_from_step"] >= second
    for name in ("model.safetensors", "training.json", "stable/model.safetensors"):
        assert (project / OUT / name).read_bytes() == (reference / OUT / name).read_bytes(), name


def test_incomplete_and_foreign_checkpoints_are_never_loaded(project: Path):
    stage_process.run_ok(project, "pretrain")
    ckpts = project / CHECKPOINTS
    half = ckpts / ".step-00000099.tmp-12345"  # what a kill during a checkpoint write leaves
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 100)
    set_params(project, pretrain={"optimizer": {"lr": 0.002}})  # another identity
    metrics = stage_process.run_ok(project, "pretrain")
    assert metrics["resumed_from_step"] == 0  # the old run's checkpoints were not resumed
    assert not half.exists()
    assert {read_state(c)["step"] for c in complete(ckpts)} == {9, 12}
    with open(project / "stages/train/schedule.py", "a") as fh:  # a code change: another
        fh.write("# changed\n")  # identity too (the finished run is not re-exported)
    assert stage_process.run_ok(project, "pretrain")["resumed_from_step"] == 0


def test_two_gloo_processes_match_one_at_the_same_global_batch(project: Path, tmp_path: Path):
    two = tmp_path / "two"
    shutil.copytree(project, two, symlinks=True)
    set_params(two, runtime={"train_processes": 2})
    one_metrics = stage_process.run_ok(project, "pretrain")
    two_metrics = stage_process.run_ok(two, "pretrain")
    assert two_metrics["processes"] == 2 and one_metrics["processes"] == 1
    one = json.loads((project / OUT / "training.json").read_text())
    other = json.loads((two / OUT / "training.json").read_text())
    for a, b in zip(one["curve"], other["curve"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert other["evals"][-1]["eval_loss"] == pytest.approx(one["evals"][-1]["eval_loss"],
                                                            rel=1e-4)
    w1 = load_training_model(project / OUT).state_dict()
    w2 = load_training_model(two / OUT).state_dict()
    for name, tensor in w1.items():
        torch.testing.assert_close(w2[name], tensor, rtol=1e-3, atol=1e-4)


def test_fsdp_config_on_cpus_stops_instead_of_training_unsharded(project: Path):
    """accelerate runs FSDP only on GPUs; on CPUs it would quietly fall back to DDP."""
    set_params(project, runtime={"train_processes": 2,
                                 "accelerate_config": "configs/accelerate/fsdp2.yaml"})
    code, out = stage_process.run(project, "pretrain")
    assert code != 0
    assert "asks for FSDP, but accelerate runs FSDP only on GPUs and this run is MULTI_CPU" in out
    assert not (project / OUT).exists()


def test_diverged_training_stops_with_a_clear_error(project: Path):
    set_params(project, pretrain={"optimizer": {"lr": 1.0e6, "grad_clip": 1.0e9},
                                  "schedule": {"warmup_steps": 0}})
    code, out = stage_process.run(project, "pretrain")
    assert code != 0
    assert "training diverged; lower pretrain.optimizer.lr" in out
    assert not (project / OUT).exists()
