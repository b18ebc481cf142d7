"""Data-efficiency ablation: the same model and token budget on raw, filtered, deduplicated,
SoftDedup-weighted and synthetic-augmented data, evaluated on the same held-out text (split off at
ingest, before any curation) in bits per byte, so runs with different tokenizers stay comparable.

Each variant is the pipeline with two params changed (what `dvc exp run` would set):

    raw        -S tokenize.corpus=raw    -S pretrain.sampling=uniform
    filtered   -S tokenize.corpus=filter -S pretrain.sampling=uniform
    deduped    -S tokenize.corpus=dedup  -S pretrain.sampling=uniform
    softdedup  -S tokenize.corpus=dedup  -S pretrain.sampling=softdedup
    synth      -S tokenize.corpus=mix    -S pretrain.sampling=uniform   (deduped + synthetic)

run with `dvc repro pretrain` in its own copy of the project that shares this project's DVC cache
(upstream stages are restored from DVC's run cache, not recomputed). Output: one chart of held-out
bits per byte against training tokens (`docs/data_efficiency.png`), and per variant the tokens it
needs to reach the raw run's final bits per byte and the ratio raw tokens / variant tokens
(`bench/results/data_efficiency.json`).

    python bench/data_efficiency.py --workdir /tmp/ablation
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

VARIANTS = {
    "raw": {"tokenize": {"corpus": "raw"}, "pretrain": {"sampling": "uniform"}},
    "filtered": {"tokenize": {"corpus": "filter"}, "pretrain": {"sampling": "uniform"}},
    "deduped": {"tokenize": {"corpus": "dedup"}, "pretrain": {"sampling": "uniform"}},
    "softdedup": {"tokenize": {"corpus": "dedup"}, "pretrain": {"sampling": "softdedup"}},
    "synth": {"tokenize": {"corpus": "mix"}, "pretrain": {"sampling": "uniform"}},
}
SKIP_TOP = {"data", "reports", "checkpoints", "dvc.lock", ".dagster_home", "docs", "bench"}


def sh(*cmd: str, cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=venv_env(), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")


def workspace(dest: Path, overrides: dict) -> Path:
    """A copy of the project's source files with `overrides` merged into params.yaml, sharing
    this project's DVC cache."""
    import yaml

    if dest.exists():
        shutil.rmtree(dest)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if rel.split("/", 1)[0] not in SKIP_TOP and (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(merge(params, overrides), sort_keys=False))
    sh("git", "init", "-q", cwd=dest)
    sh("dvc", "init", "-q", "-f", cwd=dest)
    sh("dvc", "cache", "dir", "--local", str(ROOT / ".dvc" / "cache"), cwd=dest)
    return dest



def plot(results: dict, path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for name, r in results.items():
        tokens = [e["tokens"] for e in r["evals"]]
        ratio = r["ratio_vs_raw"]
        label = f"{name} (x{ratio:.2f} tokens-to-target)" if ratio else f"{name} (target not met)"
        ax.plot(tokens, [e["eval_bpb"] for e in r["evals"]], "o-", markersize=3, label=label)
        bx.plot(tokens, [e["eval_loss"] for e in r["evals"]], "o-", markersize=3, label=name)
    ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("held-out text (ingest split), bits per byte")
    bx.set_ylabel("held-out loss (nats/token, tokenizer-dependent)")
    bx.set_title("held-out loss")
    for a in (ax, bx):
        a.set_xlabel("training tokens")
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--eval-every", type=int, default=5, help="pretrain.eval.every_steps")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "data_efficiency.png")
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/data_efficiency.json")
    args = ap.parse_args()

    results: dict = {}
    for name in args.variants:
        overrides = merge(json.loads(json.dumps(VARIANTS[name])),
                          {"pretrain": {"eval": {"every_steps": args.eval_every}}})
        root = workspace(args.workdir / name, overrides)
        started = time.monotonic()
        print(f"[{name}] dvc repro pretrain  ({json.dumps(overrides)})", flush=True)
        sh("dvc", "repro", "pretrain", cwd=root)
        training = json.loads((root / "data/pretrain/training.json").read_text())
        tok = json.loads((root / "data/tokenize/manifest.json").read_text())
        results[name] = {
            "overrides": overrides, "evals": training["evals"],
            "final_eval_bpb": training["evals"][-1]["eval_bpb"],
            "train_docs": tok["splits"]["train"]["docs"],
            "train_corpus_tokens": tok["splits"]["train"]["tokens"],
            "seconds": round(time.monotonic() - started, 1),
        }
        print(f"[{name}] final held-out bpb {results[name]['final_eval_bpb']:.4f} "
              f"({results[name]['seconds']} s)", flush=True)

    base = "raw" if "raw" in results else next(iter(results))
    target = results[base]["final_eval_bpb"]
    base_tokens = tokens_to_reach(results[base]["evals"], "eval_bpb", target)
    for r in results.values():
        r["tokens_to_target"] = tokens_to_reach(r["evals"], "eval_bpb", target)
        r["ratio_vs_raw"] = (base_tokens / r["tokens_to_target"]
                             if base_tokens and r["tokens_to_target"] else None)
    summary = {"target": {"variant": base, "eval_bpb": target}, "variants": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, args.png, target)
    for name, r in results.items():
        ratio = f"{r['ratio_vs_raw']:.2f}x" if r["ratio_vs_raw"] else "not reached"
        print(f"{name:10s} final bpb {r['final_eval_bpb']:.4f}  tokens to raw's final bpb "
              f"{r['tokens_to_target'] or float('nan'):>10.0f}  ratio {ratio}")
    print(f"chart: {args.png}\nresults: {args.json}")


if __name__ == "__main__":
    main()
