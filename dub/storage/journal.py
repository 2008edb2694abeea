"""Finished work as small Parquet parts: rows are journaled as they become durable, each part
written whole (`atomic`), so a rerun after a crash reads what is done and does only the rest."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from dub.storage.atomic import atomic_path


class Journal:
    """Rows of one Arrow `schema` (generate's report rows, ingest's probed manifest rows) as
    parts in `journal_dir`, flushed every `flush_rows` rows or `flush_every_s` seconds: what a
    kill -9 (which runs no `finally`) can lose is bounded by those."""

    def __init__(self, journal_dir: Path, schema, flush_every_s: float = 5.0, flush_rows: int = 64, on_part=None):
        self.dir = Path(journal_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flush_every_s = flush_every_s
        self.flush_rows = flush_rows
        self.schema = schema
        self._rows: list[dict] = []
        self._last = time.monotonic()
        self.on_part = on_part  # called with each part once it is written (generate publishes it)

    def add(self, rows: list[dict]) -> None:
        self._rows.extend(rows)
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._last > self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = self.schema.names
        table = pa.Table.from_pylist([{name: r.get(name) for name in names} for r in self._rows], schema=self.schema)
        part = self.dir / f"part-{time.time_ns()}-{uuid.uuid4().hex[:6]}.parquet"
        with atomic_path(part) as tmp:
            pq.write_table(table, tmp)
        if self.on_part is not None:
            self.on_part(part)
        self._rows = []
        self._last = time.monotonic()


def read_journal(journal_dir: Path, key: str = "video_id") -> dict[str, dict]:
    """Latest journal row per `key` (parts are written whole, in time order)."""
    import pyarrow.parquet as pq

    latest: dict[str, dict] = {}
    if not Path(journal_dir).is_dir():
        return latest
    for part in sorted(Path(journal_dir).glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            latest[row[key]] = row
    return latest


def read_journal_table(journal_dir: Path, schema, key: str = "video_id"):
    """The journal as one Arrow table in `schema`: the newest row per `key` (parts are written
    whole, in time order, and a part's later rows are newer). `read_journal`'s rule, kept in
    columns: a million rows as Python dicts are gigabytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [in_schema(pq.read_table(p), schema) for p in sorted(Path(journal_dir).glob("part-*.parquet"))]
    table = pa.concat_tables(parts) if parts else schema.empty_table()
    numbered = table.append_column("__row", pa.array(np.arange(table.num_rows)))
    newest = numbered.group_by(key, use_threads=False).aggregate([("__row", "max")])
    return table.take(pa.array(np.sort(newest["__row_max"].to_numpy())))


def in_schema(table, schema):
    """`table`'s columns in `schema`'s order and types, nulls for any it lacks (a part written
    before a column was added)."""
    import pyarrow as pa

    columns = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)
