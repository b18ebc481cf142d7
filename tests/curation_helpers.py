"""Real-text corpora for the curation tests (stdlib docstrings and code) and a tmp project root."""

from __future__ import annotations

import ast
import hashlib
import json
import sysconfig
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from stages.textstats import normalized_hashes, shingle_rows

REPO = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])
CURATION = ("signals", "quality", "filter", "dedup")
SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("domain", pa.string()),
                    ("path", pa.string()), ("text", pa.string()), ("n_chars", pa.int64())])


@cache
def _modules() -> tuple[tuple[str, ast.Module], ...]:
    out = []
    for path in sorted(STDLIB.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            out.append((source, ast.parse(source)))
        except (SyntaxError, UnicodeDecodeError):
            continue
    return tuple(out)


@cache
def docstrings(min_words: int = 0) -> tuple[str, ...]:
    """Distinct docstrings of the stdlib's top-level modules, in a fixed order."""
    seen: dict[str, None] = {}
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for _, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, kinds) and (doc := ast.get_docstring(node)):
                if len(doc.split()) >= min_words:
                    seen.setdefault(doc)
    return tuple(seen)


@cache
def code_chunks(min_chars: int = 400) -> tuple[str, ...]:
    """Source of stdlib functions and classes, one document each."""
    seen: dict[str, None] = {}
    for source, tree in _modules():
        lines = source.splitlines(keepends=True)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                chunk = "".join(lines[node.lineno - 1 : node.end_lineno])
                if len(chunk) >= min_chars:
                    seen.setdefault(chunk)
    return tuple(seen)


def row(text: str, key: str, domain: str = "prose") -> dict:
    doc_id = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return {"doc_id": doc_id, "source": "test", "domain": domain, "path": key, "text": text,
            "n_chars": len(text)}


def write_shards(directory: Path, rows: list[dict], shard_docs: int = 200,
                 row_group_docs: int = 64) -> None:
    """Rows as ingest writes them: zstd parquet shards with row groups, and a manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    chunks = [rows[i : i + shard_docs] for i in range(0, len(rows), shard_docs)] or [[]]
    for i, chunk in enumerate(chunks):
        table = pa.Table.from_pylist(chunk, schema=SCHEMA)
        pq.write_table(table, directory / f"part-{i:05d}.parquet", compression="zstd",
                       row_group_size=row_group_docs)
    (directory / "manifest.json").write_text(json.dumps({"docs": len(rows)}))


def make_root(root: Path, corpus: list[dict], heldout: list[dict] = (), into: str = "ingest",
              **sections) -> Path:
    """A project root: the repo's params (curation sections + overrides) and the input data.

    `into="filter"` writes the corpus where dedup reads it, so dedup runs without upstream.
    """
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    keep = {k: params[k] for k in ("base", "runtime", "orchestration", *CURATION)}
    keep["runtime"] = {**keep["runtime"], "workers": 1, "progress": False}
    for name, values in sections.items():
        keep[name] = _merge(keep.get(name, {}), values)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(keep, sort_keys=False))
    write_shards(root / f"data/{into}/corpus", corpus)
    write_shards(root / "data/ingest/heldout", list(heldout))
    if into != "ingest":
        (root / "data/ingest/corpus").mkdir(parents=True, exist_ok=True)
    return root


def set_params(root: Path, **sections) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        params[name] = _merge(params.get(name, {}), values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def read_dir(directory: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(directory.glob("part-*.parquet")))


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def shingles(text: str, n: int = 5) -> set[int]:
    """The dedup stage's own shingle set of a text, for exact Jaccard ground truth."""
    h, offsets = normalized_hashes([text])
    flat, _ = shingle_rows(h, offsets, n)
    return set(flat.tolist())


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def mutate(text: str, fraction: float, rng: np.random.Generator) -> str:
    """Replace a fraction of the words by fresh ones (each kills about 5 shingles)."""
    words = text.split()
    for i in rng.choice(len(words), size=max(1, round(fraction * len(words))), replace=False):
        words[i] = f"zq{rng.integers(10**9)}"
    return " ".join(words)


def distinct_docstrings(count: int, min_words: int, max_jaccard: float = 0.2) -> list[str]:
    """Docstrings no two of which are similar: a clean base for duplicate ground truth."""
    picked: list[tuple[str, set[int]]] = []
    for doc in docstrings(min_words):
        s = shingles(doc)
        if all(len(s & t) / len(s | t) <= max_jaccard for _, t in picked):
            picked.append((doc, s))
        if len(picked) == count:
            break
    return [d for d, _ in picked]


def run(root: Path, *names: str) -> list[dict]:
    """Run curation stages (and any stage named) under a registry reduced to them (other
    stages' params not needed)."""
    from stages import registry
    from stages.runner import run_stage

    saved = registry.STAGES
    registry.STAGES = tuple(s for s in saved if s.name in CURATION or s.name in names)
    try:
        return [run_stage(name, root) for name in names]
    finally:
        registry.STAGES = saved
