"""Source declarations (`ingest.sources` in params.yaml) and their resolution into readable units.

`resolve` checks that a source exists and lists what it holds, raising `StageInputError` with the
source's name and location; the stage resolves every source before it reads any. A document's
`path` is relative to its source (below a local dir or glob base, below an S3 prefix, or the HF
split), so the same files read from a local mirror or from S3 get the same doc ids.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from stages.ingest import builtin
from stages.ingest.cache import ReadCache
from stages.ingest.readers import Record, Unit, field_values, parse_file
from stages.params import StrictModel
from stages.runner import StageContext, StageInputError

Domain = Literal["prose", "code"]
BuiltinPart = Literal[builtin.PARTS]  # type: ignore[valid-type]
_GLOB = re.compile(r"[*?[]")
_S3_BATCH = 64  # objects fetched concurrently per request batch


class _Source(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="recorded per document")
    max_docs: int | None = Field(None, ge=1, description="keep at most this many docs (by doc id)")
    max_chars: int | None = Field(None, ge=1, description="keep docs (by doc id) up to these chars")


class _FileSource(_Source):
    domain: Domain = "prose"
    text_field: str = Field("text", description="the text column or key (jsonl, parquet, hf)")


class LocalSource(_FileSource):
    kind: Literal["local"]
    paths: list[str] = Field(min_length=1, description="files, dirs or globs; relative to the root")


class S3Source(_FileSource):
    kind: Literal["s3"]
    url: str = Field(pattern=r"^s3://[^/]+", description="s3://bucket/prefix; every object below")


class HFSource(_FileSource):
    kind: Literal["hf"]
    path: str = Field(description="save_to_disk dir, data files dir, or a hub id (online)")
    split: str = "train"
    config: str | None = None


class BuiltinSource(_Source):
    kind: Literal["builtin"]
    parts: list[BuiltinPart] = Field(default=list(builtin.PARTS), min_length=1)


Source = Annotated[LocalSource | S3Source | HFSource | BuiltinSource, Field(discriminator="kind")]


def resolve(src: Source, ctx: StageContext) -> list[Unit]:
    """What `src` holds, as units to read; StageInputError if it is missing or empty."""
    if isinstance(src, BuiltinSource):
        return builtin.units(src.parts)
    if isinstance(src, LocalSource):
        return _local(src, ctx.root)
    if isinstance(src, S3Source):
        return _s3(src, ctx.runtime.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
    return _hf(src, ctx.root)


def _error(src: Source, where: str, what: str) -> StageInputError:
    return StageInputError(f"ingest source {src.name!r} ({src.kind}): {where}: {what}")


def _local(src: LocalSource, root: Path) -> list[Unit]:
    found: dict[str, Path] = {}
    for entry in src.paths:
        path = Path(entry) if Path(entry).is_absolute() else root / entry
        if _GLOB.search(entry):
            k = next(i for i, part in enumerate(path.parts) if _GLOB.search(part))
            base = Path(*path.parts[:k])
            files = [f for f in base.glob("/".join(path.parts[k:])) if f.is_file()]
        elif path.is_dir():
            base, files = path, [f for f in path.rglob("*") if f.is_file()]
        elif path.is_file():
            base, files = path.parent, [path]
        else:
            raise _error(src, entry, f"{path} does not exist; create it or fix ingest.sources")
        if not files:
            raise _error(src, entry, f"matches no files under {base}; fix ingest.sources")
        for f in files:
            rel = f.relative_to(base).as_posix()
            if found.setdefault(rel, f).resolve() != f.resolve():
                raise _error(
                    src, entry, f"{found[rel]} and {f} both map to {rel!r}; split the source"
                )
    units = []
    for rel, f in sorted(found.items()):
        try:
            st = f.stat()
        except OSError as exc:
            raise _error(src, str(f), f"cannot read ({exc})") from exc
        version = f"size={st.st_size} mtime_ns={st.st_mtime_ns}"
        units.append(Unit(src.domain, partial(_read_local, src, f), ((rel, version),)))
    return units


def _read_local(src: LocalSource, file: Path, objects: list[tuple[str, str]],
                cache: ReadCache | None) -> Iterator[Record]:
    for rel, version in objects:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise _error(src, str(file), f"cannot read ({exc})") from exc
        records = list(parse_file(rel, data, src.text_field))
        yield from cache.put(rel, version, data, records) if cache else records


def _s3(src: S3Source, endpoint: str | None) -> list[Unit]:
    """Every object below the prefix; credentials come from the environment only."""
    import s3fs

    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint,
        skip_instance_cache=True,
        use_listings_cache=False,
        config_kwargs={"connect_timeout": 10, "retries": {"max_attempts": 3}},
    )
    base = src.url.removeprefix("s3://").rstrip("/")
    try:
        found = fs.find(base, detail=True)
        keys = sorted(found)
    except Exception as exc:  # botocore and aiohttp raise many kinds; all mean "cannot list"
        raise _error(
            src,
            src.url,
            f"cannot list ({type(exc).__name__}: {exc}); check the bucket, the "
            "endpoint (runtime.s3_endpoint_url or AWS_ENDPOINT_URL) and the AWS_* credentials",
        ) from exc
    if not keys:
        raise _error(src, src.url, "no objects below this prefix; fix ingest.sources or upload")
    rels = [k[len(base) + 1 :] if k.startswith(base + "/") else k.rsplit("/", 1)[-1] for k in keys]
    versions = [f"size={found[k].get('size')} etag={found[k].get('ETag')}" for k in keys]
    keys_of = dict(zip(rels, keys, strict=True))
    objects = list(zip(rels, versions, strict=True))
    return [
        Unit(src.domain, partial(_read_s3, fs, src, keys_of), tuple(objects[i : i + _S3_BATCH]))
        for i in range(0, len(objects), _S3_BATCH)
    ]


def _read_s3(fs, src: S3Source, keys_of: dict[str, str], objects: list[tuple[str, str]],
             cache: ReadCache | None) -> list[Record]:
    """The objects' records, in order, fetched in one concurrent batch."""
    blobs = fs.cat([keys_of[rel] for rel, _ in objects], on_error="return") if objects else {}
    got = []
    for rel, version in objects:
        key = keys_of[rel]
        blob = blobs[key]
        if isinstance(blob, Exception):
            raise _error(src, f"s3://{key}", f"cannot read ({type(blob).__name__}: {blob})")
        records = list(parse_file(rel, blob, src.text_field))
        got.extend(cache.put(rel, version, blob, records) if cache else records)
    return got


