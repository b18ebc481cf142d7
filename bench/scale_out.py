"""Scale-out: the data stages on local processes and on Ray, and their memory as the corpus grows.

1. Executors: `signals` and `dedup` on 4 copies of the built-in prose (`--executor-scale`; on
   the demo corpus alone, about a second of work, process start-up decides) with 1 local
   worker, 2 local workers, and a 2-CPU local Ray cluster (started once,
   before the timed runs: its start-up is reported apart). Scaling efficiency = t(1) / (2 t(2));
   Ray's overhead = t(Ray, 2) / t(local, 2) - 1 (goal: within 15%). Outputs are checked identical.
   The same at 16 copies (2 local workers and Ray) splits each executor's time into seconds per
   document (the slope between the sizes) and a per-stage fixed cost. Each timing is the median
   of `--repeats` runs, interleaved (single runs of the same stage here vary by up to 40%).
2. Growth: the data stages `ingest` → `dedup` (2 local workers) on a synthetic corpus of 1x, 4x
   and 16x the built-in prose (copies with a word changed per copy, as local files; ingest spill
   runs of 2 M characters, so every size spills; quality's labelled sample capped at 1,000 per
   class; no filter rules, so `dedup` sees every copy): peak memory of the largest process
   (ru_maxrss of the stage's process tree) and seconds per document (goal: memory flat within
   20%, time linear).
3. Refresh: 16 variants of the built-in prose (`--refresh-scale`) as 100 local files; `ingest` +
   `signals` from scratch (no caches) against a refresh after one more file (1% new documents)
   with the ingest and document caches warm (goal: <= 10% of the from-scratch time). Outputs are
   checked identical.

    python bench/scale_out.py [--growth 1 4 16] [--executor-scale 4 16] [--repeats 3] [--skip-ray]
                              [--skip-refresh] [--refresh-scale 16]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from orchestration.dvc_cli import venv_env  # noqa: E402
from tests.conftest import copy_project, ray_token_env, stop_ray  # noqa: E402
from tests.curation_helpers import file_bytes  # noqa: E402

GROWTH_STAGES = ("ingest", "signals", "quality", "filter", "dedup")
SECTIONS = ("base", "runtime", "orchestration", "ingest", "signals", "quality", "filter", "dedup")


def project(dest: Path, **sections) -> Path:
    root = copy_project(dest)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = {k: params[k] for k in SECTIONS}
    params["runtime"] |= {"progress": False, "log_level": "WARNING"}
    for name, values in sections.items():
        params[name] = {**params[name], **values}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


# Runs a command and prints the peak RSS (KB) of the largest process of its tree (stage process
# and workers: the maximum over waited-for descendants), fresh for every measurement.
PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def stage(root: Path, name: str, **env: str) -> tuple[float, int]:
    """Run a stage in a child process: (seconds, peak RSS in MB of its largest process)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "stages", "run", name],
                          cwd=root, check=True, env={**venv_env(), **env}, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    return seconds, int(proc.stdout.split()[-1]) // 1024


def set_workers(root: Path, workers: int) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["runtime"]["workers"] = workers
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def executors(work: Path, skip_ray: bool, factors: list[int], repeats: int) -> dict[str, float]:
    out: dict[str, float] = {}
    runs = [("local1", 1, {}), ("local2", 2, {})]
    ray_address = None
    if not skip_ray:
        started = time.perf_counter()
        ray_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        auth = ray_token_env(ray_dir)
        head = subprocess.run(["ray", "start", "--head", "--num-cpus", "2", "--include-dashboard",
                               "false", "--disable-usage-stats", "--temp-dir", str(ray_dir)],
                              env={**venv_env(), **auth}, capture_output=True, text=True,
                              check=True)
        out["ray_start_s"] = time.perf_counter() - started
        said = head.stdout + head.stderr
        ray_address = said.split("ray start --address='")[1].split("'")[0]
        runs.append(("ray2", 2, {"SLM_EXECUTOR": "ray", "RAY_ADDRESS": ray_address, **auth}))
    try:
        for factor in factors:
            # no document cache: every timed run computes every document
            root, _ = synthetic_project(work, f"executors-{factor}x", builtin_texts(), factor,
                                        doc_cache=None)
            for name in ("ingest", "signals", "quality", "filter"):
                stage(root, name)
            out[f"docs_{factor}x"] = sum(1 for _ in read_docs(root / "data/ingest"))
            reference, times = None, {}
            for _ in range(repeats):  # interleaved: the machine's drift hits every executor
                for label, workers, env in runs[1:] if factor != factors[0] else runs:
                    set_workers(root, workers)
                    for name in ("signals", "dedup"):
                        key = f"{name}_{label}_{factor}x_s"
                        times.setdefault(key, []).append(stage(root, name, **env)[0])
                    got = {k: v for d in ("data/signals", "data/dedup")
                           for k, v in file_bytes(root / d).items()}
                    reference = reference or got
                    assert got == reference, f"{label}: outputs differ from {runs[0][0]}"
            out |= {key: statistics.median(ts) for key, ts in times.items()}
            shutil.rmtree(root / "data")
    finally:
        if ray_address:
            stop_ray(ray_dir)  # this cluster only, not every Ray process on the machine
    return out


