"""A warm-cache re-run of `synth` against its cold run, demo profile, the same command DVC runs.

Runs `python -m stages run synth` twice in a scratch copy of the project that reuses this
project's curated data (`data/ingest`, `data/signals`, `data/dedup`: run `dvc repro dedup` first):
cold (empty generation cache) and warm (the cache the cold run filled; nothing else changed, as
after a QC or mix edit or a crash). The generator is the `hf` backend on `--model DIR` (default:
this project's `data/pretrain`, the demo's phase-1 checkpoint, if it exists; else a demo-sized
random MoE, see `bench/synth_backends.py`), copied to `models/generator/` as users do, with
`--max-new-tokens` (default 64) per generation. The `templates` backend is timed the same way for
reference: there generation is cheap, so QC (which always runs) dominates the warm run. Goal: the
hf warm run takes <= 5% of the cold run. `name: value` lines last.

    python bench/synth_cache.py --workdir /tmp/synth-cache-bench
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

DATA = ("data/ingest", "data/signals", "data/dedup")


def workspace(dest: Path, synth: dict, model: Path | None) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    for rel in ("stages", "models", *DATA):
        shutil.copytree(ROOT / rel, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
    if model is not None:
        shutil.copytree(model, dest / "models/generator/demo")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(merge(params, {"synth": synth}),
                                                     sort_keys=False))
    return dest


def timed_run(root: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stages", "run", "synth"], cwd=root,
                          env=venv_env(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(proc.stdout + proc.stderr)
    return wall, json.loads((root / "reports/synth/metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=ROOT / "data/pretrain")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    if not all((ROOT / d).exists() for d in DATA):
        raise SystemExit("curated data missing: run `dvc repro dedup` first")
    model = args.model
    if not (model / "config.json").exists():
        from synth_backends import build_demo_model

        model = build_demo_model(args.workdir / "random-demo-model")
    results = {}
    for backend, synth, gen in (
        ("hf", {"backend": "hf", "model": "models/generator/demo",
                "sampling": {"max_new_tokens": args.max_new_tokens}}, model),
        ("templates", {}, None),
    ):
        root = workspace(args.workdir / backend, synth, gen)
        cold, m_cold = timed_run(root)
        warm, m_warm = timed_run(root)
        assert m_warm["backend_calls"] == 0 and m_warm["sandbox_runs"] == 0, m_warm
        assert (m_warm["accepted"], m_warm["jobs"]) == (m_cold["accepted"], m_cold["jobs"])
        print(f"[{backend}] {m_cold['jobs']} jobs, {m_cold['tokens_generated']} tokens: "
              f"cold {cold:.1f} s ({m_cold['backend_calls']} backend calls, "
              f"{m_cold['sandbox_runs']} sandbox runs), warm {warm:.1f} s (0 calls)", flush=True)
        results[backend] = (cold, warm, m_cold)
    hf_cold, hf_warm, m = results["hf"]
    t_cold, t_warm, _ = results["templates"]
    print(f"hf_model: {model}")
    print(f"hf_jobs: {m['jobs']}")
    print(f"hf_tokens_generated: {m['tokens_generated']}")
    print(f"hf_cold_s: {hf_cold:.1f}")
    print(f"hf_warm_s: {hf_warm:.1f}")
    print(f"hf_warm_over_cold: {hf_warm / hf_cold:.4f}")
    print(f"templates_cold_s: {t_cold:.1f}")
    print(f"templates_warm_s: {t_warm:.1f}")
    print(f"templates_warm_over_cold: {t_warm / t_cold:.4f}")


if __name__ == "__main__":
    main()
