"""dub.storage.atomic and .temporaries: a destination is replaced whole or left as it was, and
whatever a killed writer leaves is recognised as a temporary and removed."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dub.storage.atomic import atomic_path, temporary_name, write_json_atomic, write_text_atomic
from dub.storage.journal import Journal, read_journal
from dub.storage.temporaries import remove_stale_temporaries


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "summary.json"
    write_json_atomic(dest, {"n": 1})
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("killed mid-write")
    assert json.loads(dest.read_text()) == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_finished_write_replaces_the_file_and_creates_folders(tmp_path):
    dest = tmp_path / "a" / "b" / "page.html"
    write_text_atomic(dest, "old")
    write_text_atomic(dest, "new")
    assert dest.read_text() == "new" and sorted(p.name for p in dest.parent.iterdir()) == ["page.html"]


def test_temporary_names_are_hidden_unique_and_keep_the_suffix_when_asked(tmp_path):
    dest = tmp_path / "clip.mp4"
    plain, media = temporary_name(dest), temporary_name(dest, keep_suffix=True)
    assert plain.name.startswith(".clip.mp4.") and plain.suffix == ".tmp"
    assert media.name.startswith(".clip.partial-") and media.suffix == ".mp4"  # PyAV picks the format from it
    assert temporary_name(dest) != plain


def test_stale_temporaries_go_and_finished_files_stay(tmp_path):
    """What a SIGKILL leaves mid-write, in both naming forms, is removed; finished files and
    other hidden files (the lock) are kept."""
    finished = tmp_path / "clip.mp4"
    finished.write_bytes(b"done")
    (tmp_path / ".dub.lock").write_text("{}")
    for leftover in (
        temporary_name(finished),
        temporary_name(finished, keep_suffix=True),
        temporary_name(tmp_path / "report.parquet"),
    ):
        leftover.write_bytes(b"partial")
    remove_stale_temporaries(tmp_path, tmp_path / "missing")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dub.lock", "clip.mp4"]


def test_journal_parts_read_back_latest_row_per_key(tmp_path):
    schema = pa.schema([("video_id", pa.string()), ("status", pa.string())])
    journal = Journal(tmp_path / "journal", schema, flush_every_s=3600, flush_rows=2)
    journal.add([{"video_id": "a", "status": "failed"}])
    assert not list((tmp_path / "journal").iterdir())  # under flush_rows and flush_every_s: not yet written
    journal.add([{"video_id": "b", "status": "done"}])  # the second row fills a part
    journal.add([{"video_id": "a", "status": "done", "extra": "not in the schema"}])
    journal.flush()
    parts = sorted((tmp_path / "journal").glob("part-*.parquet"))
    assert len(parts) == 2 and all(pq.read_table(p).schema.equals(schema) for p in parts)
    assert read_journal(tmp_path / "journal") == {
        "a": {"video_id": "a", "status": "done"},
        "b": {"video_id": "b", "status": "done"},
    }
