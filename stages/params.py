"""Loading and validating `params.yaml` before any stage work starts.

Each stage module defines a pydantic `Params` model for its own section; `base`, `runtime` and
`orchestration` are shared. Unknown keys anywhere are errors. `runtime` and `orchestration` hold
knobs that no stage declares, so changing them never makes a stage stale.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML, YAMLError

PARAMS_FILE = "params.yaml"


class StrictModel(BaseModel):
    """A params model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(StrictModel):
    seed: int = 0


class Runtime(StrictModel):
    """Execution knobs: how, not what. No stage declares these, so they never affect identity."""

    workers: int = Field(
        0, ge=0, description="worker processes for shard-parallel work; 0 = all cores"
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="where data-parallel work runs (stages/executor.py); $SLM_EXECUTOR "
        "overrides")
    ray_address: str | None = Field(
        None, description="a running Ray cluster (`host:port`, `auto`); None: RAY_ADDRESS, else a "
        "local Ray started for the stage")
    ray_task_retries: int = Field(3, ge=0, description="re-runs of a task whose worker died")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    progress: bool = True
    train_processes: int = Field(
        1, ge=1, description="training processes (accelerate launch: gloo on CPU, one per GPU)"
    )
    accelerate_config: str | None = Field(
        None, description="an `accelerate config` YAML (FSDP, multi-node) for training launches"
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint for s3:// sources (else AWS_ENDPOINT_URL or AWS)"
    )
    ingest_cache: str | None = Field(
        ".cache/ingest", description="parsed records of source files / S3 objects, so a refresh "
        "re-reads only new or changed ones (relative to the project); None: read everything")
    doc_cache: str | None = Field(
        ".cache/docs", description="per-document signals of texts seen before (relative to the "
        "project), so a refresh computes only new or changed documents; None: compute all")
    spill_chars: int = Field(
        64_000_000, ge=1, description="text `ingest` holds in memory before writing a sorted "
        "spill run: its memory ceiling (the output is the same whatever it is)")
    synth_cache: str = Field(
        ".cache/synth", description="the generation cache directory (relative to the project)"
    )
    synth_cache_url: str | None = Field(
        None, description="s3://bucket/prefix sharing the generation cache between machines"
    )


class Orchestration(StrictModel):
    executor: Literal["multiprocess", "k8s"] = Field(
        "multiprocess", description="Dagster's step executor: steps as local processes, or as "
        "Kubernetes Jobs (dagster-k8s); $SLM_DAGSTER_EXECUTOR overrides")
    refresh_cron: str = "0 3 * * 0"  # weekly, Sunday 03:00
    refresh_timezone: str = "UTC"
    crash_retries: int = Field(
        2,
        ge=0,
        description="Dagster retries of a stage whose process or training worker was killed by a "
        "signal (OOM killer, SIGSEGV, preemption); errors are never retried",
    )
    crash_retry_wait_s: float = Field(
        5.0, ge=0, description="seconds Dagster waits before retrying a crashed stage"
    )


SHARED_SECTIONS: dict[str, type[StrictModel]] = {
    "base": Base,
    "runtime": Runtime,
    "orchestration": Orchestration,
}


class ParamsError(ValueError):
    """params.yaml is missing, malformed or fails validation."""


def load_yaml(text: str) -> Any:
    """Parse YAML 1.2 as DVC does (ruamel, libyaml's C parser via ruamel.yaml.clib: ~6x the
    pure-Python parser on dvc.lock), so `1e-08` is a float in params.yaml and dvc.lock alike
    (PyYAML's YAML 1.1 reads it as a string)."""
    return YAML(typ="safe").load(text)


class ParsedOnce:
    """A file's parse kept per path and reused while the file's bytes are the same (reading is
    ~1% of parsing): the orchestrator fingerprints every asset of a run against params.yaml and
    dvc.lock. Shared results: callers copy what they change."""

    def __init__(self, parse: Callable[[Path, bytes], Any]):
        self._parse = parse
        self._seen: dict[Path, tuple[bytes, Any]] = {}

    def __call__(self, path: Path, text: bytes) -> Any:
        cached = self._seen.get(path)
        if cached is None or cached[0] != text:
            cached = self._seen[path] = (text, self._parse(path, text))
        return cached[1]


def _parse_params(path: Path, text: bytes) -> dict[str, Any]:
    try:
        data = load_yaml(text.decode("utf-8")) or {}
    except YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return data


_params_file = ParsedOnce(_parse_params)


def read_params(root: Path) -> dict[str, Any]:
    """params.yaml as a dict (a fresh copy of its parse, made once per content of the file)."""
    path = root / PARAMS_FILE
    if not path.exists():
        raise ParamsError(f"{path}: not found; every project needs a params.yaml at its root")
    return copy.deepcopy(_params_file(path, path.read_bytes()))


def section_model(section: str) -> type[StrictModel]:
    from stages.registry import stage

    if section in SHARED_SECTIONS:
        return SHARED_SECTIONS[section]
    module = importlib.import_module(stage(section).module_name)
    return module.Params


def _format(section: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (section, *err["loc"]))
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def validate(raw: dict[str, Any]) -> dict[str, StrictModel]:
    """Validate every section; raise one ParamsError listing all problems."""
    from stages.registry import STAGES

    known = list(SHARED_SECTIONS) + [s.name for s in STAGES]
    problems = [
        f"  {key}: unknown section (known: {', '.join(known)})" for key in raw if key not in known
    ]
    models: dict[str, StrictModel] = {}
    for section in known:
        try:
            models[section] = section_model(section).model_validate(raw.get(section) or {})
        except ValidationError as exc:
            problems.append(_format(section, exc))
    if problems:
        raise ParamsError(
            f"{PARAMS_FILE} is invalid; fix these keys before running:\n" + "\n".join(problems)
        )
    return models


def load(root: Path) -> dict[str, StrictModel]:
    return validate(read_params(root))


def lookup(raw: dict[str, Any], dotted: str) -> Any:
    """The value of a dotted params key, as DVC records it in dvc.lock."""
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"{PARAMS_FILE}: declared key {dotted!r} is missing")
        node = node[part]
    return node
