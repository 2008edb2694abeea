"""Parquet I/O for manifests and reports: atomic writes, schema-checked reads.

A reader gets a table in the declared schema (columns in order, types cast, optional columns
filled with nulls, extra user columns kept at the end) or an error that names the file, what
is wrong with it and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dub.manifests.schema import (
    MANIFEST_REQUIRED,
    MANIFEST_SCHEMA,
    MANIFEST_STATUSES,
    REPORT_REQUIRED,
    REPORT_SCHEMA,
    REPORT_STATUSES,
    schema_name,
)
from dub.storage.atomic import atomic_path
from dub.storage.location import exists, is_uri, put_bytes, read_bytes


class ManifestError(ValueError):
    """A manifest or report file that cannot be used as one."""


def write_parquet_atomic(table: pa.Table, path: str | Path) -> Path:
    """Write `table` to `path` so readers see the old file or the new one, never a partial one.

    (`dub.storage.atomic`: a temporary file beside it, fsynced, renamed, the directory fsynced.)
    """
    if is_uri(path):  # one upload: the object appears whole (dub.storage.location)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        put_bytes(sink.getvalue().to_pybytes(), str(path))
        return path
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_manifest(path: str | Path) -> pa.Table:
    """Read an ingest manifest, checked against MANIFEST_SCHEMA."""
    table = _read(path, "manifest", "create one with `dub ingest VIDEO_DIR -o MANIFEST.parquet`")
    return conform(table, MANIFEST_SCHEMA, MANIFEST_REQUIRED, MANIFEST_STATUSES, what=f"manifest {path}")


def read_report(path: str | Path) -> pa.Table:
    """Read a generation report (`OUT/report.parquet`), checked against REPORT_SCHEMA."""
    table = _read(path, "generation_report", "it is written by `dub generate -o OUT` as OUT/report.parquet")
    return conform(table, REPORT_SCHEMA, REPORT_REQUIRED, REPORT_STATUSES, what=f"report {path}")


def empty_manifest() -> pa.Table:
    return MANIFEST_SCHEMA.empty_table()


def manifest_from_rows(rows: list[dict]) -> pa.Table:
    """Build a manifest table from row dicts (missing keys become nulls), validated."""
    table = pa.Table.from_pylist(
        [{name: row.get(name) for name in MANIFEST_SCHEMA.names} for row in rows], schema=MANIFEST_SCHEMA
    )
    return conform(table, MANIFEST_SCHEMA, MANIFEST_REQUIRED, MANIFEST_STATUSES, what="manifest rows")


def _read(path: str | Path, expected: str, hint: str) -> pa.Table:
    if is_uri(path):  # object storage: one object, read whole
        if not exists(str(path)):
            raise FileNotFoundError(f"{expected.replace('_', ' ')} not found: {path} ({hint})")
        return _checked(pa.BufferReader(read_bytes(str(path))), str(path), expected, hint)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{expected.replace('_', ' ')} not found: {path} ({hint})")
    if path.is_dir():
        raise ManifestError(f"{path} is a directory; expected a {expected.replace('_', ' ')} Parquet file ({hint})")
    return _checked(path, str(path), expected, hint)


def _checked(source, path: str, expected: str, hint: str) -> pa.Table:
    try:
        table = pq.read_table(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{path} is not a readable Parquet file ({exc}); {hint}") from exc
    found = schema_name(table.schema)
    if found is not None and found != expected:
        raise ManifestError(f"{path} is a {found.replace('_', ' ')}, not a {expected.replace('_', ' ')}; {hint}")
    return table


def conform(
    table: pa.Table, schema: pa.Schema, required: tuple[str, ...], statuses: tuple[str, ...], *, what: str
) -> pa.Table:
    """Return `table` in `schema`'s column order and types; raise ManifestError naming every problem."""
    problems = []
    missing = [name for name in required if name not in table.column_names]
    if missing:
        problems.append(f"missing column(s) {missing}")
    columns, names = [], []
    for field in schema:
        if field.name not in table.column_names:
            if field.name in missing:
                continue
            columns.append(pa.chunked_array([pa.nulls(table.num_rows, field.type)], type=field.type))
            names.append(field.name)
            continue
        column = table.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                problems.append(f"column {field.name!r} has type {column.type}, expected {field.type}")
                continue
        if not field.nullable and column.null_count:
            problems.append(f"column {field.name!r} has {column.null_count} empty value(s); every row needs one")
        columns.append(column)
        names.append(field.name)
    if "status" in names:
        bad = sorted({s for s in columns[names.index("status")].to_pylist() if s not in statuses})
        if bad:
            problems.append(f"unknown status value(s) {bad}; allowed: {list(statuses)}")
    if problems:
        raise ManifestError(f"{what} does not match the expected schema: " + "; ".join(problems))
    fields = [schema.field(name) for name in names]
    extras = [name for name in table.column_names if name not in schema.names]
    fields += [table.schema.field(name) for name in extras]
    columns += [table.column(name) for name in extras]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))
