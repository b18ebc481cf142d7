"""Data-efficiency ablation: the same model and token budget on raw, filtered, deduplicated,
SoftDedup-weighted, synthetic-augmented and classifier-selected data, over several seeds, evaluated
on the same held-out text (split off at ingest, before any curation) in bits per byte, so runs with
different tokenizers stay comparable.

Each variant is the pipeline with a few params changed (what `dvc exp run` would set):

    raw         -S tokenize.corpus=raw    -S pretrain.sampling=uniform
    filtered    -S tokenize.corpus=filter -S pretrain.sampling=uniform
    deduped     -S tokenize.corpus=dedup  -S pretrain.sampling=uniform
    softdedup   -S tokenize.corpus=dedup  -S pretrain.sampling=softdedup
    synth       -S tokenize.corpus=mix    -S pretrain.sampling=uniform   (deduped + synthetic)
    quality50   filtered, and -S filter.quality.top_fraction=0.5  (the classifier's top half)
    quality25   filtered, and -S filter.quality.top_fraction=0.25

and each runs once per seed (`-S pretrain.seed=N`: model init and data order; the corpus and its
held-out split stay put), with `dvc repro pretrain` in its own copy of the project that shares this
project's DVC cache (upstream stages are restored from DVC's run cache, not recomputed). One seed
is not enough: the same code measured deduped at 1.32x and 1.22x of raw on two machines.

The target is the worst final held-out bits per byte among the raw runs (every raw seed reaches
it). Per variant: the mean and range over seeds of the final bits per byte and of the tokens to
reach the target, the ratio raw tokens / variant tokens (mean, and range from the variant's best
and worst seed), and whether the variant's final range is separated from raw's. Output: one chart
with bands (`docs/data_efficiency.png`) and `bench/results/data_efficiency.json`.

    python bench/data_efficiency.py --workdir /tmp/ablation [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestration.dvc_cli import venv_env  # noqa: E402
from stages.profiles import merge  # noqa: E402
from stages.train.report import tokens_to_reach  # noqa: E402

FILTERED = {"tokenize": {"corpus": "filter"}, "pretrain": {"sampling": "uniform"}}
VARIANTS = {
    "raw": {"tokenize": {"corpus": "raw"}, "pretrain": {"sampling": "uniform"}},
    "filtered": FILTERED,
    "deduped": {"tokenize": {"corpus": "dedup"}, "pretrain": {"sampling": "uniform"}},
    "softdedup": {"tokenize": {"corpus": "dedup"}, "pretrain": {"sampling": "softdedup"}},
    "synth": {"tokenize": {"corpus": "mix"}, "pretrain": {"sampling": "uniform"}},
    "quality50": {**FILTERED, "filter": {"quality": {"top_fraction": 0.5}}},
    "quality25": {**FILTERED, "filter": {"quality": {"top_fraction": 0.25}}},
}
SKIP_TOP = {"data", "reports", "checkpoints", "dvc.lock", ".dagster_home", "docs", "bench"}


def sh(*cmd: str, cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=venv_env(), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")


def set_params(root: Path, overrides: dict) -> None:
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merge(params, overrides), sort_keys=False))


def workspace(dest: Path, overrides: dict) -> Path:
    """A copy of the project's source files with `overrides` merged into params.yaml, sharing
    this project's DVC cache."""
    if dest.exists():
        shutil.rmtree(dest)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if rel.split("/", 1)[0] not in SKIP_TOP and (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    set_params(dest, overrides)
    sh("git", "init", "-q", cwd=dest)
    sh("dvc", "init", "-q", "-f", cwd=dest)
    sh("dvc", "cache", "dir", "--local", str(ROOT / ".dvc" / "cache"), cwd=dest)
    return dest


def spread(values: list) -> dict:
    """Mean, min and max of the values that exist, and how many of them exist."""
    got = [v for v in values if v is not None]
    if not got:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": sum(got) / len(got), "min": min(got), "max": max(got), "n": len(got)}


def summarize(results: dict, base: str) -> dict:
    """Tokens to the target per run, then per variant the spreads, ratios vs `base` and whether
    the final bits per byte separate from `base`'s beyond the seed spread."""
    target = max(run["final_eval_bpb"] for run in results[base]["runs"])
    for r in results.values():
        for run in r["runs"]:
            run["tokens_to_target"] = tokens_to_reach(run["evals"], "eval_bpb", target)
        r["final_eval_bpb"] = spread([run["final_eval_bpb"] for run in r["runs"]])
        r["tokens_to_target"] = spread([run["tokens_to_target"] for run in r["runs"]])
    base_tokens = results[base]["tokens_to_target"]["mean"]
    for r in results.values():
        t = r["tokens_to_target"]
        r["ratio_vs_raw"] = None if not t["n"] else {
            "mean": base_tokens / t["mean"], "worst_seed": base_tokens / t["max"],
            "best_seed": base_tokens / t["min"], "seeds_reaching_target": t["n"]}
        b, v = results[base]["final_eval_bpb"], r["final_eval_bpb"]
        r["separated_from_raw"] = v["max"] < b["min"] or v["min"] > b["max"]
    return {"target": {"variant": base, "eval_bpb": target,
                       "rule": "the worst final held-out bpb among the raw seeds"},
            "variants": results}


def plot(results: dict, path: Path, target: float) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100,
                                 gridspec_kw={"width_ratios": [3, 2]})
    names = list(results)
    for i, name in enumerate(names):
        runs = results[name]["runs"]
        tokens = [e["tokens"] for e in runs[0]["evals"]]
        curves = np.array([[e["eval_bpb"] for e in run["evals"]] for run in runs])
        colour = f"C{i}"
        ax.plot(tokens, curves.mean(0), "-", color=colour, linewidth=1.2,
                label=f"{name} ({len(runs)} seeds)")
        ax.fill_between(tokens, curves.min(0), curves.max(0), color=colour, alpha=0.18)
        ratio = results[name]["ratio_vs_raw"]
        if ratio:
            bx.errorbar(ratio["mean"], i, xerr=[[ratio["mean"] - ratio["worst_seed"]],
                                                [ratio["best_seed"] - ratio["mean"]]],
                        fmt="o", color=colour, capsize=4)
            bx.annotate(f"{ratio['mean']:.2f}x", (ratio["best_seed"], i), xytext=(5, -3),
                        textcoords="offset points", fontsize=8)
        else:
            bx.annotate("target not reached", (1.0, i), fontsize=8, color=colour)
    ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out bits per byte (mean, band = seed range)")
    ax.set_title("held-out text (ingest split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_ylim(top=min(ax.get_ylim()[1], target + 1.0))
    bx.axvline(1.0, color="grey", linewidth=0.8)
    bx.set_yticks(range(len(names)), names)
    bx.invert_yaxis()
    bx.set_xlabel("raw tokens / variant tokens to raw's worst final bpb")
    bx.set_title("data efficiency vs raw (bars: seed range)")
    bx.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="pretrain.seed values")
    ap.add_argument("--eval-every", type=int, default=5, help="pretrain.eval.every_steps")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "data_efficiency.png")
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/data_efficiency.json")
    ap.add_argument("--summarize-only", action="store_true",
                    help="re-summarize the runs saved in WORKDIR/runs.json, running nothing")
    args = ap.parse_args()

    saved = args.workdir / "runs.json"
    results: dict = json.loads(saved.read_text()) if args.summarize_only else {}
    for name in [] if args.summarize_only else args.variants:
        overrides = merge(json.loads(json.dumps(VARIANTS[name])),
                          {"pretrain": {"eval": {"every_steps": args.eval_every}}})
        root = workspace(args.workdir / name, overrides)
        results[name] = {"overrides": overrides, "runs": []}
        for seed in args.seeds:
            set_params(root, {"pretrain": {"seed": seed}})
            started = time.monotonic()
            sh("dvc", "repro", "pretrain", cwd=root)
            training = json.loads((root / "data/pretrain/training.json").read_text())
            tok = json.loads((root / "data/tokenize/manifest.json").read_text())
            run = {"seed": seed, "evals": training["evals"],
                   "final_eval_bpb": training["evals"][-1]["eval_bpb"],
                   "train_docs": tok["splits"]["train"]["docs"],
                   "train_corpus_tokens": tok["splits"]["train"]["tokens"],
                   "seconds": round(time.monotonic() - started, 1)}
            results[name]["runs"].append(run)
            print(f"[{name} seed {seed}] final held-out bpb {run['final_eval_bpb']:.4f} "
                  f"({run['train_corpus_tokens']} corpus tokens, {run['seconds']} s)", flush=True)
            saved.write_text(json.dumps(results, indent=1) + "\n")

    base = "raw" if "raw" in results else next(iter(results))
    summary = summarize(results, base)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, args.png, summary["target"]["eval_bpb"])
    widest = max(r["final_eval_bpb"]["max"] - r["final_eval_bpb"]["min"] for r in results.values())
    for name, r in results.items():
        f, ratio = r["final_eval_bpb"], r["ratio_vs_raw"]
        shown = (f"{ratio['mean']:.2f}x [{ratio['worst_seed']:.2f}, {ratio['best_seed']:.2f}] "
                 f"({ratio['seeds_reaching_target']}/{len(r['runs'])} seeds)" if ratio
                 else "target not reached")
        apart = "separated from raw" if r["separated_from_raw"] else "within raw's seed spread"
        print(f"{name:10s} final bpb {f['mean']:.4f} [{f['min']:.4f}, {f['max']:.4f}]  "
              f"ratio {shown}  {apart}")
    print(f"chart: {args.png}\nresults: {args.json}")
    print(f"seed_spread_bpb_max: {widest:.4f}")
    for name, r in results.items():
        if r["ratio_vs_raw"]:
            print(f"{name}_ratio_vs_raw: {r['ratio_vs_raw']['mean']:.3f}")


if __name__ == "__main__":
    main()
