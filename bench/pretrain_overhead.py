"""The whole `pretrain` stage's tokens/s against its pure training-step rate, in one run.

Runs `python -m stages run pretrain` (the command DVC and Dagster run) in a scratch copy of the
project that reuses this project's `data/tokenize` (run `make pipeline` or `dvc repro tokenize`
first), from an empty checkpoint directory, with the params in `params.yaml` (demo profile).
Stage tokens/s = trained tokens / wall time of the whole command (interpreter start, imports,
data loading, evaluations, checkpoints and the final export included); step tokens/s = trained
tokens / time inside forward, backward and optimizer steps, measured by the stage itself.

    python bench/pretrain_overhead.py --workdir /tmp/pretrain-bench [--set pretrain.compile=true]
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
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], help="params override, a.b=value")
    args = ap.parse_args()
    if not (ROOT / "data/tokenize/manifest.json").exists():
        raise SystemExit("data/tokenize is missing: run `dvc repro tokenize` first")

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
    shutil.copytree(ROOT / "data/tokenize", work / "data/tokenize")
    params = yaml.safe_load((work / "params.yaml").read_text())
    for assignment in args.set:
        merge(params, dotted(assignment))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stages", "run", "pretrain"], cwd=work,
                          env=venv_env(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(proc.stdout + proc.stderr)
    m = json.loads((work / "reports/pretrain/metrics.json").read_text())
    stage_tps = m["tokens"] / wall
    results = {
        "tokens": m["tokens"],
        "steps": m["steps"],
        "stage_wall_s": round(wall, 1),
        "tokens_per_s_step": round(m["tokens_per_s_step"], 1),
        "tokens_per_s_stage": round(stage_tps, 1),
        "stage_overhead": round(1 - stage_tps / m["tokens_per_s_step"], 4),
        "loop_overhead_eval_and_checkpoints": round(m["loop_overhead"], 4),
        "mfu_steps": round(m["mfu"], 4),
        "peak_memory_mb": round(m["peak_memory_mb"], 1),
        "final_eval_bpb": round(m["eval_bpb"], 4),
    }
    for key, value in results.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
