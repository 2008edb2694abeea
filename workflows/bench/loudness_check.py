"""Every output of a `dub generate --loudness` run, measured by an independent meter: ffmpeg's
EBU R128 filter (`ebur128`, through PyAV), not the pyloudnorm that set the gain.

    python -m dub.workflows.bench.loudness_check RUN_DIR --target -23 [--json OUT.json]
"""

from __future__ import annotations

import argparse
import fractions
import json
from pathlib import Path

import numpy as np


def ebur128_lufs(audio: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness of mono float audio by ffmpeg's ebur128 filter (None: undefined)."""
    import av

    graph = av.filter.Graph()
    src = graph.add_abuffer(
        format="flt", sample_rate=sample_rate, layout="mono", time_base=fractions.Fraction(1, sample_rate)
    )
    meter, sink = graph.add("ebur128", "metadata=1"), graph.add("abuffersink")
    src.link_to(meter)
    meter.link_to(sink)
    graph.configure()
    value = None

    def drain() -> None:
        nonlocal value
        while True:
            try:
                frame = graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            value = frame.metadata.get("lavfi.r128.I", value)

    for start in range(0, len(audio), 1024):
        chunk = np.ascontiguousarray(np.asarray(audio[start : start + 1024], np.float32)[None])
        frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, fractions.Fraction(1, sample_rate)
        graph.push(frame)
        drain()
    graph.push(None)
    drain()
    loudness = None if value is None else float(value)
    return loudness if loudness is not None and loudness > -70.0 else None


def check_run(run_dir: str | Path, target_lufs: float) -> dict:
    import pyarrow.parquet as pq

    from dub.workflows.media.audio import read_audio_native

    rows = [r for r in pq.read_table(Path(run_dir) / "report.parquet").to_pylist() if r["status"] == "done"]
    measured = []
    for row in rows:
        channels, rate = read_audio_native(row["output_mp4"] or row["output_audio"])
        if len(channels) != 1:  # ebur128 is fed one channel here; dub writes mono tracks
            raise ValueError(f"{row['video_id']}: {len(channels)} audio channels, this meter takes mono")
        audio = channels[0]
        measured.append(
            {
                "video_id": row["video_id"],
                "ebur128_lufs": ebur128_lufs(audio, rate),
                "recorded_lufs": row.get("loudness_lufs"),
                "peak_limited": row.get("loudness_peak_limited"),
            }
        )
    defined = [m for m in measured if m["ebur128_lufs"] is not None and not m["peak_limited"]]
    deviation = [abs(m["ebur128_lufs"] - target_lufs) for m in defined]
    return {
        "run_dir": str(run_dir),
        "target_lufs": target_lufs,
        "clips": len(measured),
        "clips_measured": len(defined),
        "peak_limited": sum(1 for m in measured if m["peak_limited"]),
        "max_deviation_lu": max(deviation, default=None),
        "mean_deviation_lu": float(np.mean(deviation)) if deviation else None,
        "per_clip": measured,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--target", type=float, required=True, help="the run's --loudness, LUFS")
    parser.add_argument("--json", type=Path, default=None, help="write the per-clip measurements here")
    args = parser.parse_args(argv)
    result = check_run(args.run_dir, args.target)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "per_clip"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
