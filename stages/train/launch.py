"""Starting a training run for a stage: its identity, the launch, and the metrics it reports.

1. Identity: a hash of the declared params (all but `checkpoint`), the seed, the bytes of the
   run's inputs and of the stage's code files. Checkpoints of another identity are deleted; the
   latest complete one of this identity is resumed (model, optimizer, scheduler, RNG states,
   step; the data position is the step, since batches are a function of (seed, step)). A code
   change starts over: DVC re-runs the stage for it, and the result must be the new code's.
2. The loop (`loop.py`) runs in this process for `runtime.train_processes: 1`, else under
   `accelerate launch` with that many processes (gloo on CPU, NCCL DDP on GPUs, or the FSDP /
   multi-node setup of `runtime.accelerate_config`), the same code.
3. `metrics` turns the run's `training.json` and timing report into the stage's metrics; `curves`
   writes the DVC plots (train/eval curves as JSON, x = tokens) and the loss PNG.
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
from stages.train.report import plot_curves


def identity(params, seed: int, inputs: list[Path], root: Path, code: tuple[str, ...]) -> str:
    """What a checkpoint must match to be resumed: params that shape training, seed, input
    bytes, and the stage's code."""
    h = xxhash.xxh3_128()
    shaping = params.model_dump(mode="json", exclude={"checkpoint"})
    h.update(atomic.canonical_json({"params": shaping, "seed": seed}).encode())
    files = [f for path in inputs
             for f in (sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir()
                       else [path])]
    for path in [*files, *(root / f for f in code)]:
        h.update(path.resolve().relative_to(root.resolve()).as_posix().encode()
                 if path.resolve().is_relative_to(root.resolve()) else path.name.encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def launch(spec_path: Path, processes: int, threads: int, config: str | None, log) -> None:
    """`accelerate launch` the training processes: DDP by default (`--multi_gpu` is also
    accelerate's multi-CPU path: without CUDA it starts gloo processes), or whatever an
    `accelerate config` file says (FSDP, several machines: this is machine rank 0; the command is
    logged for the others, which need the project at the same path on a shared filesystem)."""
    how = (["--config_file", config] if config else
           ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no"])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *how,
           "--num_processes", str(processes), "--num_cpu_threads_per_process",
           str(max(1, threads // processes)), "-m", "stages.train.loop", str(spec_path)]
    log.info("training launch (other machines: the same with --machine_rank <k>): %s",
             " ".join(cmd))
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        raise RuntimeError(f"accelerate launch exited with {proc.returncode}; see the log above")


def train(ctx, params, task: str, inputs: list[Path], out: Path, ckpt: Path,
          extra: dict | None = None) -> tuple[dict, dict]:
    """Train `task` (a module: `Params`, `build`) to completion into `out`; resume from `ckpt`.
    `extra` goes into the spec for the task. Returns (training.json, timing report)."""
    from stages.train.loop import run_training

    out.mkdir(parents=True, exist_ok=True)
    processes = ctx.runtime.train_processes
    seed = ctx.base.seed if params.seed is None else params.seed
    with tempfile.TemporaryDirectory(prefix=f"{ctx.stage.name}-") as scratch:
        spec = {
            "stage": ctx.stage.name, "task": task,
            "params": params.model_dump(mode="json"), "seed": seed,
            "out_dir": str(out), "ckpt_dir": str(ckpt),
            "identity": identity(params, seed, inputs, ctx.root,
                                 ctx.stage.code_files(ctx.root)),
            "launch": str(os.getpid()), "report": str(Path(scratch) / "report.json"),
            "threads": ctx.workers, "log_level": ctx.runtime.log_level,
            "progress": ctx.runtime.progress, **(extra or {}),
        }
        if processes == 1 and not ctx.runtime.accelerate_config:
            run_training(spec)
        else:
            spec_path = ckpt / "launch-spec.json"  # beside the checkpoints: every machine's
            ckpt.mkdir(parents=True, exist_ok=True)  # processes read it
            spec_path.write_text(json.dumps(spec))
            launch(spec_path, processes, ctx.workers, ctx.runtime.accelerate_config, ctx.log)
        report = json.loads(Path(spec["report"]).read_text())
    return json.loads((out / "training.json").read_text()), report


def curves(ctx, training: dict, prefix: str, labels: dict | None = None,
           marks: dict[int, str] | None = None) -> None:
    """`<prefix>/train_curve.json`, `<prefix>/eval_curve.json` and `<prefix>/loss.png`."""
    curve, evals = training["curve"], training["evals"]
    plot_curves(curve, evals, ctx.out(f"{prefix}/loss.png"), labels, marks)
    for name, rows in (("train_curve.json", curve), ("eval_curve.json", evals)):
        ctx.out(f"{prefix}/{name}").write_text(json.dumps(rows, indent=1) + "\n")


def metrics(training: dict, report: dict, precision: str) -> dict:
    """The stage metrics of one run: the last evaluation (every set's loss, perplexity, bits per
    byte), the first one's loss and bits per byte (`*_at_init`: before this stage trained), and
    throughput, MFU, parameters and memory."""
    curve, evals = training["curve"], training["evals"]
    first, last = evals[0], evals[-1]
    tps, wall = report["tokens_per_s_step"], report["wall_seconds"]
    out = {"steps": training["total_steps"], "tokens": training["tokens"],
           "train_loss": curve[-1]["train_loss"] if curve else None}
    out |= {k: v for k, v in last.items() if k not in ("step", "tokens")}
    out |= {f"{k}_at_init": v for k, v in first.items() if k.endswith(("_loss", "_bpb"))}
    return out | {
        "params_total": report["params_total"], "params_active": report["params_active"],
        "params_trainable": report["params_trainable"],
        "precision": precision, "device": report["device"], "processes": report["processes"],
        "resumed_from_step": report["resumed_from_step"],
        "tokens_per_s_step": tps, "tokens_per_s_loop": report["tokens_per_s_loop"],
        "loop_overhead": 1 - report["step_seconds"] / wall if wall else 0,
        "mfu": tps * report["flops_per_token"] / report["peak_flops"] if tps else None,
        "peak_memory_mb": report["peak_memory_mb"], "train_memory_mb": report["train_memory_mb"],
    }
