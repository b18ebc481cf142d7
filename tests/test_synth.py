"""The synth and mix stages on the tiny profile: outputs with provenance, a LIMO set and a report;
every accepted answer re-verifies by recomputation; the generation cache answers re-runs, mix
changes, a killed run's restart and another machine (through S3) without asking the backend again;
backend failures are retried, counted and fail the stage above the configured share."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestration.dvc_cli import venv_env
from stages import synth
from stages.synth import problems
from stages.synth.problems import Problem
from tests.conftest import TINY, set_params, tiny_project_through
from tests.synth_servers import FlakyServer

pytestmark = pytest.mark.slow
UPSTREAM = ("ingest", "signals", "quality", "filter", "dedup")


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> Path:
    """A tiny-profile project with the curation stages run."""
    return tiny_project_through(tmp_path_factory.mktemp("synth") / "project", UPSTREAM)


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def _metrics(root: Path, name: str) -> dict:
    return json.loads((root / f"reports/{name}/metrics.json").read_text())


def _outputs(root: Path) -> dict[str, bytes]:
    out = root / synth.OUT
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.rglob("*")) if p.is_file()}


def _stage(root: Path, name: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages", "run", name], cwd=root,
                            env={**venv_env(), **(env or {})}, start_new_session=True, **popen)


def _run(root: Path, name: str, env: dict | None = None, ok: bool = True) -> dict | str:
    """Run a stage to the end: its metrics, or (ok=False) its failure output."""
    proc = _stage(root, name, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate()
    assert (proc.returncode == 0) == ok, out
    return _metrics(root, name) if ok else out


@pytest.fixture(scope="module")
def synthesized(curated: Path, tmp_path_factory) -> Path:
    root = _copy(curated, tmp_path_factory.mktemp("synthesized") / "project")
    _run(root, "synth")
    _run(root, "mix")
    return root


def test_outputs_carry_provenance_limo_and_report(synthesized: Path):
    m = _metrics(synthesized, "synth")
    assert m["backend"] == "templates" and m["model"].startswith("templates:")
    assert m["jobs"] == m["generated"] + m["failed"] and m["failed"] == 0
    assert m["generated"] == m["accepted"] + m["rejected"] and m["accepted"] > 0
    assert m["backend_calls"] == m["jobs"] and m["cache_hits"] == 0
    assert sum(m["rejected_by_reason"].values()) == m["rejected"]
    families = {t.split("/")[0] for t in m["accepted_by_template"]}
    assert {"arithmetic", "word_problem", "unit_conversion", "list_puzzle"} <= families

    curated_schema = pq.read_schema(next((synthesized / "data/dedup/corpus").glob("*.parquet")))
    table = pq.read_table(synthesized / synth.GENERATED / "part-00000.parquet")
    assert table.schema.names == curated_schema.names + list(synth.PROVENANCE)
    rows = table.to_pylist()
    assert len(rows) == m["accepted"] and len({r["doc_id"] for r in rows}) == len(rows)
    assert all(r["origin"] == "synthetic" and r["backend"] == "templates"
               and r["model"] == m["model"] and r["template"] for r in rows)
    assert all(r["seed_doc_id"] for r in rows if r["template"] in ("qa", "explain_code"))

    limo = [json.loads(line) for line in
            (synthesized / synth.LIMO / "train.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in
            (synthesized / synth.LIMO / "eval.jsonl").read_text().splitlines()]
    assert limo and len(limo) + len(held) == m["limo_train"] + m["limo_eval"]
    assert all(r["difficulty"] >= 3 and r["prompt"] and r["response"].rstrip().endswith(
        f"Answer: {r['answer']}") for r in limo + held)
    assert len({r["id"] for r in limo + held}) == len(limo) + len(held)  # one per problem

    report = json.loads((synthesized / synth.REPORT).read_text())
    assert set(report["rejected_by_reason"]) == set(m["rejected_by_reason"])
    assert all(report["samples_rejected"][r] for r in m["rejected_by_reason"])
    assert report["limo"]["selected"] == len(limo) + len(held)

    mix = _metrics(synthesized, "mix")
    assert mix["synthetic_docs"] > 0 and mix["curated_docs"] > 0
    assert (abs(mix["synthetic_fraction"] - mix["synthetic_fraction_target"]) <= 0.02
            or mix["synthetic_docs"] == mix["synthetic_available_docs"])
    mixed = [r for p in sorted((synthesized / "data/mix/corpus").glob("part-*.parquet"))
             for r in pq.read_table(p).to_pylist()]
    assert sum(r["origin"] == "synthetic" for r in mixed) == mix["synthetic_docs"]
    assert all(r["backend"] is None for r in mixed if r["origin"] == "curated")


def test_every_accepted_answer_reverifies(synthesized: Path):
    texts = {r["doc_id"]: r["text"] for r in
             pq.read_table(synthesized / synth.GENERATED / "part-00000.parquet").to_pylist()}
    items = [json.loads(line) for line in
             (synthesized / synth.PROBLEMS).read_text().splitlines()]
    assert {i["problem"]["task"] for i in items} >= {"arithmetic", "code_trace"}
    for item in items:
        problem = Problem.from_json(item["problem"])
        text = texts[item["doc_id"]]
        assert problems.verify(problem, text), (item["template"], text)  # recomputed from spec
        wrong = text.rstrip().rsplit("Answer:", 1)[0] + "Answer: 123456789"
        assert not problems.verify(problem, wrong)


def test_rerun_and_mix_change_make_no_backend_calls(synthesized: Path, tmp_path: Path):
    root = _copy(synthesized, tmp_path / "project")
    before = _outputs(root)
    m = _run(root, "synth")
    assert m["backend_calls"] == 0 and m["sandbox_runs"] == 0 and m["cache_hits"] == m["jobs"]
    assert _outputs(root) == before  # byte-identical from the cache

    set_params(root, mix={"synthetic_fraction": 0.4}, synth={"qc": {"min_chars": 60}})
    m = _run(root, "synth")  # a QC change re-runs synth, answered from the cache
    assert m["backend_calls"] == 0 and m["sandbox_runs"] == 0
    mix = _run(root, "mix")
    assert mix["synthetic_fraction_target"] == 0.4


def test_cache_shared_through_s3(curated: Path, tmp_path: Path, s3_server, s3_bucket):
    url = f"s3://{s3_bucket('synth-cache')}/team"
    first = _copy(curated, tmp_path / "a")
    second = _copy(curated, tmp_path / "b")
    for root in (first, second):
        set_params(root, runtime={"synth_cache_url": url, "s3_endpoint_url": s3_server})
    m = _run(first, "synth")
    assert m["backend_calls"] == m["jobs"] and m["cache_uploads"] >= m["jobs"]
    m2 = _run(second, "synth")  # another machine: empty local cache, same remote
    assert m2["backend_calls"] == 0 and m2["sandbox_runs"] == 0
    assert m2["cache_downloads"] == m["cache_uploads"]
    assert _outputs(second) == _outputs(first)


def _use_http(root: Path, url: str, **synth) -> None:
    set_params(root, synth={
        "backend": "http", "endpoint": {"base_url": url, "model": "stub-model"},
        "client": {"concurrency": 2, "attempts": 3, "backoff_s": 0.01, "timeout_s": 10,
                   **synth.pop("client", {})},
        **synth})


def _cached_generations(root: Path) -> int:
    entries = (json.loads(p.read_text()) for p in (root / ".cache/synth").rglob("*.json"))
    return sum("text" in e for e in entries)


def test_killed_generation_resumes_with_only_the_missing_calls(curated: Path, tmp_path: Path):
    with FlakyServer(delay_s=0.05) as server:
        whole = _copy(curated, tmp_path / "whole")
        _use_http(whole, server.base_url)
        jobs = _run(whole, "synth")["jobs"]
        assert sum(server.attempts.values()) == jobs

        root = _copy(curated, tmp_path / "killed")
        _use_http(root, server.base_url)
        proc = _stage(root, "synth", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while sum(server.attempts.values()) < jobs + jobs // 3:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (root / synth.OUT).exists()
        cached, asked = _cached_generations(root), sum(server.attempts.values())
        assert 0 < cached < jobs

        m = _run(root, "synth")
        assert m["backend_calls"] == jobs - cached == sum(server.attempts.values()) - asked
        assert _outputs(root) == _outputs(whole)  # as if it had never been killed


def test_backend_failures_retried_counted_and_bounded(curated: Path, tmp_path: Path):
    root = _copy(curated, tmp_path / "project")
    key = "sk-test-do-not-log-0123456789"
    with FlakyServer() as server:
        _use_http(root, server.base_url, problem_prompt="malformed:1:{question}",
                  prompts={"qa": {"text": "500:always:{document}"}}, max_failed_fraction=0.5,
                  client={"api_key_env": "SYNTH_TEST_KEY"})
        env = {"SYNTH_TEST_KEY": key}
        proc = _stage(root, "synth", env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                      text=True)
        log, _ = proc.communicate()
        assert proc.returncode == 0, log
        m = _metrics(root, "synth")
        report = json.loads((root / synth.REPORT).read_text())
        n_problems = sum(TINY["synth"]["problems"].values())
        n_qa = report["jobs_by_template"]["qa"]  # one per prose seed document
        assert n_qa > 0
        # every problem prompt is malformed once; every qa prompt fails its 3 tries
        assert m["retries_by_reason"] == {"malformed_json": n_problems, "http_500": 2 * n_qa}
        assert m["failed_by_reason"] == {"http_500": n_qa} and m["failed"] == n_qa
        assert m["jobs"] == m["generated"] + m["failed"]
        assert len(report["failed_jobs"]) == n_qa
        assert all(j.startswith("qa/") for j in report["failed_jobs"])
        assert set(server.auth) == {f"Bearer {key}"}
        written = [log, *(p.read_text() for p in (root / "reports").rglob("*.json")),
                   *(p.read_text() for p in (root / ".cache").rglob("*.json")),
                   *(p.read_text() for p in (root / "data/synth").rglob("*.json*"))]
        assert not any(key in text for text in written)

        set_params(root, synth={"max_failed_fraction": 0.0})
        asked = sum(server.attempts.values())
        out = _run(root, "synth", env, ok=False)
        assert "max_failed_fraction" in out and key not in out
        assert sum(server.attempts.values()) - asked == 3 * n_qa  # only the failed ones, 3 tries


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory) -> Path:
    from tests.synth_servers import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("generator") / "tiny")


def _model_project(curated: Path, generator: Path, dest: Path, backend: str, **synth) -> Path:
    from stages import llama_cpp

    root = _copy(curated, dest)
    if backend == "hf":
        model = "models/generator/tiny"
        shutil.copytree(generator, root / model)
    else:
        model = "models/generator/tiny.gguf"
        llama_cpp.convert(generator, root / model, "f32")
    set_params(root, synth={
        "backend": backend, "model": model, "sampling": {"max_new_tokens": 8},
        "problems": {"arithmetic": 3, "word_problem": 0, "unit_conversion": 0, "list_puzzle": 0,
                     "code_trace": 0},
        "seeds": {"per_domain": {"prose": 2, "code": 1}, "max_chars": 200}, **synth})
    return root


@pytest.mark.parametrize("backend", ["hf", "gguf"])
def test_model_backend_runs_the_stage_from_models_generator(curated: Path, tiny_generator: Path,
                                                            tmp_path: Path, backend: str):
    root = _model_project(curated, tiny_generator, tmp_path / "project", backend)
    m = _run(root, "synth")
    assert m["backend"] == backend and m["model"].startswith(f"{backend}:")
    assert m["backend_calls"] == m["jobs"] == m["generated"] > 3  # problems and documents
    assert 0 < m["tokens_generated"] <= 8 * m["jobs"]
    report = json.loads((root / synth.REPORT).read_text())
    assert "textbook" in report["jobs_by_template"]  # a model takes every prompt template
    before = _outputs(root)
    assert _run(root, "synth")["backend_calls"] == 0
    assert _outputs(root) == before

    # chunks of two requests on 1 and on 2 local worker processes: the same generations
    outputs = {}
    for workers in (1, 2):
        copy = _model_project(curated, tiny_generator, tmp_path / f"workers-{workers}", backend,
                              client={"chunk": 2})
        set_params(copy, runtime={"workers": workers})
        assert _run(copy, "synth")["backend_calls"] == m["jobs"]
        outputs[workers] = _outputs(copy)
    assert outputs[1] == outputs[2]
