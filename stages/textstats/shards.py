"""Sharded parquet corpora: listing, batched reading, deterministic writing."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

T = TypeVar("T")
R = TypeVar("R")
SHARD_GLOB = "part-*.parquet"
BATCH_ROWS = 2048  # rows per processing batch and per written row group


def list_shards(directory: Path) -> list[Path]:
    return sorted(directory.glob(SHARD_GLOB))


def read_batches(path: Path, columns: Sequence[str]) -> Iterator[pa.Table]:
    """The shard in fixed-size batches, so memory does not grow with the shard (no
    pre-buffering: Arrow's default would read every row group up front)."""
    file = pq.ParquetFile(path, pre_buffer=False)
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=list(columns)):
        yield pa.Table.from_batches([batch])


@dataclass(frozen=True)
class Unit:
    """One task of shard-parallel work: a row group of a shard (an empty shard is one unit)."""

    path: Path
    row_group: int

    @property
    def name(self) -> str:
        return f"{self.path.stem}-{self.row_group:05d}"

    def read(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        file = pq.ParquetFile(self.path)
        if file.num_row_groups == 0:
            return
        for batch in file.iter_batches(BATCH_ROWS, [self.row_group], list(columns)):
            yield pa.Table.from_batches([batch])


def units(shards: Sequence[Path]) -> list[Unit]:
    """Work units in corpus order, so that even a single shard spreads over all workers."""
    return [Unit(p, rg) for p in shards for rg in range(max(1, pq.ParquetFile(p).num_row_groups))]


class ShardWriter:
    """A zstd parquet shard written batch by batch; the same rows give the same bytes."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.rows = 0
        self.path = path
        self.schema = schema
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.rows += table.num_rows
            self._writer.write_table(table, row_group_size=BATCH_ROWS)

    def close(self) -> int:
        self._writer.close()
        return self.rows

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_manifest(directory: Path, shards: Sequence[tuple[str, int]], columns: list[str]) -> None:
    manifest = {
        "columns": columns,
        "rows": sum(rows for _, rows in shards),
        "shards": [{"file": name, "rows": rows} for name, rows in shards],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