def read_docs(folder: Path):
    import pyarrow.parquet as pq

    for path in sorted(folder.rglob("*.parquet")):
        yield from range(pq.ParquetFile(path).metadata.num_rows)


def builtin_texts() -> list[str]:
    from stages.ingest.builtin import units

    return [r.text for unit in units(["docstrings", "pydoc_topics"]) for r in unit.read()
            if r.text]


def synthetic_project(work: Path, name: str, texts: list[str], factor: int,
                      **runtime) -> tuple[Path, Path]:
    """A project whose one local source is `factor` copies of the texts, a word changed per copy
    (each copy a different document); returns (project root, corpus folder)."""
    corpus = work / f"{name}-corpus"
    corpus.mkdir(parents=True)
    for copy in range(factor):
        with open(corpus / f"copy-{copy:03d}.jsonl", "w") as fh:
            for i, text in enumerate(texts):
                words = text.split(" ")
                words[i % len(words)] = f"v{copy}"
                fh.write(json.dumps({"text": " ".join(words)}) + "\n")
    root = project(work / name, runtime={"workers": 2, **runtime}, ingest={
        "sources": [{"name": "synthetic", "kind": "local", "paths": [str(corpus)]}],
        "heldout_min_per_domain": 0},
        # quality's classifier trains on a capped labelled sample: this cap binds from 2x on, so
        # what is left to grow is the per-document state (the default, 20,000, binds at ~200k)
        quality={"max_per_class": 1000},
        # no filter rules: the copies would fail the repetition rules, leaving `dedup` ~1% of them
        filter={"apply": {"prose": [], "code": []}})
    return root, corpus


def growth(work: Path, factors: list[int]) -> dict[int, dict]:
    texts = builtin_texts()
    out = {}
    for factor in factors:
        # a spill run of 2 M characters (the 1x corpus is ~3 M): every size spills, so the
        # ceiling is the run, and what grows is the per-document state
        root, corpus = synthetic_project(work, f"growth-{factor}x", texts, factor,
                                         spill_chars=2_000_000)
        docs = len(texts) * factor
        result = {"docs": docs}
        for name in GROWTH_STAGES:
            seconds, peak = stage(root, name)
            result[name] = {"s": round(seconds, 2), "ms_per_doc": round(1000 * seconds / docs, 3),
                            "peak_mb": peak}
        out[factor] = result
        shutil.rmtree(corpus)
        shutil.rmtree(root / "data")
        print(f"{factor}x: {result}", flush=True)
    return out


