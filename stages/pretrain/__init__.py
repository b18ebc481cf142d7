"""Pretrain: phase-1 training of the MoE model on the packed tokens, resumable exactly.

1. Identity: a hash of the declared params, the seed, the bytes of the token splits and of the
   stage's code files. Checkpoints in `checkpoints/pretrain` (a persistent output) of another
   identity are deleted; the latest complete one of this identity is resumed (model, optimizer,
   scheduler, RNG states, step; the data position is the step, since batches are a function of
   (seed, step)). A code change starts over: DVC re-runs the stage for it, and the result must be
   the new code's, not an old finished checkpoint re-exported.
2. Training (`train.py`): in this process for `runtime.train_processes: 1`, else under
   `accelerate launch` with that many processes (gloo on CPU, NCCL DDP on GPUs, or the FSDP /
   multi-node setup of `runtime.accelerate_config`), the same code.
3. The output `data/pretrain` is a transformers checkpoint (`AutoModelForCausalLM` and
   `AutoTokenizer` load it) plus `training.json` (curve and evaluations; deterministic). Metrics
   (losses, perplexity, bits per byte on the held-out text, tokens/s, MFU, overhead) go to
   `reports/pretrain/metrics.json`; curves to `reports/pretrain/{train,eval}_curve.json` (DVC
   plots, x = tokens) and `reports/pretrain/loss.png`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import xxhash

from stages import atomic
from stages.pretrain.config import Params
from stages.pretrain.report import plot_curves
from stages.runner import StageContext

__all__ = ["Params", "run"]

TOKENS = "data/tokenize"
OUT = "data/pretrain"
CHECKPOINTS = "checkpoints/pretrain"
PLOT = "reports/pretrain/loss.png"
TRAIN_CURVE = "reports/pretrain/train_curve.json"
EVAL_CURVE = "reports/pretrain/eval_curve.json"


def identity(params: Params, seed: int, tokens: Path, root: Path, code: tuple[str, ...]) -> str:
    """What a checkpoint must match to be resumed: params that shape training, seed, token bytes,
    and the stage's code (DVC re-runs the stage when its code changes: the result must then be
    the new code's, not a finished checkpoint of the old one)."""
    h = xxhash.xxh3_128()
    shaping = params.model_dump(mode="json", exclude={"checkpoint"})
    h.update(atomic.canonical_json({"params": shaping, "seed": seed}).encode())
    files = [*sorted(p for p in tokens.rglob("*") if p.is_file()), *(root / f for f in code)]
    for path in files:
        h.update(path.relative_to(root).as_posix().encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def launch(spec_path: Path, processes: int, threads: int, config: str | None) -> None:
    """`accelerate launch` the training processes: DDP by default (`--multi_gpu` is also
    accelerate's multi-CPU path: without CUDA it starts gloo processes), or whatever an
    `accelerate config` file says (FSDP, several machines)."""
    how = (["--config_file", config] if config else
           ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no"])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *how,
           "--num_processes", str(processes), "--num_cpu_threads_per_process",
           str(max(1, threads // processes)), "-m", "stages.pretrain.train", str(spec_path)]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        raise RuntimeError(f"accelerate launch exited with {proc.returncode}; see the log above")


def run(params: Params, ctx: StageContext) -> dict:
    from stages.pretrain.train import run_training

    tokens = ctx.dep(TOKENS)
    out = ctx.out(OUT)
    out.mkdir(parents=True, exist_ok=True)
    processes = ctx.runtime.train_processes
    with tempfile.TemporaryDirectory(prefix="pretrain-") as scratch:
        spec = {
            "params": params.model_dump(mode="json"), "seed": ctx.base.seed,
            "tokens_dir": str(tokens), "out_dir": str(out),
            "ckpt_dir": str(ctx.persist(CHECKPOINTS)),
            "identity": identity(params, ctx.base.seed, tokens, ctx.root,
                                 ctx.stage.code_files(ctx.root)),
            "launch": str(os.getpid()), "report": str(Path(scratch) / "report.json"),
            "threads": ctx.workers, "log_level": ctx.runtime.log_level,
            "progress": ctx.runtime.progress,
        }
        if processes == 1 and not ctx.runtime.accelerate_config:
            run_training(spec)
        else:
            spec_path = Path(scratch) / "spec.json"
            spec_path.write_text(json.dumps(spec))
            launch(spec_path, processes, ctx.workers, ctx.runtime.accelerate_config)
        report = json.loads(Path(spec["report"]).read_text())
    training = json.loads((out / "training.json").read_text())
    curve, evals = training["curve"], training["evals"]
    plot_curves(curve, evals, ctx.out(PLOT))
    for path, rows in ((TRAIN_CURVE, curve), (EVAL_CURVE, evals)):
        ctx.out(path).write_text(json.dumps(rows, indent=1) + "\n")
    last, first = evals[-1], evals[0]
    overhead = 1 - report["step_seconds"] / report["wall_seconds"] if report["wall_seconds"] else 0
    tps = report["tokens_per_s_step"]
    return {
        "steps": training["total_steps"], "tokens": training["tokens"],
        "train_loss": curve[-1]["train_loss"] if curve else None,
        "val_loss": last.get("val_loss"), "val_ppl": last.get("val_ppl"),
        "eval_loss": last["eval_loss"], "eval_ppl": last["eval_ppl"], "eval_bpb": last["eval_bpb"],
        "eval_bpb_at_init": first["eval_bpb"],
        "params_total": report["params_total"], "params_active": report["params_active"],
        "precision": params.precision.mode, "device": report["device"],
        "processes": report["processes"],
        "resumed_from_step": report["resumed_from_step"],
        "tokens_per_s_step": tps, "tokens_per_s_loop": report["tokens_per_s_loop"],
        "loop_overhead": overhead,
        "mfu": tps * report["flops_per_token"] / report["peak_flops"] if tps else None,
        "peak_memory_mb": report["peak_memory_mb"],
    }
