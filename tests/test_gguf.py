"""gguf on the tiny profile, from the session's one `dvc repro` of the whole lineage.

Every file (full precision and each llama.cpp quant type) of the dense student and the adapted
MoE loads in llama-cpp-python and generates; the full-precision files compute the transformers
models' logits (the MoE within its window, which its GGUF declares as its context length) and
carry the tokenizer, and the adapted model's its chat template. (That editing the quant types
stales only `gguf` in DVC and Dagster alike is checked in tests/test_parity.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from stages import llama_cpp
from tests.conftest import TINY
from tests.gguf_checks import assert_same_logits

pytestmark = pytest.mark.slow
OUT = "data/gguf"
FILE_TYPES = {"f32": "0", "Q8_0": "7", "Q4_K_M": "15"}  # llama.cpp's general.file_type values


def _params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())["gguf"]


def test_every_file_loads_generates_and_is_its_type(reproduced_project: Path):
    root = reproduced_project
    metrics = json.loads((root / "reports/gguf/metrics.json").read_text())
    params = _params(root)
    types = ["f32", *params["quant_types"]]
    for name in params["models"]:
        rows = metrics[f"{name}_files"]
        assert set(rows) == set(types)
        sizes = [rows[t]["bytes"] for t in types]
        assert sizes == sorted(sizes, reverse=True)  # f32 > Q8_0 > Q4_K_M
        for qtype in types:
            path = root / OUT / name / f"{name}-{qtype}.gguf"
            assert path.stat().st_size == rows[qtype]["bytes"]
            assert rows[qtype]["generated_tokens"] == params["generate_tokens"]
            assert llama_cpp.metadata(path)["general.file_type"] == FILE_TYPES[qtype]
            assert len(llama_cpp.generate(path, [5, 6, 7, 8], 4)) == 4
        # the tiny models' rows (32, 64) are shorter than a K-quant block (256): reported
        assert rows["Q4_K_M"]["fallback_tensors"] > 0 == rows["Q8_0"]["fallback_tensors"]


def test_full_precision_files_compute_the_models_logits(reproduced_project: Path):
    root = reproduced_project
    metrics = json.loads((root / "reports/gguf/metrics.json").read_text())["models"]
    window = TINY["pretrain"]["model"]["sliding_window"]
    text = "def add(a, b):\n    return a + b  # café\nclass Point:\n    x = 1\n" * 8
    for name, src in (("student", "data/distill"), ("adapted", "data/adapt")):
        path = root / OUT / name / f"{name}-f32.gguf"
        ids = AutoTokenizer.from_pretrained(root / src)(text).input_ids
        assert llama_cpp.tokenize(path, text) == ids
        context = int(llama_cpp.metadata(path)[f"{'llama' if name == 'student' else 'qwen2moe'}"
                                               ".context_length"])
        assert context == metrics[name]["context_length"]
        # the student is full attention: checked past the teacher's window; the MoE declares
        # its window as its context and is checked up to it
        n = min(len(ids), context)
        assert (n > 2 * window) if name == "student" else (n == window == context)
        assert_same_logits(root / src, path, ids[:n])
        assert metrics[name]["logits_max_abs_diff"] <= _params(root)["tolerance"]
    template = llama_cpp.metadata(root / OUT / "adapted/adapted-Q4_K_M.gguf")
    assert "tokenizer.chat_template" in template
