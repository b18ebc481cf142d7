"""Refine on the tiny profile: phase-2 mix + SFT from the stable-phase checkpoint; the output
loads with transformers and carries the SFT format as its chat template; prompts are masked out
of the SFT loss; the mix takes its shares; resume after two SIGKILLs is bit-identical."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from stages.refine import CHECKPOINTS, OUT
from stages.refine.config import Params
from stages.refine.data import counts
from stages.runner import StageInputError, run_stage
from stages.train import corpus, sft
from stages.train.batches import IGNORE
from tests import stage_process
from tests.conftest import copy_tree, set_params

pytestmark = pytest.mark.slow
TEMPLATE = Params().sft.template


@pytest.fixture(scope="module")
def refined(pretrained_project: Path, tmp_path_factory) -> tuple[Path, dict]:
    root = copy_tree(pretrained_project, tmp_path_factory.mktemp("refine") / "project")
    return root, run_stage("refine", root)






def test_refined_model_loads_and_reports_before_and_after(refined):
    root, metrics = refined
    out = root / OUT
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert type(hf).__name__ == "Qwen2MoeForCausalLM"
    tok = AutoTokenizer.from_pretrained(out)
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                   tokenize=False)
    assert chat == TEMPLATE.format(prompt="What is 2 + 3?")
    assert metrics["sft_steps"] > 0 and metrics["cpt_steps"] == 4
    assert metrics["docs"]["curated"] > 0 and metrics["docs"]["synthetic"] > 0
    for key in ("eval_bpb", "reasoning_loss"):
        assert {key, f"{key}_at_init", f"phase1_{key}"} <= metrics.keys()
    # the SFT pass teaches the answer format: held-out reasoning answers get likelier
    assert metrics["reasoning_loss"] < metrics["reasoning_loss_at_init"]
    # refine started from the stable-phase weights, not pretrain's final ones
    assert metrics["eval_bpb_at_init"] != metrics["phase1_eval_bpb"]
    for rel in ("loss.png", "train_curve.json", "eval_curve.json"):
        assert (root / "reports/refine" / rel).stat().st_size > 0


def test_sft_scores_only_the_response(pretrained_project: Path):
    sp = corpus.load_tokenizer(pretrained_project / "data/tokenize/tokenizer")
    record = {"prompt": "Add 2 and 3.", "response": "2 + 3 = 5.\nAnswer: 5"}
    (ids, scored), = sft.encode([record], sp, TEMPLATE, max_len=128)
    x, y = sft.rows([(ids, scored)])
    prompt = sp.encode(TEMPLATE.format(prompt=record["prompt"]))
    response = sp.encode(record["response"])
    assert ids == prompt + response + [sft.EOS]
    targets = y[0][y[0] != IGNORE].tolist()
    assert targets == response + [sft.EOS]  # every response token and EOS, no prompt token
    assert x.shape[1] % 16 == 0 and x[0, :len(ids) - 1].tolist() == ids[:-1]


def test_mix_shares_are_largest_remainders():
    p = Params.model_validate({"mix": {"curated": 0.5, "synthetic": 0.3, "replay": 0.2}})
    every = {"curated": True, "synthetic": True, "replay": True}
    assert counts(p, 16, every) == {"curated": 8, "synthetic": 5, "replay": 3}
    assert counts(p, 16, every | {"synthetic": False}) == {"curated": 11, "synthetic": 0,
                                                           "replay": 5}
    with pytest.raises(ValueError, match="at least one"):
        Params.model_validate({"mix": {"curated": 0, "synthetic": 0, "replay": 0}})


def test_missing_stable_checkpoint_is_a_clear_error(pretrained_project: Path, tmp_path: Path):
    root = copy_tree(pretrained_project, tmp_path / "project")
    shutil.rmtree(root / "data/pretrain/stable")
    with pytest.raises(StageInputError, match="set refine.init: final"):
        run_stage("refine", root)




def test_resume_after_two_sigkills_is_bit_identical(pretrained_project: Path, tmp_path: Path):
    root = copy_tree(pretrained_project, tmp_path / "project")
    set_params(root, refine={"train_tokens": 60 * 512, "eval": {"every_steps": 40},
                             "checkpoint": {"every_steps": 10}})
    reference = copy_tree(root, tmp_path / "reference")
    stage_process.run_ok(reference, "refine")
    first = stage_process.kill_after_checkpoint(root, "refine", CHECKPOINTS, 0)
    second = stage_process.kill_after_checkpoint(root, "refine", CHECKPOINTS, first)
    assert 0 < first < second
    assert not (root / OUT).exists()
    assert stage_process.run_ok(root, "refine")["resumed_from_step"] >= second
    for name in ("model.safetensors", "training.json"):
        assert (root / OUT / name).read_bytes() == (reference / OUT / name).read_bytes(), name
