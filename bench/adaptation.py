"""Full fine-tuning, LoRA and QLoRA side by side: the adapt stage once per mode, from the same
refined model, on the same domain corpus and token budget.

A scratch project in --workdir gets this project's code and params (the demo profile, or
`--profile tiny`) and the inputs of adapt: with the demo profile, the outputs this project already
has are copied and the missing upstream stages (up to refine) run there; with `tiny` everything
runs there (a re-run with the same --workdir reuses them). Then each mode runs `python -m stages
run adapt` (what DVC and Dagster run) in its own copy, in its own process, so peak memory is per
mode (with a fixed glibc mmap threshold, so that freed tensors leave the resident set: see
MALLOC_ENV). Two variants: the params as configured, and with activation checkpointing and
2-sequence micro-batches (same global batch). Full fine-tuning runs at --full-lr (params.yaml's
rate is the LoRA modes'). Per variant, the table: trainable parameters and their fraction of the
model; training memory (peak resident set minus the resident set before the model is built: the
stage's `train_memory_mb`) and its ratio to full fine-tuning; domain held-out bits per byte
before/after (the gain) and held-out bits per byte of the other domains and of the general eval
set before/after (the forgetting). QLoRA's "before" is its 4-bit base. Writes
bench/results/adaptation.json; the last lines are `name: value`.

    python bench/adaptation.py --workdir /tmp/adaptation
    python bench/adaptation.py --workdir /tmp/adaptation-tiny --profile tiny --variants configured
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestration.dvc_cli import venv_env  # noqa: E402
from stages.profiles import merge  # noqa: E402
from stages.registry import stage  # noqa: E402

MODES = ("full", "lora", "qlora")
COPY = ("stages", "params.yaml", "profiles", "models")
# as params.yaml says; and with activation checkpointing and 2-sequence micro-batches (the same
# global batch), where the activations no longer outweigh the weights and optimizer state
VARIANTS = {"configured": {},
            "checkpointed": {"adapt": {"activation_checkpointing": True,
                                       "batch": {"micro_seqs": 2}}}}
UPSTREAM = ("ingest", "signals", "quality", "filter", "dedup", "synth", "mix", "tokenize",
            "pretrain", "refine")


# glibc raises its mmap threshold as large blocks are freed, after which freed tensors stay in
# the heap: peak RSS would then measure the allocator's high-water mark more than what a mode
# needs. A fixed threshold returns every large tensor to the OS when it is freed (all modes alike).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run_stage(name: str, root: Path, env: dict | None = None) -> float:
    """`python -m stages run <name>` in `root`; returns its wall seconds."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stages", "run", name], cwd=root,
                          env={**venv_env(), **(env or {})}, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"stage {name} failed in {root}:\n{proc.stdout[-5000:]}"
                         f"{proc.stderr[-5000:]}")
    return time.perf_counter() - started


def prepare(work: Path, profile: str) -> Path:
    """`work/base`: code, params and adapt's inputs (copied from this project for the demo
    profile where it has them, else produced there). Inputs already in `work/base` are kept (a
    re-run only refreshes code and params: delete the workdir to start over)."""
    base = work / "base"
    for rel in COPY:
        src = ROOT / rel
        if (base / rel).is_dir():
            shutil.rmtree(base / rel)
        if src.is_dir():
            shutil.copytree(src, base / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            base.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, base / rel)
    if profile != "demo":
        params = yaml.safe_load((base / "params.yaml").read_text())
        overrides = yaml.safe_load((base / "profiles" / f"{profile}.yaml").read_text())
        (base / "params.yaml").write_text(yaml.safe_dump(merge(params, overrides),
                                                         sort_keys=False))
    needed = set(stage("adapt").deps)
    for name in reversed(UPSTREAM):  # everything adapt's inputs are made from
        if stage(name).out in needed:
            needed |= set(stage(name).deps)
    for name in UPSTREAM:
        out = stage(name).out
        if (profile == "demo" and out in needed and (ROOT / out).exists()
                and not (base / out).exists()):
            shutil.copytree(ROOT / out, base / out, symlinks=True)
    for name in UPSTREAM:
        if stage(name).out in needed and not (base / stage(name).out).exists():
            print(f"[inputs] running {name}", flush=True)
            print(f"[inputs] {name}: {run_stage(name, base):.0f} s", flush=True)
    return base


