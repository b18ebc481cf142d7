"""evaluate on the tiny profile, from the session's one `dvc repro` of the whole lineage.

Every model of the lineage has a row scored by the one evaluation; a full-precision GGUF in
llama.cpp scores what its transformers model scores; the KV-cache table is ordered by memory;
the report, its charts and the Dagster page carry the same numbers. (That editing the quant
types stales only `gguf` and `evaluate` in both front ends is checked in tests/test_parity.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from assets.stage_assets import result_metadata
from stages.registry import stage

pytestmark = pytest.mark.slow


def _metrics(root: Path) -> dict:
    return json.loads((root / "reports/evaluate/metrics.json").read_text())


def test_every_model_and_file_has_a_row(reproduced_project: Path):
    root = reproduced_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    rows = _metrics(root)["models"]
    fixed = {"phase1", "refined", "adapted", "student", "student_no_kd", "qat_control",
             "qat_control_rtn", "qat"}
    ptq = {f"ptq/{m}/{q}" for m in params["ptq"]["models"] for q in params["ptq"]["methods"]}
    gguf = {f"gguf/{m}/{t}" for m in params["gguf"]["models"]
            for t in [params["gguf"]["outtype"], *params["gguf"]["quant_types"]]}
    assert set(rows) == fixed | ptq | gguf
    for name, row in rows.items():
        for key in ("eval_bpb", "domain_bpb", "reasoning_loss"):
            assert 0 < row[key] < 20, (name, key)
        assert row["bytes"] > 0 and 0 < row["params_active"] <= row["params_total"]
    # a MoE's active parameters are fewer than its total; the dense student's are all of them
    assert rows["phase1"]["params_active"] < rows["phase1"]["params_total"]
    assert rows["student"]["params_active"] == rows["student"]["params_total"]
    assert rows["ptq/student/gptq"]["bytes"] < rows["student"]["bytes"]


def test_gguf_in_llama_cpp_scores_what_transformers_scores(reproduced_project: Path):
    """The same windows through llama.cpp (f32 file, f16 KV cache) and through PyTorch."""
    rows = _metrics(reproduced_project)["models"]
    for gguf, model in (("gguf/student/f32", "student"), ("gguf/adapted/f32", "adapted")):
        for key in ("eval_bpb", "domain_bpb", "reasoning_loss"):
            assert rows[gguf][key] == pytest.approx(rows[model][key], rel=2e-3), (gguf, key)


def test_kv_cache_table_and_speeds(reproduced_project: Path):
    metrics = _metrics(reproduced_project)
    params = yaml.safe_load((reproduced_project / "params.yaml").read_text())["evaluate"]
    assert params["kv_cache_types"] == ["f16", "q8_0", "q4_0"]
    for name, table in metrics["kv_cache"].items():
        memory = [table[t]["kv_bytes"] for t in ("f16", "q8_0", "q4_0")]
        assert memory[0] > memory[1] > memory[2] > 0, name
        assert memory[1] / memory[0] == pytest.approx(34 / 64, rel=0.05)  # q8_0: 34 B per 32
        for kv in ("q8_0", "q4_0"):
            assert 0 < table[kv]["eval_bpb"] < 20
        speed = metrics["speed"][name]
        assert speed["prompt_tokens_per_s"] > 0 and speed["generation_tokens_per_s"] > 0
    assert set(metrics["goals"]) >= {"student/Q8_0_ppl_vs_f32", "adapted/kv_q8_0_memory_ratio"}


def test_report_and_dagster_page(reproduced_project: Path):
    root = reproduced_project
    report = (root / "reports/evaluate/report.md").read_text()
    rows = _metrics(root)["models"]
    for name, row in rows.items():
        assert f"| {name} | {row['stage']} | {row['eval_bpb']:.4f} |" in report
    for chart in ("quality_vs_size", "bpb_by_stage"):
        assert (root / f"reports/evaluate/{chart}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"]({chart}.png)" in report
    assert "## What each stage bought" in report and "**refine**" in report
    scores = json.loads((root / "data/evaluate/scores.json").read_text())
    assert scores["models"] == rows  # the data output holds the metrics' deterministic numbers
    page = result_metadata(stage("evaluate"), root, "md5", executed=True)
    shown = page["report/report"].value
    assert shown.count("](data:image/png;base64,") == 2 and "](quality_vs_size.png)" not in shown


def test_quantized_kv_cache_needs_heads_of_32(monkeypatch, tmp_path: Path):
    """A clear error before any work, not llama.cpp's "Failed to create llama_context"."""
    from stages import llama_cpp
    from stages.evaluate.gguf_eval import check_kv_types

    monkeypatch.setattr(llama_cpp, "metadata", lambda path: {
        "general.architecture": "llama", "llama.embedding_length": "32",
        "llama.attention.head_count": "4"})
    files = {"student/f32": tmp_path / "student-f32.gguf"}
    with pytest.raises(ValueError, match=r"student-f32.gguf: attention heads of 8 dims .*q8_0"):
        check_kv_types(files, ["f16", "q8_0"])
    check_kv_types(files, ["f16", "f32"])  # unquantized caches have no blocks
