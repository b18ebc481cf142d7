"""The training loop of every training stage, in-process or in each `accelerate launch` process.

`python -m stages.train.loop <spec.json>` is what `accelerate launch` starts; the spec (written by
`stages.train.launch`) names the task module (the stage's model, data, loss and export: see
`task.py`), its params, the temporary output, the checkpoint directory and where to report
timings. One code path for 1 CPU process, N gloo CPU processes and N GPUs (DDP): every process
computes the same global batch from (seed, step), takes its slice, and the token loss is
normalised by the global batch's target-token count, so the gradient is the same for any process
count at the same global batch.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedType
from tqdm.contrib.logging import logging_redirect_tqdm

from stages.model.moe import fused_kernels
from stages.train import checkpoint
from stages.train.batches import IGNORE
from stages.train.schedule import lr_multiplier
from stages.train.task import EvalSet, Task

log = logging.getLogger("stages.train")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (incl. embeddings and expert tensors), none on norm vectors; only
    parameters that train (adapters, for a LoRA model)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token of a `stages.model` model: 6 x active non-embedding params plus
    attention scores, 12 x d x attended length per layer (PaLM's accounting; the window bounds
    sliding layers)."""
    cfg = model.config
    attn = sum(12 * cfg.d_model * (min(seq_len, cfg.sliding_window) if kind == "sliding_attention"
                                   else seq_len) for kind in cfg.layer_types)
    return 6.0 * model.num_params(active=True, embeddings=False) + attn