def run_mode(base: Path, root: Path, overrides: dict) -> dict:
    """adapt in a copy `root` of `base` with `overrides`: its metrics and wall seconds."""
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(base, root, symlinks=True)
    params = merge(yaml.safe_load((root / "params.yaml").read_text()), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seconds = run_stage("adapt", root, MALLOC_ENV)
    metrics = json.loads((root / "reports/adapt/metrics.json").read_text())
    return metrics | {"stage_seconds": round(seconds, 1), "overrides": overrides}


def row(mode: str, m: dict, full: dict | None) -> dict:
    def ratio(key: str) -> float | None:
        return m[key] / full[key] if full else None

    out = {"mode": mode, "params_trainable": m["params_trainable"],
           "params_trainable_fraction": m["params_trainable_fraction"],
           "train_memory_mb": m["train_memory_mb"], "peak_memory_mb": m["peak_memory_mb"],
           "train_memory_vs_full": ratio("train_memory_mb"),
           "tokens_per_s_step": m["tokens_per_s_step"], "stage_seconds": m["stage_seconds"]}
    for key in ("domain", "other", "eval"):
        if f"{key}_bpb" in m:
            out |= {f"{key}_bpb_before": m[f"{key}_bpb_at_init"], f"{key}_bpb": m[f"{key}_bpb"],
                    f"{key}_bpb_change": m[f"{key}_bpb"] - m[f"{key}_bpb_at_init"]}
    return out


def table(rows: list[dict]) -> str:
    def bpb(r: dict, key: str) -> str:
        if f"{key}_bpb" not in r:
            return "-"
        before, after, change = (r[f"{key}_bpb{s}"] for s in ("_before", "", "_change"))
        return f"{before:.3f} -> {after:.3f} ({change:+.3f})"

    lines = ["| mode | trainable params | train memory | vs full | domain bpb (gain) | "
             "other domains bpb (forgetting) | general eval bpb |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = f"{r['train_memory_vs_full']:.2f}x" if r["train_memory_vs_full"] else "-"
        share = 100 * r["params_trainable_fraction"]
        lines.append(
            f"| {r['mode']} | {r['params_trainable']:,} ({share:.1f}%)"
            f" | {r['train_memory_mb']:.0f} MB | {vs} | {bpb(r, 'domain')} | {bpb(r, 'other')} | "
            f"{bpb(r, 'eval')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--profile", default="demo", help="demo (params.yaml) or a profiles/ name")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--full-lr", type=float, default=0.001,
                    help="adapt.optimizer.lr for full fine-tuning (params.yaml's is the LoRA "
                    "modes'); 0 = params.yaml's")
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/adaptation.json")
    args = ap.parse_args()

    base = prepare(args.workdir, args.profile)
    results: dict = {}
    for variant in args.variants:
        metrics = {}
        for mode in args.modes:
            overrides = merge(json.loads(json.dumps(VARIANTS[variant])), {"adapt": {"mode": mode}})
            if mode == "full" and args.full_lr:
                merge(overrides, {"adapt": {"optimizer": {"lr": args.full_lr}}})
            print(f"[{variant}/{mode}] adapt  {json.dumps(overrides)}", flush=True)
            metrics[mode] = run_mode(base, args.workdir / variant / mode, overrides)
            print(f"[{variant}/{mode}] {metrics[mode]['stage_seconds']} s", flush=True)
        full = metrics.get("full")
        results[variant] = {"rows": [row(mode, m, full) for mode, m in metrics.items()],
                            "metrics": metrics}
    adapt = yaml.safe_load((base / "params.yaml").read_text())["adapt"]
    summary = {"profile": args.profile, "adapt_params": adapt, "full_lr": args.full_lr,
               "env": MALLOC_ENV, "variants": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    for variant, r in results.items():
        print(f"\n{variant}: {json.dumps(VARIANTS[variant])}\n{table(r['rows'])}")
    print(f"results: {args.json}")
    for variant, r in results.items():
        suffix = "" if variant == "configured" else f"_{variant}"
        for row_ in r["rows"]:
            if row_["mode"] != "full" and row_["train_memory_vs_full"]:
                print(f"{row_['mode']}_memory_vs_full{suffix}: {row_['train_memory_vs_full']:.2f}")
    for row_ in next(iter(results.values()))["rows"]:
        print(f"{row_['mode']}_trainable_fraction: {row_['params_trainable_fraction']:.4f}")
        print(f"{row_['mode']}_domain_bpb_gain: {-row_['domain_bpb_change']:.4f}")


if __name__ == "__main__":
    main()
