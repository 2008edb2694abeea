"""scripts/clip_kernels_bench.py (the GPU check of where CLIP's FP8 time goes) runs end to end
on the CPU at tiny sizes: every variant is a row, the unsupported SDPA backends are rows with
their error, and the numbers it writes are finite and plausible."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.script_helpers import load_script


def test_tiny_cpu_run_writes_every_row(tmp_path: Path) -> None:
    bench = load_script("clip_kernels_bench")
    returned = bench.main(
        ["--device", "cpu", "--tiny", "--frames", "1", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)]
    )
    result = json.loads((tmp_path / "clip_kernels.json").read_text())
    assert result["rows"] == json.loads(json.dumps(returned["rows"]))
    assert result["m"] == bench.TINY["tokens"] and result["dtype"] == "float32" and not result["compile"]
    rows = result["rows"]

    attention = {row["variant"]: row for row in rows if row["part"] == "attention"}
    assert len(attention) == 2 * len(bench.BACKENDS)
    for layout in ("contiguous", "qkv views"):
        for backend in ("flash_attention", "math"):  # the CPU has these two
            row = attention[f"{backend} ({layout})"]
            assert row["error"] is None and row["median_ms"] > 0 and row["tflops"] > 0
            # float32 against float32: another attention kernel's summation order over the tiny
            # sizes' dot products and softmax (~sqrt(n) u, of the peak), far below 1e-4
            assert row["rel_err"] < 1e-4
        for backend in ("efficient_attention", "cudnn_attention"):  # and not these: a row, not a crash
            row = attention[f"{backend} ({layout})"]
            assert row["median_ms"] is None and row["error"]

    linear = [row for row in rows if row["part"] == "linear"]
    assert {row["layer"] for row in linear} == {"qkv", "attn-out", "fc1", "fc2"}
    variants = {row["variant"] for row in linear}
    assert len(linear) == 4 * len(variants) == 40  # no compiled rows on the CPU by default
    for row in linear:
        assert row["error"] is None, row
        assert math.isfinite(row["median_ms"]) and row["median_ms"] > 0
        assert math.isfinite(row["rel_err"])
        if row["variant"] == "float32 F.linear":  # float32 against float32: rounding only
            assert row["rel_err"] < 1e-5
        else:  # e4m3: a few % of the peak, never exact (so FP8 really ran)
            assert 1e-3 < row["rel_err"] < 0.1, row
        if row["variant"].startswith("quantise ("):
            assert row["gbps"] > 0 and row["tflops"] is None
        else:
            assert row["tflops"] > 0
    assert set(result["projected"]["linears"]) == variants
    assert all(ms > 0 for ms in result["projected"]["attention"].values())
