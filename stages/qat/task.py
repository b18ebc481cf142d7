"""qat's part of the shared loop: the distilled student, continued on the curated training rows.

With `fake_quant` in the spec (the QAT run) the student's Linears are fake-quantized
(`stages.qat.fakequant.prepare`) before training; without it (the control run) the same
training runs in full precision. The loss is plain next-token CE; evaluation is the held-out
text every quantized artifact is scored on (`stages.quant.heldout`: general `eval` and
`domain`). The export is the trained full-precision weights in `float/` and their torchao
quantization beside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from stages.model import save_hf
from stages.model.hf import load_training_model
from stages.model.precision import apply_precision, precision_metadata
from stages.qat.config import Params
from stages.qat.fakequant import prepare, save_quantized
from stages.quant.heldout import heldout_sets
from stages.train.batches import Split, global_batch, inputs_targets
from stages.train.loop import flops_per_token
from stages.train.task import Task

__all__ = ["Params", "build"]

FLOAT = "float"  # the trained full-precision weights, inside the run's output


def build(p: Params, spec: dict, acc) -> Task:
    tok, student = Path(spec["tokens_dir"]), Path(spec["student_dir"])
    train = Split.open(tok / "train")
    pad, seq_len = int(train.index["pad_id"]), train.seq_len
    evals = heldout_sets(tok, Path(spec["adapt_dir"]), p.eval.max_bytes)
    model = load_training_model(student)
    if spec["fake_quant"]:
        prepare(model, p.quant)
    pc = p.precision_config()
    autocast = apply_precision(model, pc, acc.device.type)
    g = p.batch.global_seqs

    def batch(step: int) -> dict:
        x, y = inputs_targets(train, global_batch(train, step, g, spec["seed"], "uniform"), pad)
        return {"input_ids": x, "targets": y}

    def export(trained, state: dict, out: Path) -> None:
        save_hf(trained, out / FLOAT, precision_metadata(pc), state)
        for f in sorted((tok / "tokenizer").iterdir()):
            shutil.copy2(f, out / FLOAT / f.name)
        if spec["fake_quant"]:  # the control is quantized by the stage (its run ignores quant)
            save_quantized(out / FLOAT, out, p.quant)

    return Task(
        model=model, batch=batch, total_steps=p.steps(seq_len), step_tokens=g * seq_len,
        evals=evals, export=export, flops_per_token=flops_per_token(model, seq_len),
        counts={"total": model.num_params(), "active": model.num_params(active=True),
                "trainable": model.num_params()},
        autocast=autocast, precision=precision_metadata(pc))
