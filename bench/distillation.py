"""Distillation benchmark: does KD on the adapted teacher's cached top-k let the dense student reach
the no-KD baseline's final held-out loss on fewer tokens?

Reads one run of the `distill` stage (both students train in it, on the same cached sequences and
token budget): the eval curves in `data/distill/training.json` and `data/distill/baseline/
training.json`, and `reports/{teacher_logits,distill}/metrics.json`. Nothing is retrained.

    python bench/distillation.py                       # this project's last run (dvc repro distill)
    python bench/distillation.py --run --workdir /tmp/kd [--profile tiny]
                                                       # a fresh copy, `dvc repro distill` there

`--run` copies the project's source files to WORKDIR (sharing this project's DVC cache, so
upstream stages already run at the same params are restored, not recomputed), applies the profile
and runs `dvc repro distill`. Output: `bench/results/distillation.json`; the last lines are
`name: value`, e.g. `tokens_to_target_fraction: 0.55` (the KD student's tokens to the baseline's
final held-out loss, as a fraction of the baseline's budget; `null` if never reached).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.data_efficiency import sh, workspace  # noqa: E402
from stages.train.report import tokens_to_reach  # noqa: E402


def run_pipeline(workdir: Path, profile: str | None) -> tuple[Path, float]:
    """`dvc repro distill` in a fresh copy of the project; (root, seconds)."""
    root = workspace(workdir, {})
    if profile:
        sh(sys.executable, "-m", "stages", "profile", profile, cwd=root)
    started = time.monotonic()
    print(f"dvc repro distill in {root} (profile {profile or 'demo'})", flush=True)
    sh("dvc", "repro", "distill", cwd=root)
    return root, time.monotonic() - started


def fraction(kd: list[dict], base: list[dict], key: str) -> float | None:
    """The KD curve's tokens to the baseline's final `key`, over the baseline's budget."""
    if key not in base[-1]:
        return None
    reached = tokens_to_reach(kd, key, base[-1][key])
    return reached / base[-1]["tokens"] if reached is not None else None


def summarise(root: Path) -> dict:
    """The KD-vs-baseline numbers of the run in `root`."""
    kd = json.loads((root / "data/distill/training.json").read_text())
    base = json.loads((root / "data/distill/baseline/training.json").read_text())
    metrics = json.loads((root / "reports/distill/metrics.json").read_text())
    teacher = json.loads((root / "reports/teacher_logits/metrics.json").read_text())
    target = base["evals"][-1]["eval_loss"]
    reached = tokens_to_reach(kd["evals"], "eval_loss", target)
    bpb_target = base["evals"][-1]["eval_bpb"]
    reached_bpb = tokens_to_reach(kd["evals"], "eval_bpb", bpb_target)
    return {
        "budget_tokens": base["tokens"], "target_eval_loss": target,
        "tokens_to_target": reached,
        "tokens_to_target_fraction": reached / base["tokens"] if reached is not None else None,
        "tokens_to_target_fraction_bpb": (reached_bpb / base["tokens"]
                                          if reached_bpb is not None else None),
        "tokens_to_target_fraction_val": fraction(kd["evals"], base["evals"], "val_loss"),
        "kd_final_eval_bpb": kd["evals"][-1]["eval_bpb"],
        "baseline_final_eval_bpb": base["evals"][-1]["eval_bpb"],
        "kd_final_eval_loss": kd["evals"][-1]["eval_loss"],
        "baseline_final_eval_loss": target,
        "kd_final_val_loss": kd["evals"][-1].get("val_loss"),
        "baseline_final_val_loss": base["evals"][-1].get("val_loss"),
        "kd": kd["params"]["kd"], "student": kd["params"]["student"],
        "student_params": metrics["params_total"], "teacher": teacher,
        "kd_tokens_per_s": metrics["tokens_per_s_step"],
        "baseline_tokens_per_s": metrics["baseline_tokens_per_s_step"],
        "curves": {"kd": kd["evals"], "baseline": base["evals"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT, help="project whose last run to read")
    ap.add_argument("--run", action="store_true", help="run the pipeline in --workdir first")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slm-distillation-bench"))
    ap.add_argument("--profile", default=None, help="e.g. tiny (default: the demo params)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/distillation.json")
    args = ap.parse_args()

    root, seconds = args.root, None
    if args.run:
        root, seconds = run_pipeline(args.workdir, args.profile)
    if not (root / "reports/distill/metrics.json").is_file():
        raise SystemExit(f"{root} has no distill run: `dvc repro distill` there, or use --run")
    result = summarise(root) | {"profile": args.profile or "demo",
                                "pipeline_seconds": seconds}
    try:
        result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                          capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("held-out loss vs tokens (KD | no KD):")
    for a, b in zip(result["curves"]["kd"], result["curves"]["baseline"], strict=False):
        print(f"  {a['tokens']:>8d}  {a['eval_loss']:.4f} | {b['eval_loss']:.4f}")
    frac = result["tokens_to_target_fraction"]
    print(f"results: {args.json}")
    print(f"kd_final_eval_bpb: {result['kd_final_eval_bpb']:.4f}")
    print(f"baseline_final_eval_bpb: {result['baseline_final_eval_bpb']:.4f}")
    val = result["tokens_to_target_fraction_val"]
    print(f"tokens_to_target_fraction_val: {'null' if val is None else f'{val:.3f}'}")
    print(f"tokens_to_target_fraction: {'null' if frac is None else f'{frac:.3f}'}")


if __name__ == "__main__":
    main()
