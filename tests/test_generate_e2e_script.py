"""scripts/generate_e2e.py, the end-to-end record of `dub generate` a GPU run is judged by, here
as a CPU smoke run with the demo model: real clips, a real `dub generate` (Ray, decoding,
writing), and the record a reader needs (command, device, clips/s) next to the run's own
summary."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from tests.script_helpers import load_script


def test_generate_e2e_records_the_real_commands_throughput(tmp_path: Path) -> None:
    script = load_script("generate_e2e")
    out = tmp_path / "e2e"
    args = ["--out", str(out), "--model", "demo", "--clips", "2", "--seconds", "2", "--size", "64x64"]
    assert script.main([*args, "--batch-size", "2"]) == 0
    record = json.loads((out / "generate_e2e.json").read_text())
    assert record["command"].startswith("dub generate -m ") and "--model demo" in record["command"]
    assert record["device"].startswith("cpu")
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert record["summary"] == summary and summary["done"] == 2 and summary["failed"] == 0
    assert record["clips_per_s"] == summary["clips_per_s"] > 0
    assert record["process_wall_s"] >= record["wall_s"] > 0
    rows = pq.read_table(out / "run" / "report.parquet").to_pylist()
    assert sorted(r["status"] for r in rows) == ["done", "done"]
    assert all(Path(r["output_mp4"]).stat().st_size > 0 for r in rows)
