"""A training stage's whole-command tokens/s against its pure training-step rate, in one run.

Runs `python -m stages run <stage>` (the command DVC and Dagster run) in a scratch copy of the
project that reuses this project's inputs of that stage (run `make pipeline` or `dvc repro
<stage>` first), from an empty checkpoint directory, with the params in `params.yaml` (demo
profile). Stage tokens/s = trained tokens / wall time of the whole command (interpreter start,
imports, data preparation, evaluations, checkpoints and the final export included); step
tokens/s = trained tokens / time inside forward, backward and optimizer steps, measured by the
training loop itself. A stage that trains more than one model (distill: the student and its
no-KD baseline) reports the summed tokens and the step rate over both.

    python bench/training_overhead.py --stage refine --workdir /tmp/overhead-bench
    python bench/training_overhead.py --stage adapt --workdir /tmp/b --set adapt.compile=kernels
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

COPY = ("stages", "params.yaml")


def dotted(assignment: str) -> dict:
    """`a.b.c=value` -> {"a": {"b": {"c": value}}} (value parsed as YAML)."""
    key, value = assignment.split("=", 1)
    node: dict = yaml.safe_load(value)
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stage", default="pretrain", help="a training stage (default: pretrain)")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], help="params override, a.b=value")
    args = ap.parse_args()
    st = stage(args.stage)
    missing = [d for d in st.deps if not (ROOT / d).exists()]
    if missing:
        raise SystemExit(f"missing inputs {missing}: run `dvc repro {args.stage}` first")

    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    for rel in COPY:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, work / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            work.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    for dep in st.deps:
        shutil.copytree(ROOT / dep, work / dep, symlinks=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    for assignment in args.set:
        merge(params, dotted(assignment))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stages", "run", st.name], cwd=work,
                          env=venv_env(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(proc.stdout + proc.stderr)
    m = json.loads((work / st.metrics[0]).read_text())
    runs = [m]
    if "baseline_tokens_per_s_step" in m:  # distill's no-KD baseline: the same token budget
        runs.append({"tokens": m["tokens"], "steps": m["steps"],
                     "tokens_per_s_step": m["baseline_tokens_per_s_step"]})
    tokens = sum(r["tokens"] for r in runs)
    step_seconds = sum(r["tokens"] / r["tokens_per_s_step"] for r in runs)
    stage_tps = tokens / wall
    results = {
        "stage": st.name,
        "tokens": tokens,
        "steps": sum(r["steps"] for r in runs),
        "stage_wall_s": round(wall, 1),
        "tokens_per_s_step": round(tokens / step_seconds, 1),
        "tokens_per_s_stage": round(stage_tps, 1),
        "stage_overhead": round(1 - stage_tps * step_seconds / tokens, 4),
        "loop_overhead_eval_and_checkpoints": round(m["loop_overhead"], 4),
        "mfu_steps": round(m["mfu"], 4),
        "peak_memory_mb": round(m["peak_memory_mb"], 1),
        "final_eval_bpb": round(m["eval_bpb"], 4),
    }
    for key, value in results.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
