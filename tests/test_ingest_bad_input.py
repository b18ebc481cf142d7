"""Ingest on bad input: every skipped record is counted under its reason, and missing inputs
fail with a clear error before anything is read or written."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.ingest import sources
from stages.runner import StageInputError
from tests.test_ingest import ingest_only, local, manifest, run_ingest, table  # noqa: F401

JSONL = [
    b'{"text": "ok one"}',  # kept
    b'{"text": "broken',  # malformed_json
    b'{"body": "no text field"}',  # missing_text_field
    b'{"text": 42}',  # missing_text_field
    b'{"text": "   "}',  # empty
    b"",  # a blank line is not a record
    b"[1, 2]",  # missing_text_field
    b'{"text": "caf\xe9"}',  # undecodable
    b'{"text": "nul \\u0000 inside"}',  # binary
    b'{"text": "ok two"}',  # kept
]
EXPECTED_SKIPS = {
    "unsupported_format": 2,
    "corrupt": 2,
    "binary": 4,
    "undecodable": 2,
    "malformed_json": 1,
    "missing_text_field": 6,
    "empty": 3,
    "capped": 0,
}


def write_bad(d):
    d.mkdir()
    (d / "good.txt").write_text("a perfectly fine document")
    (d / "huge.txt").write_text("x" * 5000)  # truncated at max_doc_chars, kept
    (d / "latin1.txt").write_bytes("café au lait".encode("latin-1"))  # undecodable
    (d / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")  # binary (NUL)
    (d / "ctrl.txt").write_bytes(b"\x01\x02\x03\x04 ab" * 50)  # binary (control characters)
    (d / "blank.txt").write_text("  \n\t\n")  # empty
    (d / "void.md").write_text("")  # empty
    (d / "records.jsonl").write_bytes(b"\n".join(JSONL) + b"\n")
    (d / "bin.jsonl").write_bytes(b'{"text": "a"}\n\x00\x01\x02')  # binary
    (d / "notes.docx").write_bytes(b"PK\x03\x04")  # unsupported_format
    (d / "table.csv").write_text("a,b\n1,2\n")  # unsupported_format
    (d / "broken.txt.gz").write_bytes(b"not gzip at all")  # corrupt
    (d / "bad.parquet").write_bytes(b"PAR1 garbage")  # corrupt
    pq.write_table(pa.table({"text": ["kept row", None]}), d / "nulls.parquet")  # 1 kept, 1 missing
    pq.write_table(pa.table({"body": ["x", "y"]}), d / "notext.parquet")  # 2 missing_text_field


def test_every_skip_is_counted(tmp_path, capsys):
    write_bad(tmp_path / "bad")
    m = run_ingest(
        tmp_path / "root",
        {
            "sources": [local("bad", str(tmp_path / "bad"))],
            "max_doc_chars": 1000,
            "heldout_fraction": 0.4,
        },
    )
    root = tmp_path / "root"
    assert m["skipped"] == EXPECTED_SKIPS
    assert m["kept"] == 5 and m["truncated"] == 1
    assert m["read"] == 25 == m["kept"] + sum(m["skipped"].values())
    assert m["sources"]["bad"]["skipped"] == {r: n for r, n in EXPECTED_SKIPS.items() if n}
    corpus, heldout = table(root), table(root, "heldout")
    assert corpus.num_rows + heldout.num_rows == m["kept"]
    assert m["corpus"]["docs"] == corpus.num_rows and heldout.num_rows > 0
    texts = dict(
        zip(
            corpus["path"].to_pylist() + heldout["path"].to_pylist(),
            corpus["text"].to_pylist() + heldout["text"].to_pylist(),
            strict=True,
        )
    )
    assert texts["huge.txt"] == "x" * 1000
    assert texts["nulls.parquet"] == "kept row"
    for split in ("corpus", "heldout"):
        man = manifest(root, split)
        assert man["ingest"] == {k: m[k] for k in ("read", "kept", "truncated", "skipped")}
        assert man["docs"] == m[split]["docs"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "source bad:" in warnings[0] and "undecodable=2" in warnings[0]


def _missing_cases(tmp):
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    (tmp / "a/same.txt").write_text("one")
    (tmp / "b/same.txt").write_text("two")
    (tmp / "dd").mkdir()
    (tmp / "dd/dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    return {
        "missing file": (local("lost", "nowhere/file.txt"), ["'lost'", "nowhere/file.txt"]),
        "empty glob": (local("glob", "good/*.nothing"), ["'glob'", "matches no files"]),
        "collision": (
            local("twins", str(tmp / "a/same.txt"), str(tmp / "b/same.txt")),
            ["'twins'", "both map to 'same.txt'"],
        ),
        "missing hf dir": (
            {"name": "hub", "kind": "hf", "path": str(tmp / "absent")},
            ["'hub'", "does not exist"],
        ),
        "broken hf dir": (
            {"name": "dd", "kind": "hf", "path": str(tmp / "dd")},
            ["'dd'", "cannot load"],
        ),
    }


@pytest.mark.parametrize(
    "case", ["missing file", "empty glob", "collision", "missing hf dir", "broken hf dir"]
)
def test_missing_input_fails_before_reading(tmp_path, monkeypatch, case):
    root = tmp_path / "root"
    (root / "good").mkdir(parents=True)
    (root / "good/doc.txt").write_text("read only after every source resolved")
    bad, words = _missing_cases(tmp_path)[case]

    def no_reading(*args):
        raise AssertionError("a source was read before every source was resolved")

    monkeypatch.setattr(sources, "parse_file", no_reading)
    with pytest.raises(StageInputError) as err:
        run_ingest(root, {"sources": [local("good", "good"), bad]})
    for word in words:
        assert word in str(err.value)
    assert not (root / "data").exists() and not (root / "reports").exists()
