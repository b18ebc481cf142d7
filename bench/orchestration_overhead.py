"""Orchestration overhead: a no-op `dvc repro` over the whole pipeline, and Dagster's overhead per
asset (materialization time minus the stage's own time), measured on a temp copy of the project
with the tiny profile; side by side, the per-asset commit through DVC's own `Repo.commit` (which
rewrites dvc.lock with round-trip YAML) and through `orchestration.dvc_cli.commit`. Prints
`name: value` lines last.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dagster import RunConfig, materialize  # noqa: E402

from assets.stage_assets import StageRunConfig  # noqa: E402
from orchestration.definitions import build_definitions  # noqa: E402
from orchestration.dvc_cli import commit  # noqa: E402
from stages.registry import STAGES  # noqa: E402
from tests.conftest import TINY, copy_project, set_params, sh, temp_instance  # noqa: E402


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def commit_times(root: Path) -> tuple[float, float]:
    """Median seconds of `dvc commit --force` of each stage: DVC's `Repo.commit`, then ours."""
    import contextlib

    from dvc.repo import Repo

    def dvc_api(name: str) -> None:
        with contextlib.chdir(root), Repo(str(root)) as repo:
            repo.commit(name, force=True)

    names = [s.name for s in STAGES]
    return (statistics.median(timed(lambda n=n: dvc_api(n), repeats=1) for n in names),
            statistics.median(timed(lambda n=n: commit(root, n), repeats=1) for n in names))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_project(Path(tmp) / "project")
        set_params(root, **TINY)
        sh("git", "init", "-q", cwd=root)
        sh("dvc", "repro", cwd=root)
        noop_repro = timed(lambda: sh("dvc", "repro", cwd=root))
        noop_status = timed(lambda: sh("dvc", "status", cwd=root))
        commit_dvc, commit_ours = commit_times(root)

        instance = temp_instance(Path(tmp) / "dagster_home")
        assets = list(build_definitions(root).assets)
        n = len(assets)
        force = RunConfig(ops={s.name: StageRunConfig(force=True) for s in STAGES})

        t0 = time.perf_counter()
        result = materialize(assets, instance=instance, run_config=force)
        forced_wall = time.perf_counter() - t0
        stage_time = sum(
            ev.materialization.metadata["stage_seconds"].value
            for ev in result.get_asset_materialization_events()
        )
        cached = timed(lambda: materialize(assets, instance=instance), repeats=2)

    print(f"stages: {n}")
    print(f"noop_dvc_repro_s: {noop_repro:.2f}")
    print(f"noop_dvc_status_s: {noop_status:.2f}")
    print(f"commit_dvc_repo_api_s: {commit_dvc:.3f}")
    print(f"commit_orchestration_s: {commit_ours:.3f}")
    print(f"commit_speedup: {commit_dvc / commit_ours:.1f}")
    print(f"dagster_forced_run_s: {forced_wall:.2f}")
    print(f"dagster_stage_time_s: {stage_time:.2f}")
    print(f"dagster_overhead_per_asset_s: {(forced_wall - stage_time) / n:.2f}")
    print(f"dagster_cache_hit_per_asset_s: {cached / n:.2f}")


if __name__ == "__main__":
    main()
