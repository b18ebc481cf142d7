"""The offline corpus shipped with this Python environment: stdlib docstrings and code,
`pydoc_data` topics, installed packages' descriptions and docs. Paths are portable
(`docstring:json/decoder.py`, `stdlib:json/decoder.py`, `pydoc:assert`, `dist:pyarrow/METADATA`)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from stages.ingest.readers import Record, Unit, decode_document, document

PARTS = ("docstrings", "pydoc_topics", "dist_docs", "stdlib_code")
# Not stdlib code: tests, installed packages, caches, and `pydoc_data` (the topics as Python
# source; the `pydoc_topics` part has them as prose).
_EXCLUDE = frozenset(
    ["test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data"]
)
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def units(parts: list[str]) -> list[Unit]:
    readers = {
        "docstrings": _docstrings,
        "pydoc_topics": _pydoc_topics,
        "dist_docs": _dist_docs,
        "stdlib_code": _stdlib_code,
    }
    return [Unit("code" if p == "stdlib_code" else "prose", readers[p]) for p in parts]


def _stdlib_files() -> list[tuple[str, Path]]:
    """Sorted stdlib `.py` files, without tests, site-packages and build configuration."""
    std = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for f in std.rglob("*.py"):
        rel = f.relative_to(std)
        if _EXCLUDE.isdisjoint(rel.parts) and not rel.parts[0].startswith("config-"):
            files.append((rel.as_posix(), f))
    return sorted(files)


def _stdlib_code() -> Iterator[Record]:
    for rel, f in _stdlib_files():
        yield decode_document(f"stdlib:{rel}", 0, f.read_bytes())


def _docstrings() -> Iterator[Record]:
    """Module, class and function docstrings, parsed with `ast` (nothing is imported)."""
    for rel, f in _stdlib_files():
        path = f"docstring:{rel}"
        try:
            tree = ast.parse(f.read_bytes())
        except (SyntaxError, ValueError):
            yield Record(path, 0, None, "corrupt")
            continue
        docs = (ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, _DOC_NODES))
        for i, doc in enumerate(d for d in docs if d is not None):
            yield document(path, i, doc)


def _pydoc_topics() -> Iterator[Record]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield document(f"pydoc:{name}", 0, topics[name])


def _dist_docs() -> Iterator[Record]:
    """Each package installed in this environment: its METADATA body and its .md/.rst files."""
    paths = sysconfig.get_paths()
    site = {Path(paths[k]).resolve() for k in ("purelib", "platlib")}
    dists: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions():  # sys.path order: the first one is imported
        name = dist.metadata.get("Name")
        if name and Path(dist.locate_file("")).resolve() in site:
            dists.setdefault(re.sub(r"[-_.]+", "-", name).lower(), dist)
    for name in sorted(dists):
        dist = dists[name]
        meta = dist.metadata
        yield document(
            f"dist:{name}/METADATA", 0, meta.get_payload() or meta.get("Description") or ""
        )
        for rel in sorted(str(f) for f in dist.files or ()):
            file = Path(dist.locate_file(rel))
            if rel.endswith((".md", ".rst")) and not rel.startswith("..") and file.is_file():
                yield decode_document(f"dist:{name}/{rel}", 0, file.read_bytes())