def matmul_rate(device: torch.device) -> float:
    """Measured dense matmul FLOP/s in the training dtype (fp32 on CPU, bf16 on CUDA)."""
    n, dtype = (1024, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    reps, best = 5, math.inf
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model, windows: EvalSet, micro: int, acc: Accelerator, autocast) -> dict:
    """Summed next-token NLL over evaluation windows (sharded over processes); mean loss,
    perplexity and, for a text set, bits per UTF-8 byte."""
    x_all, y_all, n_bytes = windows.inputs, windows.targets, windows.n_bytes
    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=acc.device)
    count = torch.zeros((), dtype=torch.float64, device=acc.device)
    rows = list(range(acc.process_index, len(x_all), acc.num_processes))
    # Every process runs the same number of forward passes (an FSDP-sharded model gathers its
    # weights collectively in each one); a process out of rows runs one row without targets.
    passes = math.ceil(math.ceil(len(x_all) / acc.num_processes) / micro)
    for start in range(0, passes * micro, micro):
        sel = rows[start:start + micro]
        x, y = x_all[sel or [0]].to(acc.device), y_all[sel or [0]].to(acc.device)
        if not sel:
            y = torch.full_like(y, IGNORE)
        with autocast():
            ce = model(x, y).ce  # the fused loss: no (tokens, vocab) logits
        n = (y != IGNORE).sum()
        if n:
            nll += ce.double() * n
            count += n
    nll, count = acc.reduce(nll, "sum"), acc.reduce(count, "sum")
    model.train(was_training)
    loss = (nll / count).item()
    out = {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
    if n_bytes:
        out["bpb"] = (nll / math.log(2) / n_bytes).item()
    return out


def evaluate_model(model, evals: dict[str, EvalSet], micro: int, device: str = "cpu",
                   autocast=contextlib.nullcontext) -> dict:
    """`evaluate` in one process, outside a training run: `<set>_loss`, `_ppl`, `_bpb` per set
    (the same numbers a training run logs, for models the loop did not train)."""
    from types import SimpleNamespace

    one = SimpleNamespace(process_index=0, num_processes=1, device=torch.device(device),
                          reduce=lambda t, op: t)
    return {f"{key}_{k}": v for key, windows in evals.items()
            for k, v in evaluate(model, windows, micro, one, autocast).items()}


def progress_bar(spec: dict, acc: Accelerator, total: int, start: int, desc: str = "train"):
    """A tqdm bar over steps on the main process when progress is on and stderr is a terminal
    (None otherwise: then step log lines carry the progress into logs such as Dagster's)."""
    if not (spec.get("progress") and acc.is_main_process and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=desc, unit="step", file=sys.stderr,
                dynamic_ncols=True)


def run_training(spec: dict) -> None:
    module = importlib.import_module(spec["task"])
    p = module.Params.model_validate(spec["params"])
    with fused_kernels(p.compile == "kernels"):
        _train(spec, module, p)


def _train(spec: dict, module, p) -> None:
    acc = Accelerator(cpu=not torch.cuda.is_available())
    if (os.environ.get("ACCELERATE_USE_FSDP") == "true"
            and acc.distributed_type != DistributedType.FSDP):
        raise RuntimeError(  # accelerate would silently train unsharded (DDP) instead
            f"runtime.accelerate_config asks for FSDP, but accelerate runs FSDP only on GPUs and "
            f"this run is {acc.distributed_type.value}: on CPUs drop runtime.accelerate_config "
            "(runtime.train_processes alone gives DDP over gloo)")
    world, rank = acc.num_processes, acc.process_index
    if acc.device.type == "cpu":
        torch.set_num_threads(max(1, spec["threads"] // world))
    stage = spec["stage"]
    g, m = p.batch.global_seqs, p.batch.micro_seqs
    if g % (m * world):
        raise ValueError(f"{stage}.batch.global_seqs ({g}) must be a multiple of micro_seqs ({m})"
                         f" x processes ({world})")
    accum, per_rank = g // (m * world), g // world
    rss_start = _rss_mb()

    torch.manual_seed(spec["seed"])
    task: Task = module.build(p, spec, acc)
    model, autocast, total_steps, step_tokens = (task.model, task.autocast, task.total_steps,
                                                 task.step_tokens)
    model.to(acc.device)
    optimizer = torch.optim.AdamW(param_groups(model, p.optimizer.weight_decay), lr=p.optimizer.lr,
                                  betas=p.optimizer.betas, eps=p.optimizer.eps, fused=True)
    s = p.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(
        s.kind, total_steps, s.warmup_steps, s.min_lr_ratio, s.decay_fraction))
    run_model = torch.compile(model) if p.compile == "model" else model
    run_model, optimizer = acc.prepare(run_model, optimizer)
    acc.register_for_checkpointing(scheduler)

    ckpt_root = Path(spec["ckpt_dir"])
    if acc.is_main_process:
        checkpoint.prepare(ckpt_root, spec["identity"], log)
    acc.wait_for_everyone()
    done = checkpoint.complete(ckpt_root)
    start, curve, evals = 0, [], []
    if done:
        acc.load_state(str(done[-1]))
        state = checkpoint.read_state(done[-1])
        start, curve, evals = state["step"], state["curve"], state["evals"]
        log.info("resuming from %s (step %d of %d)", done[-1].name, start, total_steps)
    if acc.is_main_process:
        log.info("%s: %.2fM params, %.2fM active, %.2fM trained; %d steps x %d sequences; "
                 "%d process(es), %d micro-step(s) of %d", stage, task.counts["total"] / 1e6,
                 task.counts["active"] / 1e6, task.counts["trainable"] / 1e6, total_steps, g,
                 world, accum, m)

    def measured_peak() -> float:  # the processes' summed matmul rates
        return acc.reduce(torch.tensor(matmul_rate(acc.device), device=acc.device), "sum").item()

    peak = measured_peak()
    fpt = task.flops_per_token

    def save(step: int) -> None:
        tmp = checkpoint.tmp_dir(ckpt_root, step, spec["launch"])
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            checkpoint.commit(tmp, ckpt_root / checkpoint.name(step),
                              {"identity": spec["identity"], "step": step, "curve": curve,
                               "evals": evals}, p.checkpoint.keep_last)
        acc.wait_for_everyone()

    def snapshot(step: int, name: str) -> None:
        """Export the weights as they are now, kept with the checkpoints until the end."""
        state = acc.get_state_dict(run_model)
        if acc.is_main_process:
            checkpoint.save_snapshot(ckpt_root, name, step, spec["identity"], spec["launch"],
                                     lambda d: task.export(model, state, d))
        acc.wait_for_everyone()

    def run_eval(step: int) -> None:
        row: dict = {"step": step, "tokens": step * step_tokens}
        for key, win in task.evals.items():
            r = evaluate(model, win, p.eval.micro_seqs, acc, autocast)
            row |= {f"{key}_{k}": v for k, v in r.items()}
        evals.append(row)
        if acc.is_main_process:
            log.info("eval step %d: %s", step, "  ".join(
                f"{k} {v:.4f}" for k, v in row.items() if k not in ("step", "tokens")))

    if start == 0 and not evals:
        run_eval(0)
    for step, name in task.snapshots.items():
        if step == 0 and not checkpoint.snapshot(ckpt_root, name):
            snapshot(0, name)

    def train_step(step: int) -> None:
        """One optimizer step on the global batch of `step`; log, eval, checkpoint on cadence."""
        nonlocal step_seconds
        batch = task.batch(step)
        n_targets = int((batch["targets"] != IGNORE).sum())
        mine = {k: v[rank * per_rank:(rank + 1) * per_rank] for k, v in batch.items()}
        _sync(acc.device)
        t0 = time.perf_counter()
        ce_sum = torch.zeros((), device=acc.device, dtype=torch.float64)
        for i in range(accum):
            micro = {k: v[i * m:(i + 1) * m].to(acc.device) for k, v in mine.items()}
            n_micro = int((micro["targets"] != IGNORE).sum())
            sync = acc.no_sync(run_model) if i < accum - 1 else contextlib.nullcontext()
            with sync, autocast():
                out = task.forward(run_model, micro)
                loss = (out.token_loss * (n_micro * world / n_targets)
                        + (out.loss - out.token_loss) / accum)
            acc.backward(loss)
            ce_sum += out.ce.detach().double() * n_micro
        grad_norm = acc.clip_grad_norm_(run_model.parameters(), p.optimizer.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(acc.device)
        step_seconds += time.perf_counter() - t0
        done_steps = step + 1
        if done_steps % p.log_every == 0 or done_steps == total_steps:
            train_loss = (acc.reduce(ce_sum, "sum") / n_targets).item()
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"training loss is {train_loss} at step {done_steps}: training diverged; lower "
                    f"{stage}.optimizer.lr or raise {stage}.schedule.warmup_steps")
            curve.append({"step": done_steps, "tokens": done_steps * step_tokens,
                          "train_loss": train_loss, "lr": lr, "grad_norm": float(grad_norm)})
            trained = (done_steps - start) * step_tokens
            tps = trained / max(step_seconds, 1e-9)
            if bar:
                bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tps:.0f}",
                                mfu=f"{100 * tps * fpt / peak:.1f}%", refresh=False)
            elif acc.is_main_process:
                log.info("step %d/%d (%.0f%%) loss %.4f lr %.2e grad_norm %.3f %.0f tok/s "
                         "MFU %.1f%%", done_steps, total_steps, 100 * done_steps / total_steps,
                         train_loss, lr, float(grad_norm), tps, 100 * tps * fpt / peak)
        if bar:
            bar.update(1)
        if done_steps % p.eval.every_steps == 0 or done_steps == total_steps:
            run_eval(done_steps)
        if done_steps in task.snapshots:
            snapshot(done_steps, task.snapshots[done_steps])
        if done_steps % p.checkpoint.every_steps == 0 or done_steps == total_steps:
            save(done_steps)

    step_seconds, wall_start = 0.0, time.perf_counter()
    run_model.train()
    bar = progress_bar(spec, acc, total_steps, start, stage)
    with logging_redirect_tqdm() if bar else contextlib.nullcontext():
        for step in range(start, total_steps):
            train_step(step)
    if bar:
        bar.close()
    wall = time.perf_counter() - wall_start
    # Measured again: a moment of contention at start (a shared machine) would understate the rate
    # and overstate MFU; the higher of the two is what the hardware does.
    peak = max(peak, measured_peak())
    state = acc.get_state_dict(run_model)  # every process: FSDP gathers the shards
    if not acc.is_main_process:
        return
    out = Path(spec["out_dir"])
    task.export(model, state, out)
    for name in task.snapshots.values():
        checkpoint.copy_snapshot(ckpt_root, name, out / name)
    training = {"total_steps": total_steps, "tokens": total_steps * step_tokens, "curve": curve,
                "evals": evals, "seed": spec["seed"], "params": p.model_dump(mode="json"),
                "processes": world}
    (out / "training.json").write_text(json.dumps(training, indent=2, sort_keys=True) + "\n")
    trained = (total_steps - start) * step_tokens
    report = {
        "resumed_from_step": start, "processes": world,
        "step_seconds": step_seconds, "wall_seconds": wall,
        "tokens_per_s_step": trained / step_seconds if step_seconds else None,
        "tokens_per_s_loop": trained / wall if step_seconds else None,
        "flops_per_token": fpt, "peak_flops": peak, "device": acc.device.type,
        "params_total": task.counts["total"], "params_active": task.counts["active"],
        "params_trainable": task.counts["trainable"],
        "peak_memory_mb": _peak_memory_mb(acc.device),
        "train_memory_mb": _peak_memory_mb(acc.device) - (0 if acc.device.type == "cuda"
                                                          else rss_start),
    }
    Path(spec["report"]).write_text(json.dumps(report, sort_keys=True))


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    """Resident set now (Linux), so the CPU report can say what training added to the peak."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=spec["log_level"], stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)s %(name)s[{rank}]: %(message)s")
    run_training(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
