"""teacher_logits + distill on the tiny profile: the top-k cache round-trips and holds the
teacher's log-probs; both students are Llama checkpoints that learned, and llama.cpp computes
the same logits as PyTorch beyond the teacher's sliding window (the student is full attention);
resume after two SIGKILLs is bit-identical, and a KD edit retrains only the KD student. (That a
student edit stales `distill` and not `teacher_logits`, in DVC and Dagster alike, is checked on
the whole pipeline in tests/test_parity.py.)

The teacher here is the tiny pretrained MoE placed at `data/adapt` (the stage only needs an HF
MoE checkpoint in pretrain's format there; running refine and adapt would only add minutes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stages import llama_cpp
from stages.distill import CHECKPOINTS, OUT
from stages.model import load_training_model
from stages.runner import run_stage
from stages.teacher_logits import select
from stages.teacher_logits.cache import open_cache
from stages.train.batches import Split, inputs_targets
from tests import stage_process
from tests.conftest import TINY, copy_tree, set_params
from tests.curation_helpers import file_bytes
from tests.gguf_checks import assert_same_logits

pytestmark = pytest.mark.slow
CACHE = "data/teacher_logits"


@pytest.fixture(scope="module")
def distilled(pretrained_project: Path, tmp_path_factory) -> tuple[Path, dict, dict]:
    """(root, teacher_logits metrics, distill metrics) of a tiny project run through distill."""
    root = copy_tree(pretrained_project, tmp_path_factory.mktemp("distill") / "project")
    shutil.copytree(root / "data/pretrain", root / "data/adapt")
    return root, run_stage("teacher_logits", root), run_stage("distill", root)


def test_topk_cache_round_trips_and_holds_the_teachers_log_probs(distilled):
    root, metrics, _ = distilled
    index, logp, idx, seq_ids = open_cache(root / CACHE)
    tok = root / "data/tokenize"
    train = Split.open(tok / "train")
    vocab = json.loads((tok / "manifest.json").read_text())["vocab_size"]
    k = TINY["teacher_logits"]["k"]
    n = -(-TINY["teacher_logits"]["tokens"] // train.seq_len)
    assert (logp.dtype, idx.dtype, seq_ids.dtype) == (np.float16, np.uint16, np.int64)
    assert logp.shape == idx.shape == (n, train.seq_len - 1, k) == (
        index["sequences"], index["positions"], index["k"])
    assert int(idx.max()) < vocab == index["vocab_size"]
    assert (np.diff(logp.astype(np.float32), axis=-1) <= 0).all() and (logp <= 0).all()
    assert (seq_ids == select(train.sequences, train.seq_len, n * train.seq_len, 0)).all()
    assert metrics["tokens_scored"] > 0 and 0 < metrics["topk_mass_mean"] < 1
    assert metrics["bytes"] == sum(f.stat().st_size for f in (root / CACHE).iterdir())
    # the stored top-k is the teacher's at each input position (float16-rounded)
    teacher = load_training_model(root / "data/adapt").eval()
    x, _ = inputs_targets(train, np.asarray(seq_ids[:2]), int(train.index["pad_id"]))
    with torch.no_grad():
        top, top_i = teacher(x).logits.log_softmax(-1).topk(k, -1)
    assert (top_i.numpy() == idx[:2]).mean() > 0.99  # ties within float rounding may swap
    np.testing.assert_allclose(logp[:2].astype(np.float32), top.numpy(), rtol=2e-3, atol=2e-3)


def test_teacher_logits_do_not_depend_on_the_worker_count(distilled, tmp_path: Path):
    """Three chunks of teacher batches on 1 and on 2 local worker processes: the same bytes."""
    root, _, _ = distilled
    outputs = {}
    for workers in (1, 2):
        project = copy_tree(root, tmp_path / f"workers-{workers}")
        set_params(project, runtime={"workers": workers}, teacher_logits={"tokens": 96 * 128})
        metrics = run_stage("teacher_logits", project)
        assert metrics["sequences"] == 96
        outputs[workers] = file_bytes(project / CACHE), metrics
    assert outputs[1] == outputs[2]


def test_students_are_llama_checkpoints_that_learned(distilled):
    root, _, metrics = distilled
    for sub in ("", "baseline"):
        out = root / OUT / sub
        hf = AutoModelForCausalLM.from_pretrained(out)
        assert type(hf).__name__ == "LlamaForCausalLM"
        assert (out / "tokenizer.model").is_file()
        training = json.loads((out / "training.json").read_text())
        assert training["params"]["kd"]["alpha"] == (0.0 if sub else metrics["kd"]["alpha"])
        assert training["evals"][-1]["eval_bpb"] < training["evals"][0]["eval_bpb"]
    assert metrics["kd"]["alpha"] > 0 and metrics["eval_bpb"] < metrics["eval_bpb_at_init"]
    assert metrics["baseline_eval_bpb"] < metrics["baseline_eval_bpb_at_init"]
    assert metrics["params_active"] == metrics["params_total"]  # dense
    frac = metrics["tokens_to_target_fraction"]
    assert frac is None or 0 < frac <= 1.0
    for rel in ("kd_vs_baseline.png", "loss.png", "eval_curve.json", "baseline/eval_curve.json"):
        assert (root / "reports/distill" / rel).stat().st_size > 0


def test_student_converts_to_gguf_and_llama_cpp_computes_the_same(distilled, tmp_path: Path):
    out = distilled[0] / OUT
    path = llama_cpp.convert(out, tmp_path / "student.gguf", "f32")
    tok = AutoTokenizer.from_pretrained(out)
    text = ("def add(a, b):\n    return a + b  # 42 caf\u00e9 \u2014 \U0001f600\n\tx  =  [1,2]\n"
            "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n") * 2
    ids = tok(text).input_ids
    assert llama_cpp.tokenize(path, text) == ids
    # full attention: the GGUF computes the same function past the teacher's sliding window
    ids = ids[:TINY["tokenize"]["seq_len"]]
    assert len(ids) > 2 * TINY["pretrain"]["model"]["sliding_window"]
    assert_same_logits(out, path, ids)






def test_resume_after_two_sigkills_is_bit_identical_and_kd_edits_keep_the_baseline(
        distilled, tmp_path: Path):
    """One kill in the baseline's run, one in the KD student's: both resume exactly."""
    project, reference = stage_process.resume_pair(
        distilled[0], tmp_path, "distill", CHECKPOINTS, OUT,
        distill={"train_tokens": 40 * 512, "eval": {"every_steps": 20},
                 "checkpoint": {"every_steps": 5}})

    first = stage_process.kill_after_checkpoint(project, "distill", f"{CHECKPOINTS}/baseline", 0)
    second = stage_process.kill_after_checkpoint(project, "distill", f"{CHECKPOINTS}/kd", 0)
    assert 0 < first < 40 and 0 < second < 40
    assert not (project / OUT).exists()  # a killed run never publishes its output
    metrics = stage_process.run_ok(project, "distill")
    assert metrics["resumed_from_step"] >= second and metrics["baseline_resumed_from_step"] == 40
    stage_process.assert_same_bytes(project / OUT, reference / OUT, (
        "model.safetensors", "training.json", "baseline/model.safetensors",
        "baseline/training.json"))

    # a KD edit: the baseline's identity leaves KD out, so its finished run is resumed, not redone
    baseline = (project / OUT / "baseline/model.safetensors").read_bytes()
    set_params(project, distill={"kd": {"temperature": 2.0}})
    metrics = run_stage("distill", project)
    assert metrics["baseline_resumed_from_step"] == 40 and metrics["resumed_from_step"] == 0
    assert metrics["kd"]["temperature"] == 2.0
    assert (project / OUT / "baseline/model.safetensors").read_bytes() == baseline
