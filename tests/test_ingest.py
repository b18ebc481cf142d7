"""Ingest stage: file formats, determinism, stable doc ids, the held-out split, params validation,
Hugging Face datasets on disk and the built-in corpus."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages import registry
from stages.ingest.shards import bucket_of
from stages.params import ParamsError, validate
from stages.runner import run_stage

REPO = Path(__file__).resolve().parent.parent
COLUMNS = {
    "doc_id": pa.string(),
    "source": pa.string(),
    "domain": pa.string(),
    "path": pa.string(),
    "text": pa.string(),
    "n_chars": pa.int64(),
}


@pytest.fixture(autouse=True)
def ingest_only(monkeypatch):
    """Validate only the shared sections and ingest, whatever state the later stages are in."""
    monkeypatch.setattr(registry, "STAGES", (registry.stage("ingest"),))


def run_ingest(root: Path, ingest: dict, seed: int = 0, **runtime) -> dict:
    """Write a params.yaml with this ingest section into `root` and run the stage there."""
    root.mkdir(parents=True, exist_ok=True)
    runtime = {"progress": False, **runtime}
    params = {"base": {"seed": seed}, "runtime": runtime, "ingest": ingest}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return run_stage("ingest", root)


def table(root: Path, split: str = "corpus") -> pa.Table:
    files = sorted((root / "data/ingest" / split).glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def manifest(root: Path, split: str = "corpus") -> dict:
    return json.loads((root / "data/ingest" / split / "manifest.json").read_text())


def columns(t: pa.Table, *names: str) -> list[tuple]:
    return list(zip(*(t[c].to_pylist() for c in names), strict=True))


def rows(root: Path, split: str = "corpus") -> set[tuple]:
    return set(columns(table(root, split), "source", "domain", "path", "text"))


def local(name: str, *paths: str, **extra) -> dict:
    return {"name": name, "kind": "local", "paths": list(paths), **extra}


def write_formats(d: Path) -> set[tuple[str, str]]:
    """One small file per supported format; returns the expected (path, text) pairs."""
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("plain text")
    (d / "b.md").write_text("# Title\n\nmarkdown body\n")
    (d / "sub/c.txt.gz").write_bytes(gzip.compress(b"gzipped text", mtime=0))
    (d / "d.jsonl").write_text('{"text": "json one"}\n{"text": "json two", "id": 2}\n')
    (d / "sub/e.jsonl.gz").write_bytes(gzip.compress(b'{"text": "gzipped json"}\n', mtime=0))
    pq.write_table(pa.table({"text": ["pq one", "pq two"], "n": [1, 2]}), d / "f.parquet")
    return {
        ("a.txt", "plain text"),
        ("b.md", "# Title\n\nmarkdown body\n"),
        ("sub/c.txt.gz", "gzipped text"),
        ("d.jsonl", "json one"),
        ("d.jsonl", "json two"),
        ("sub/e.jsonl.gz", "gzipped json"),
        ("f.parquet", "pq one"),
        ("f.parquet", "pq two"),
    }


def all_outputs(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for top in ("data/ingest", "reports/ingest")
        for p in sorted((root / top).rglob("*"))
        if p.is_file()
    }


def test_local_formats_schema_and_manifest(tmp_path):
    expected = write_formats(tmp_path / "in")
    (tmp_path / "root/tables").mkdir(parents=True)
    pq.write_table(pa.table({"content": ["def f(): pass"]}), tmp_path / "root/tables/x.parquet")
    m = run_ingest(
        tmp_path / "root",
        {
            "sources": [
                local("docs", str(tmp_path / "in")),  # absolute dir
                local("tbl", "tables/*.parquet", text_field="content", domain="code"),  # glob
            ],
            "heldout_fraction": 0,
        },
    )
    root = tmp_path / "root"
    t = table(root)
    assert {f.name: f.type for f in t.schema} == COLUMNS
    assert rows(root) == {("docs", "prose", p, x) for p, x in expected} | {
        ("tbl", "code", "x.parquet", "def f(): pass")
    }
    assert t["n_chars"].to_pylist() == [len(x) for x in t["text"].to_pylist()]
    # one bucket per (source, path), its shards named by it, doc ids sorted within each
    names = {f"part-{bucket_of(s, p, 16):05d}-000.parquet"
             for s, p in columns(t, "source", "path")}
    man = manifest(root)
    assert [e["file"] for e in man["shards"]] == sorted(names)
    for e in man["shards"]:
        ids = pq.read_table(root / "data/ingest/corpus" / e["file"])["doc_id"].to_pylist()
        assert ids == sorted(ids) and e["docs"] == len(ids)
    jsonl_ids = {i for i, p in columns(t, "doc_id", "path") if p == "d.jsonl"}
    assert jsonl_ids == {
        hashlib.blake2b(f"docs\nd.jsonl\n{i}".encode(), digest_size=16).hexdigest() for i in (0, 1)
    }
    assert m["read"] == m["kept"] == len(expected) + 1 and not any(m["skipped"].values())
    assert m["corpus"] == {"docs": 9, "chars": sum(t["n_chars"].to_pylist()),
                           "shards": len(names)}
    assert table(root, "heldout").num_rows == 0 and m["heldout"]["shards"] == 1
    assert manifest(root, "heldout")["shards"] == [
        {"file": "part-00000-000.parquet", "docs": 0, "chars": 0}]  # an empty split: one shard
    assert man["split"] == "corpus" and man["docs"] == 9 and man["sorted_by"] == "bucket, doc_id"
    assert man["schema"] == {k: str(v) for k, v in COLUMNS.items()}
    assert sum(e["chars"] for e in man["shards"]) == man["chars"]
    assert {k: v["docs"] for k, v in man["sources"].items()} == {"docs": 8, "tbl": 1}
    assert {k: v["docs"] for k, v in man["domains"].items()} == {"prose": 8, "code": 1}
    assert json.loads((root / "reports/ingest/metrics.json").read_text()) == m


def test_deterministic_and_portable(tmp_path):
    """Two roots, different absolute input paths, small shards: byte-identical outputs."""
    ingest = {
        "sources": [
            {"name": "builtin", "kind": "builtin", "parts": ["pydoc_topics"], "max_docs": 30},
        ],
        "heldout_fraction": 0.2,
        "shard_docs": 7,
        "row_group_docs": 3,
    }
    for run in ("one", "two"):
        write_formats(tmp_path / run / "in")
        src = local("docs", str(tmp_path / run / "in"))
        run_ingest(tmp_path / run / "root", {**ingest, "sources": ingest["sources"] + [src]})
    one, two = (all_outputs(tmp_path / r / "root") for r in ("one", "two"))
    assert one == two
    assert len([k for k in one if k.endswith(".parquet")]) >= 6  # 38 docs in shards of 7
    root = tmp_path / "one/root"
    paths = table(root)["path"].to_pylist() + table(root, "heldout")["path"].to_pylist()
    assert not [p for p in paths if p.startswith("/") or str(tmp_path) in p]
    assert str(tmp_path) not in one["reports/ingest/metrics.json"].decode()


def test_streams_through_spill_runs_with_identical_output(tmp_path, monkeypatch):
    """Spilled in many small sorted runs and merged, the output is byte for byte the output of
    one run in memory; shards and row groups come out at the declared sizes."""
    from stages.ingest import shards

    ingest = {"sources": [{"name": "builtin", "kind": "builtin", "parts": ["pydoc_topics"],
                           "max_docs": 60}],
              "heldout_fraction": 0.2, "shard_docs": 7, "row_group_docs": 3}
    run_ingest(tmp_path / "one", ingest)
    runs, writes = [], []
    flush, write = shards.Spill.flush, shards.Spill._write
    monkeypatch.setattr(shards.Spill, "flush", lambda self: (flush(self), runs.append(
        len(self.runs)))[0])
    monkeypatch.setattr(shards.Spill, "_write", lambda self, docs: (write(self, docs),
                                                                     writes.append(1))[0])
    monkeypatch.setattr(shards, "MERGE_FAN_IN", 3)
    run_ingest(tmp_path / "many", ingest, spill_chars=20_000)
    assert max(runs) >= 10  # the corpus went to disk in many runs, not held at once
    assert len(writes) > max(runs)  # more runs than MERGE_FAN_IN: merged in several passes
    assert all_outputs(tmp_path / "one") == all_outputs(tmp_path / "many")
    for split in ("corpus", "heldout"):
        for entry in manifest(tmp_path / "many", split)["shards"]:
            meta = pq.ParquetFile(tmp_path / "many/data/ingest" / split / entry["file"]).metadata
            assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [
                min(3, entry["docs"] - 3 * i) for i in range(meta.num_row_groups)]
            assert entry["docs"] <= 7
    assert not (tmp_path / "many/data/ingest/.spill").exists()


@pytest.mark.parametrize("buckets", [16, 2])
def test_refresh_rereads_only_new_or_changed_files(tmp_path, capsys, buckets):
    """The second run reads the one new and the one changed file, the rest come from the ingest
    cache; only their buckets are written again (with 2 buckets, unchanged files share them and
    their text comes from the ingest cache), and the outputs are those of a from-scratch run
    over the same files."""
    docs = tmp_path / "in"
    docs.mkdir()
    for i in range(8):
        (docs / f"doc{i}.md").write_text(f"Document {i}: " + "text " * (i + 5))
    ingest = {"sources": [local("notes", str(docs))], "heldout_fraction": 0.25,
              "buckets": buckets}
    run_ingest(tmp_path / "root", ingest)
    log = capsys.readouterr().err  # the stage logs to stderr
    assert "source notes: 8 objects read, 0 unchanged ones from the ingest cache" in log
    (docs / "new.md").write_text("A new document arrives with the weekly refresh.")
    changed = docs / "doc3.md"
    changed.write_text("Document 3, revised: " + "words " * 9)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    run_ingest(tmp_path / "root", ingest)
    log = capsys.readouterr().err
    assert "source notes: 2 objects read, 7 unchanged ones from the ingest cache" in log
    # only the buckets of the new and the changed file are written again, the rest copied
    touched = {bucket_of("notes", f, buckets) for f in ("new.md", "doc3.md")}
    every = {bucket_of("notes", f, buckets) for f in [f"doc{i}.md" for i in range(8)] + ["new.md"]}
    assert (f"ingest: {len(touched)} of {len(every)} buckets rebuilt, "
            f"{len(every - touched)} copied from the shard cache") in log
    manifest_of = json.loads((tmp_path / "root/.cache/ingest/notes.json").read_text())
    assert sorted(manifest_of) == sorted([f"doc{i}.md" for i in range(8)] + ["new.md"])
    assert manifest_of["new.md"]["sha256"] == hashlib.sha256(
        (docs / "new.md").read_bytes()).hexdigest()
    run_ingest(tmp_path / "clean", ingest, ingest_cache=None)
    assert all_outputs(tmp_path / "root") == all_outputs(tmp_path / "clean")
    assert not (tmp_path / "clean/.cache").exists()


def test_doc_ids_follow_location_not_content(tmp_path):
    write_formats(tmp_path / "in")
    ingest = {"sources": [local("docs", str(tmp_path / "in"))], "heldout_fraction": 0}

    def ids() -> dict[str, str]:
        t = table(tmp_path / "root")
        return dict(columns(t, "path", "doc_id"))

    run_ingest(tmp_path / "root", ingest)
    before = ids()
    (tmp_path / "in/a.txt").write_text("completely different text")
    (tmp_path / "in/b.md").rename(tmp_path / "in/renamed.md")
    run_ingest(tmp_path / "root", ingest)
    after = ids()
    assert after["a.txt"] == before["a.txt"]
    assert after["renamed.md"] != before["b.md"]
    assert "completely different text" in table(tmp_path / "root")["text"].to_pylist()


def test_heldout_split_by_hash(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    lines = [json.dumps({"text": f"document number {i}"}) for i in range(3000)]
    (src / "prose.jsonl").write_text("\n".join(lines) + "\n")
    code = tmp_path / "code"
    code.mkdir()
    for i in range(10):
        (code / f"m{i}.txt").write_text(f"x = {i}\n")
    ingest = {
        "sources": [local("p", str(src)), local("c", str(code), domain="code")],
        "heldout_fraction": 0.1,
        "heldout_min_per_domain": 3,
    }

    def split(root: Path) -> tuple[set, set]:
        return tuple(set(table(root, s)["doc_id"].to_pylist()) for s in ("corpus", "heldout"))

    m = run_ingest(tmp_path / "a", ingest)
    corpus, held = split(tmp_path / "a")
    assert not corpus & held and len(corpus | held) == 3010
    assert 240 <= m["domains"]["prose"]["heldout"]["docs"] <= 360
    assert 3 <= m["domains"]["code"]["heldout"]["docs"] <= 5  # topped up from ~1 to the minimum
    assert m["heldout"]["docs"] == len(held) == manifest(tmp_path / "a", "heldout")["docs"]

    # More documents later: everything held out before stays held out.
    (src / "prose.jsonl").write_text("\n".join(lines + ['{"text": "a late addition"}']) + "\n")
    run_ingest(tmp_path / "b", ingest)
    assert held <= split(tmp_path / "b")[1]
    # Another seed: another slice.
    run_ingest(tmp_path / "c", ingest, seed=1)
    assert split(tmp_path / "c")[1] != held


@pytest.mark.parametrize(
    ("ingest", "named"),
    [
        ({"sources": [local("x", "a", bogus=1)]}, "ingest.sources.0.local.bogus"),
        ({"sources": [{"name": "x", "kind": "ftp"}]}, "ingest.sources.0"),
        ({"heldout_fracton": 0.1}, "ingest.heldout_fracton"),
        ({"heldout_fraction": 1.5}, "ingest.heldout_fraction"),
        ({"sources": [local("x", "a"), local("x", "b")]}, "repeated: x"),
        ({"sources": [{"name": "bad name", "kind": "builtin"}]}, "ingest.sources.0.builtin.name"),
    ],
)
def test_params_errors_name_the_key(ingest, named):
    with pytest.raises(ParamsError, match=named.replace(".", r"\.")):
        validate({"ingest": ingest})


def test_repo_params_and_default_source():
    models = validate({"ingest": yaml.safe_load((REPO / "params.yaml").read_text())["ingest"]})
    assert {s.kind for s in models["ingest"].sources} == {"builtin"}
    assert [s.kind for s in validate({})["ingest"].sources] == ["builtin"]


def test_hf_datasets_on_disk(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    datasets.Dataset.from_dict({"text": ["first", None, "third"]}).save_to_disk(tmp_path / "ds")
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"body": ["train row"]}),
            "test": datasets.Dataset.from_dict({"body": ["test row"]}),
        }
    ).save_to_disk(tmp_path / "dd")
    (tmp_path / "files").mkdir()
    (tmp_path / "files/train.jsonl").write_text('{"text": "from data files"}\n')
    hf = {"kind": "hf", "domain": "prose"}
    m = run_ingest(
        tmp_path / "root",
        {
            "sources": [
                {**hf, "name": "ds", "path": str(tmp_path / "ds")},
                {
                    **hf,
                    "name": "dd",
                    "path": str(tmp_path / "dd"),
                    "split": "test",
                    "text_field": "body",
                },
                {**hf, "name": "files", "path": str(tmp_path / "files")},
            ],
            "heldout_fraction": 0,
        },
    )
    assert rows(tmp_path / "root") == {
        ("ds", "prose", "train", "first"),
        ("ds", "prose", "train", "third"),
        ("dd", "prose", "test", "test row"),
        ("files", "prose", "train", "from data files"),
    }
    assert m["sources"]["ds"]["skipped"] == {"missing_text_field": 1}


def test_builtin_corpus(tmp_path):
    parts = ("docstrings", "pydoc_topics", "dist_docs", "stdlib_code")
    m = run_ingest(
        tmp_path / "root",
        {
            "sources": [
                {"name": p, "kind": "builtin", "parts": [p], "max_docs": 25} for p in parts
            ],
            "heldout_fraction": 0,
        },
    )
    t = table(tmp_path / "root")
    by_source: dict[str, set[str]] = {}
    for source, domain, path in columns(t, "source", "domain", "path"):
        by_source.setdefault(source, set()).add(path)
        assert domain == ("code" if source == "stdlib_code" else "prose")
    assert {s: len(p) > 0 for s, p in by_source.items()} == dict.fromkeys(parts, True)
    scheme = {
        "docstrings": "docstring:",
        "pydoc_topics": "pydoc:",
        "dist_docs": "dist:",
        "stdlib_code": "stdlib:",
    }
    for source, paths in by_source.items():
        assert all(p.startswith(scheme[source]) for p in paths), source
    code = by_source["stdlib_code"]
    for p in code:
        dirs = set(PurePosixPath(p.removeprefix("stdlib:")).parts)
        assert p.endswith(".py") and not {"test", "tests", "site-packages"} & dirs, p
    assert any(p.endswith("/METADATA") for p in by_source["dist_docs"])
    assert {k: v["kept"] for k, v in m["sources"].items()} == dict.fromkeys(parts, 25)
    for s in m["sources"].values():
        assert s["read"] == s["kept"] + sum(s["skipped"].values()) and s["skipped"]["capped"] > 0


def test_heldout_mask_equals_a_full_ranking():
    """The held-out split ranks only the top-up candidates: the same docs as ranking every doc
    of the domain by (hash, doc id) and taking the first n."""
    import numpy as np

    from stages.ingest import shards

    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 3000))
        rows = np.zeros(n, dtype=shards.ENTRY_DTYPE)
        rows["hi"] = rng.integers(0, 2**63, n, dtype=np.uint64)
        rows["lo"] = rng.integers(0, 2**63, n, dtype=np.uint64)
        rows["domain"] = rng.integers(0, 3, n)
        entries = shards.Entries()
        entries.domains, entries._parts = ["a", "b", "c"], [rows]
        frac, least, seed = float(rng.choice([0, 0.01, 0.1])), int(rng.integers(0, 400)), 7
        h = shards.unit_hash(seed, rows["hi"], rows["lo"])
        expected = np.zeros(n, dtype=bool)
        for domain in range(3):
            idx = np.flatnonzero(rows["domain"] == domain)
            ranked = idx[np.lexsort((rows["lo"][idx], rows["hi"][idx], h[idx]))]
            expected[ranked[:max(int((h[idx] < frac).sum()), min(least, len(idx) // 2))]] = True
        assert (shards.heldout_mask(entries, frac, least, seed) == expected).all()
