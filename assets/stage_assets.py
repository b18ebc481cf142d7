"""The asset factory: one Dagster asset per registry stage.

An asset's code version is the hash of its command, code files and declared param values; its
data version is the md5 DVC records for the stage output in `dvc.lock`. Materializing runs the
stage only when `dvc.lock` does not already match (or a refresh forces it), then `dvc commit`s the
stage so that a following `dvc repro` has nothing to do.

Crash retries (every stage, not only the `gpu` pool's: a killed worker is never a code bug): when a
signal kills the stage's process or one of its training workers (`StageCrashed`), the asset raises
Dagster's `RetryRequested` with `orchestration.crash_retries` / `crash_retry_wait_s`, and the
retry logs which signal it was; pretrain resumes from its last checkpoint. Any other failure
(exception, invalid params) fails the step at once and is never retried.
"""

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AutomationCondition,
    Config,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    RetryRequested,
    asset,
    multi_asset_check,
)

from assets.stage_runner import StageCrashed, run_streamed
from orchestration import ledger
from orchestration.dvc_cli import commit
from stages import params as params_mod
from stages.registry import STAGES, MetricCheck, Stage, upstream

GPU_POOL = "gpu"
# What a GPU stage's pod asks Kubernetes for under the k8s step executor (ignored elsewhere).
GPU_POD = {"dagster-k8s/config": {"container_config": {"resources": {
    "limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "4", "memory": "32Gi"}}}}}
SYNC_CHECK = "in_sync_with_dvc_lock"


class StageRunConfig(Config):
    """Run-time choices for a stage materialization."""

    force: bool = False  # run even when dvc.lock is current (the corpus refresh uses this)


def propagation_condition() -> AutomationCondition:
    """DVC-like propagation: run when an input's *data version* or the own code version changed.

    A new materialization that reproduces the same bytes (same data version) triggers nothing.
    """
    changed = AutomationCondition.code_version_changed() | AutomationCondition.any_deps_match(
        AutomationCondition.data_version_changed()
    )
    return (
        changed.since_last_handled()
        & ~AutomationCondition.in_progress()
        & ~AutomationCondition.any_deps_in_progress()
    ).with_label("inputs' data or own code changed")


def _out_stats(path: Path) -> tuple[int, int]:
    if path.is_file():
        return path.stat().st_size, 1
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def _metrics(stage: Stage, root: Path) -> dict[str, Any]:
    """Numbers and labels from the stage's metrics files, for materialization metadata: the top
    level, one level of nested tables (`metric/rejected_by_reason.empty`), and tables of rows
    (`{row: {column: value}}`, e.g. a quantization stage's per-method scores) as markdown."""
    out: dict[str, Any] = {}
    for rel in stage.metrics:
        path = root / rel
        if path.exists():
            for key, value in json.loads(path.read_text()).items():
                if _scalar(value):
                    out[f"metric/{key}"] = value
                elif isinstance(value, dict) and value and all(
                        isinstance(v, dict) for v in value.values()):
                    out[f"metric/{key}"] = MetadataValue.md(_markdown_table(value))
                elif isinstance(value, dict):
                    out.update({f"metric/{key}.{k}": v for k, v in value.items() if _scalar(v)})
    return out


def _markdown_table(rows: dict[str, dict]) -> str:
    """`{row: {column: value}}` as a markdown table of its scalar columns (floats: 5 digits)."""
    columns = list(dict.fromkeys(c for r in rows.values() for c, v in r.items() if _scalar(v)))

    def cell(v: Any) -> str:
        return f"{v:.5g}" if isinstance(v, float) else "" if v is None else str(v)

    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(r.get(c)) for c in columns) + " |"
              for name, r in rows.items()]
    return "\n".join(lines)


def _png_markdown(name: str, path: Path) -> str:
    """A markdown image with the PNG inline (a data URI), so the Dagster UI shows the plot."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"![{name}](data:image/png;base64,{data})"


def _existing(stage: Stage, root: Path, paths: tuple[str, ...]):
    """(relative path, path, name) of the files that exist; the name is the path under
    `reports/<stage>/` without suffix (`loss`, `control/loss`)."""
    for rel in paths:
        if (root / rel).exists():
            yield rel, root / rel, Path(rel).with_suffix("").as_posix().removeprefix(
                f"reports/{stage.name}/")


def _plot_metadata(stage: Stage, root: Path) -> dict[str, Any]:
    """PNG plots inline (`plot/<name>`) and by path (`plot_path/<name>`); data plots by path."""
    out: dict[str, Any] = {}
    for rel, path, stem in _existing(stage, root, stage.plots):
        if path.suffix.lower() == ".png":
            out[f"plot/{stem}"] = MetadataValue.md(_png_markdown(stem, path))
        out[f"plot_path/{stem}"] = MetadataValue.path(rel)
    return out


def _document_metadata(stage: Stage, root: Path) -> dict[str, Any]:
    """Markdown reports (`report/<name>`) with the PNGs they link to inline, and by path."""
    out: dict[str, Any] = {}
    for rel, path, stem in _existing(stage, root, stage.documents):

        def inline(m: re.Match, folder: Path = path.parent) -> str:
            image = folder / m.group(2)
            return _png_markdown(m.group(1), image) if image.is_file() else m.group(0)

        text = re.sub(r"!\[([^\]]*)\]\(([^):]+\.png)\)", inline, path.read_text())
        out[f"report/{stem}"] = MetadataValue.md(text)
        out[f"report_path/{stem}"] = MetadataValue.path(rel)
    return out


def _run_or_retry(
    context: AssetExecutionContext, stage: Stage, root: Path, orch: params_mod.Orchestration
) -> float:
    """Run the stage; on a crash ask Dagster for a retry (up to `orch.crash_retries`)."""
    try:
        return run_streamed(stage.cmd, root, context.log)
    except StageCrashed as crash:
        retries, wait = orch.crash_retries, orch.crash_retry_wait_s
        if retries == 0:
            raise
        attempt = context.retry_number  # 0 on the first attempt
        if attempt < retries:
            resume = " (resumes from its last checkpoint)" if stage.persist else ""
            context.log.warning(
                f"{stage.name} crashed: {crash.cause}; retry {attempt + 1} of {retries} "
                f"in {wait:g}s{resume}"
            )
        else:
            context.log.error(f"{stage.name} crashed: {crash.cause}; no retries left ({retries})")
        raise RetryRequested(max_retries=retries, seconds_to_wait=wait) from crash


def materialize_stage(
    context: AssetExecutionContext,
    stage: Stage,
    root: Path,
    force: bool,
    orch: params_mod.Orchestration | None = None,
) -> MaterializeResult:
    started = time.monotonic()
    fp = ledger.fingerprint(stage, root)
    executed = force or not fp.current
    stage_seconds = 0.0
    if executed:
        reasons = fp.reasons or ("refresh requested (force=True)",)
        for reason in reasons:
            context.log.info(f"{stage.name} runs because: {reason}")
        stage_seconds = _run_or_retry(context, stage, root, orch or params_mod.Orchestration())
        commit(root, stage.name)
        fp = ledger.fingerprint(stage, root)
        if not fp.current:
            raise RuntimeError(f"{stage.name}: dvc.lock does not match after commit: {fp.reasons}")
    else:
        context.log.info(f"{stage.name}: dvc.lock matches code, params and inputs; not re-run")
    metadata = result_metadata(stage, root, fp.data_version, executed)
    metadata["stage_seconds"] = round(stage_seconds, 3)
    metadata["orchestration_seconds"] = round(time.monotonic() - started - stage_seconds, 3)
    return MaterializeResult(data_version=DataVersion(fp.data_version), metadata=metadata)


def result_metadata(stage: Stage, root: Path, data_version: str, executed: bool) -> dict[str, Any]:
    """What a stage's result shows in Dagster, whichever front end ran it (`sync` records the
    same for `dvc repro`'s runs): output size and files, DVC md5, metrics, plots and reports
    inline."""
    size, nfiles = _out_stats(root / stage.out)
    return {
        "executed": executed,
        "out": MetadataValue.path(stage.out),
        "out_bytes": size,
        "out_files": nfiles,
        "dvc_md5": data_version,
        "cmd": stage.cmd,
        **_metrics(stage, root),
        **_plot_metadata(stage, root),
        **_document_metadata(stage, root),
    }


def build_stage_asset(stage: Stage, root: Path, raw_params: dict[str, Any]):
    orch = params_mod.Orchestration.model_validate(raw_params.get("orchestration") or {})

    @asset(
        name=stage.name,
        deps=[AssetKey(name) for name in upstream(stage)],
        description=stage.description,
        code_version=ledger.code_version(stage, root, raw_params),
        group_name="pipeline",
        kinds={"python", "dvc"},
        pool=GPU_POOL if stage.gpu else None,
        op_tags=GPU_POD if stage.gpu else None,
        automation_condition=propagation_condition(),
        metadata={"cmd": stage.cmd, "out": stage.out, "params": ", ".join(stage.params)},
    )
    def _stage_asset(context: AssetExecutionContext, config: StageRunConfig) -> MaterializeResult:
        return materialize_stage(context, stage, root, config.force, orch)

    return _stage_asset


def _sync_result(stage: Stage, root: Path, lock, raw) -> AssetCheckResult:
    fp = ledger.fingerprint(stage, root, lock, raw)
    why = "\n".join(f"- {r}" for r in fp.reasons) or "up to date"
    return AssetCheckResult(
        asset_key=stage.name,
        check_name=SYNC_CHECK,
        passed=fp.current,
        metadata={"why_stale": MetadataValue.md(why)},
    )


def _metric_result(stage: Stage, check: MetricCheck, root: Path) -> AssetCheckResult:
    path = root / stage.metrics[0]
    if not path.exists():
        return AssetCheckResult(
            asset_key=stage.name,
            check_name=check.name,
            passed=False,
            metadata={"error": f"{stage.metrics[0]} not found; materialize {stage.name} first"},
        )
    metrics = json.loads(path.read_text())
    return AssetCheckResult(
        asset_key=stage.name,
        check_name=check.name,
        passed=bool(check.test(metrics)),
        severity=AssetCheckSeverity.WARN if check.goal else AssetCheckSeverity.ERROR,
        metadata={"metrics": MetadataValue.path(stage.metrics[0])},
    )


def check_result(stage: Stage, name: str, root: Path, lock, raw) -> AssetCheckResult:
    """The asset check `name` of `stage` (what the UI runs and what `sync` records)."""
    if name == SYNC_CHECK:
        return _sync_result(stage, root, lock, raw)
    return _metric_result(stage, next(c for c in stage.checks if c.name == name), root)


def check_names(stage: Stage) -> list[str]:
    return [SYNC_CHECK, *(c.name for c in stage.checks)]


def build_checks(root: Path):
    """Per asset: is dvc.lock in sync (and if not, why), plus the stage's declared metric checks."""
    specs = [
        AssetCheckSpec(
            SYNC_CHECK,
            asset=s.name,
            description="dvc.lock matches the current code, params and inputs; "
            "otherwise the metadata lists what changed",
        )
        for s in STAGES
    ] + [
        AssetCheckSpec(c.name, asset=s.name, description=c.description)
        for s in STAGES
        for c in s.checks
    ]

    @multi_asset_check(specs=specs, can_subset=True, name="stage_checks")
    def stage_checks(context: AssetCheckExecutionContext):
        lock = ledger.read_lock(root)
        raw = params_mod.read_params(root)
        by_name = {s.name: s for s in STAGES}
        for key in context.selected_asset_check_keys:
            yield check_result(by_name[key.asset_key.to_user_string()], key.name, root, lock, raw)

    return stage_checks


def build_stage_assets(root: Path) -> list:
    raw = params_mod.read_params(root)
    return [build_stage_asset(s, root, raw) for s in STAGES]
