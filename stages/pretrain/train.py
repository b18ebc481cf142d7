"""The training loop, run in-process or by each process of `accelerate launch`.

`python -m stages.pretrain.train <spec.json>` is what `accelerate launch` starts; the spec (written
by `stages.pretrain.run`) names the params, the token splits, the temporary output, the checkpoint
directory and where to report timings. One code path for 1 CPU process, N gloo CPU processes and
N GPUs (DDP): every process computes the same global batch from (seed, step), takes its slice,
and the loss is normalised by the global batch's target-token count, so the gradient is the same
for any process count at the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedType
from tqdm.contrib.logging import logging_redirect_tqdm

from stages.model import MoEConfig, MoEForCausalLM, save_hf
from stages.model.precision import PrecisionConfig, apply_precision, precision_metadata
from stages.pretrain import checkpoint
from stages.pretrain.config import Params
from stages.pretrain.data import IGNORE, Split, eval_windows, global_batch, inputs_targets
from stages.pretrain.schedule import lr_multiplier

log = logging.getLogger("stages.pretrain")


def model_config(p: Params, vocab_size: int, seq_len: int) -> MoEConfig:
    return MoEConfig(vocab_size=vocab_size, max_seq_len=seq_len, **p.model.model_dump())


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (incl. embeddings and expert tensors), none on norm vectors."""
    decay = [p for _, p in model.named_parameters() if p.ndim >= 2]
    other = [p for _, p in model.named_parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": other, "weight_decay": 0.0}]


def flops_per_token(model: MoEForCausalLM, seq_len: int) -> float:
    """Training FLOPs per token: 6 x active non-embedding params plus attention scores, 12 x d x
    attended length per layer (PaLM's accounting; the window bounds sliding layers)."""
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
def evaluate(model, windows, micro: int, acc: Accelerator, autocast) -> dict:
    """Summed next-token NLL over evaluation windows (sharded over processes); mean loss,
    perplexity and bits per UTF-8 byte of the windows' text."""
    x_all, y_all, n_bytes = windows
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
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)),
            "bpb": (nll / math.log(2) / n_bytes).item()}


def progress_bar(spec: dict, acc: Accelerator, total: int, start: int):
    """A tqdm bar over steps on the main process when progress is on and stderr is a terminal
    (None otherwise: then step log lines carry the progress into logs such as Dagster's)."""
    if not (spec.get("progress") and acc.is_main_process and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="pretrain", unit="step", file=sys.stderr,
                dynamic_ncols=True)


def run_training(spec: dict) -> None:
    p = Params.model_validate(spec["params"])
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
    g, m = p.batch.global_seqs, p.batch.micro_seqs
    if g % (m * world):
        raise ValueError(f"pretrain.batch.global_seqs ({g}) must be a multiple of micro_seqs ({m})"
                         f" x processes ({world})")
    accum, per_rank = g // (m * world), g // world

    tok = Path(spec["tokens_dir"])
    manifest = json.loads((tok / "manifest.json").read_text())
    train = Split.open(tok / "train")
    val = Split.open(tok / "validation")
    heldout = Split.open(tok / "eval")
    pad = int(train.index["pad_id"])
    seq_len = train.seq_len
    windows = {key: eval_windows(s, pad, p.eval.max_bytes)
               for key, s in (("val", val), ("eval", heldout)) if s.sequences}

    torch.manual_seed(spec["seed"])
    model = MoEForCausalLM(model_config(p, manifest["vocab_size"], seq_len))
    pc = PrecisionConfig(**p.precision.model_dump())
    autocast = apply_precision(model, pc, acc.device.type)
    model.to(acc.device)
    optimizer = torch.optim.AdamW(param_groups(model, p.optimizer.weight_decay), lr=p.optimizer.lr,
                                  betas=p.optimizer.betas, eps=p.optimizer.eps, fused=True)
    step_tokens = g * seq_len
    total_steps = math.ceil(p.train_tokens / step_tokens)
    s = p.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(
        s.kind, total_steps, s.warmup_steps, s.min_lr_ratio, s.decay_fraction))
    run_model = torch.compile(model) if p.compile else model
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
        log.info("model: %.2fM params, %.2fM active; %d steps x %d sequences x %d tokens; "
                 "%d process(es), %d micro-step(s) of %d", model.num_params() / 1e6,
                 model.num_params(active=True) / 1e6, total_steps, g, seq_len, world, accum, m)
    def measured_peak() -> float:  # the processes' summed matmul rates
        return acc.reduce(torch.tensor(matmul_rate(acc.device), device=acc.device), "sum").item()

    peak = measured_peak()
    fpt = flops_per_token(model, seq_len)

    def save(step: int) -> None:
        tmp = checkpoint.tmp_dir(ckpt_root, step, spec["launch"])
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            checkpoint.commit(tmp, ckpt_root / checkpoint.name(step),
                              {"identity": spec["identity"], "step": step, "curve": curve,
                               "evals": evals}, p.checkpoint.keep_last)
        acc.wait_for_everyone()

    def run_eval(step: int) -> None:
        row: dict = {"step": step, "tokens": step * step_tokens}
        for key, win in windows.items():
            r = evaluate(model, win, p.eval.micro_seqs, acc, autocast)
            row |= {f"{key}_loss": r["loss"], f"{key}_ppl": r["ppl"], f"{key}_bpb": r["bpb"]}
        evals.append(row)
        if acc.is_main_process:
            log.info("eval step %d: %s", step, "  ".join(
                f"{k} {v:.4f}" for k, v in row.items() if k not in ("step", "tokens")))

    if start == 0 and not evals:
        run_eval(0)

    def train_step(step: int) -> None:
        """One optimizer step on the global batch of `step`; log, eval, checkpoint on cadence."""
        nonlocal step_seconds
        idx = global_batch(train, step, g, spec["seed"], p.sampling)
        x_all, y_all = inputs_targets(train, idx, pad)
        n_targets = int((y_all != IGNORE).sum())
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        x, y = x_all[mine], y_all[mine]
        _sync(acc.device)
        t0 = time.perf_counter()
        ce_sum = torch.zeros((), device=acc.device, dtype=torch.float64)
        for i in range(accum):
            xs, ys = x[i * m:(i + 1) * m].to(acc.device), y[i * m:(i + 1) * m].to(acc.device)
            n_micro = int((ys != IGNORE).sum())
            sync = acc.no_sync(run_model) if i < accum - 1 else contextlib.nullcontext()
            with sync, autocast():
                out = run_model(xs, ys)
                loss = out.ce * (n_micro * world / n_targets) + (out.loss - out.ce) / accum
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
                    "pretrain.optimizer.lr or raise pretrain.schedule.warmup_steps")
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
        if done_steps % p.checkpoint.every_steps == 0 or done_steps == total_steps:
            save(done_steps)

    step_seconds, wall_start = 0.0, time.perf_counter()
    run_model.train()
    bar = progress_bar(spec, acc, total_steps, start)
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
    save_hf(model, out, precision_metadata(pc), state)
    for f in sorted((tok / "tokenizer").iterdir()):
        shutil.copy2(f, out / f.name)
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
        "params_total": model.num_params(), "params_active": model.num_params(active=True),
        "peak_memory_mb": _peak_memory_mb(acc.device),
    }
    Path(spec["report"]).write_text(json.dumps(report, sort_keys=True))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=spec["log_level"], stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)s %(name)s[{rank}]: %(message)s")
    run_training(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