def refresh(work: Path, factor: int, buckets: int) -> dict[str, float]:
    texts = [" ".join(f"v{c}" if i == c % max(1, t.count(" ") + 1) else w
                      for i, w in enumerate(t.split(" ")))
             for c in range(factor) for t in builtin_texts()]  # `factor` variants of each text
    corpus = work / "refresh-corpus"
    corpus.mkdir()
    per_file = len(texts) // 100

    def write(k: int, chunk: list[str]) -> None:
        with open(corpus / f"part-{k:03d}.jsonl", "w") as fh:
            fh.writelines(json.dumps({"text": t}) + "\n" for t in chunk)

    for k in range(100):
        write(k, texts[k * per_file:(k + 1) * per_file])
    roots = {label: project(work / f"refresh-{label}", runtime={
        "workers": 2, "ingest_cache": caches and f"{caches}/ingest",
        "doc_cache": caches and f"{caches}/docs"}, ingest={
        "sources": [{"name": "files", "kind": "local", "paths": [str(corpus)]}],
        "heldout_min_per_domain": 0, "buckets": buckets})
        for label, caches in (("scratch", None), ("warm", ".cache"))}
    for name in ("ingest", "signals"):  # last week's run: fills the caches
        stage(roots["warm"], name)
    write(100, [t + " (new)" for t in texts[:per_file]])  # 1% new documents
    out, outputs = {}, {}
    for label, root in roots.items():
        times = {name: stage(root, name)[0] for name in ("ingest", "signals")}
        out |= {f"refresh_{label}_{name}_s": t for name, t in times.items()}
        out[f"refresh_{label}_s"] = sum(times.values())
        outputs[label] = {k: v for d in ("data/ingest", "data/signals")
                          for k, v in file_bytes(root / d).items()}
    assert outputs["scratch"] == outputs["warm"], "refresh output differs from a clean run"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--growth", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--executor-scale", type=int, nargs="+", default=[4, 16],
                    help="executors: copies of the built-in prose; two sizes also split Ray's "
                         "cost into per document and per stage")
    ap.add_argument("--repeats", type=int, default=3,
                    help="executors: timed runs of each, interleaved; medians reported")
    ap.add_argument("--skip-executors", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-refresh", action="store_true")
    ap.add_argument("--refresh-scale", type=int, default=16,
                    help="refresh: copies of the built-in prose (at 1x, start-up decides)")
    ap.add_argument("--refresh-buckets", type=int, default=64,
                    help="refresh: ingest.buckets (the 1%% new documents arrive as one new file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ex = {} if args.skip_executors else executors(Path(tmp), args.skip_ray,
                                                      sorted(args.executor_scale), args.repeats)
        grown = growth(Path(tmp), args.growth)
        fresh = {} if args.skip_refresh else refresh(Path(tmp), args.refresh_scale,
                                                     args.refresh_buckets)
    for key, value in ex.items():
        print(f"{key}: {value:.2f}")
    small, big = min(args.executor_scale), max(args.executor_scale)
    for name in ("signals", "dedup") if ex else ():
        one, two = ex[f"{name}_local1_{small}x_s"], ex[f"{name}_local2_{small}x_s"]
        print(f"{name}_scaling_efficiency_2_workers: {one / (2 * two):.2f}")
        if f"{name}_ray2_{small}x_s" not in ex:
            continue
        print(f"{name}_ray_overhead_vs_local2: {ex[f'{name}_ray2_{small}x_s'] / two - 1:+.2f}")
        if big > small:  # seconds per extra document, and what is left: the per-stage cost
            extra = ex[f"docs_{big}x"] - ex[f"docs_{small}x"]
            rate = {label: (ex[f"{name}_{label}_{big}x_s"] - ex[f"{name}_{label}_{small}x_s"])
                    / extra for label in ("local2", "ray2")}
            fixed = {label: ex[f"{name}_{label}_{small}x_s"] - rate[label] * ex[f"docs_{small}x"]
                     for label in rate}
            print(f"{name}_ray_per_document_vs_local2: {rate['ray2'] / rate['local2'] - 1:+.2f}")
            print(f"{name}_ray_fixed_cost_s: {fixed['ray2'] - fixed['local2']:+.2f}")
    if fresh:
        for key, value in fresh.items():
            print(f"{key}: {value:.2f}")
        ratio = fresh["refresh_warm_s"] / fresh["refresh_scratch_s"]
        print(f"refresh_time_vs_scratch: {ratio:.2f}")
    if grown:
        base = grown[min(grown)]
        for factor, r in sorted(grown.items()):
            for name in GROWTH_STAGES:
                print(f"{name}_{factor}x_peak_mb: {r[name]['peak_mb']}")
                print(f"{name}_{factor}x_ms_per_doc: {r[name]['ms_per_doc']}")
                print(f"{name}_{factor}x_memory_vs_1x: "
                      f"{r[name]['peak_mb'] / base[name]['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