def _hf(src: HFSource, root: Path) -> list[Unit]:
    """A `save_to_disk` dir, a dir of data files, or (when online) a hub dataset id."""
    import datasets

    local = Path(src.path) if Path(src.path).is_absolute() else root / src.path
    hub_id = not src.path.startswith((".", "/")) and src.path.count("/") <= 1  # "org/name"
    if not local.exists() and not hub_id:
        raise _error(src, src.path, f"{local} does not exist; create it or fix ingest.sources")
    try:
        if (local / "dataset_dict.json").exists() or (local / "state.json").exists():
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[src.split]
        else:
            where = str(local) if local.exists() else src.path
            ds = datasets.load_dataset(where, name=src.config, split=src.split)
    except Exception as exc:  # datasets raises many kinds: missing files, splits, hub errors
        raise _error(src, src.path, f"cannot load ({type(exc).__name__}: {exc})") from exc
    return [Unit(src.domain, partial(_read_hf, ds, src))]


def _read_hf(ds, src: HFSource) -> Iterator[Record]:
    path = f"{src.config}/{src.split}" if src.config else src.split
    if src.text_field not in ds.column_names:
        return field_values(path, [None] * len(ds))
    column = ds.select_columns([src.text_field]).iter(batch_size=1024)
    return field_values(path, (v for batch in column for v in batch[src.text_field]))
