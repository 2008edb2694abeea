"""Real media for the report/metrics tests: clips whose sounds and motion happen at known times.

A clip is a grey background with a bright square that jumps to a new place at each event
time (an abrupt motion peak) and, optionally, an audio track of decaying noise bursts that
start at the same times. Everything is encoded with PyAV (H.264 + AAC), as real runs are.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
FPS = 25


def burst_audio(
    times_s, duration_s: float, sample_rate: int = SAMPLE_RATE, seed: int = 0, decay_s: float = 0.03
) -> np.ndarray:
    """Quiet noise floor plus a decaying noise burst starting at every time in `times_s`."""
    rng = np.random.default_rng(seed)
    wav = 0.001 * rng.standard_normal(int(duration_s * sample_rate))
    length = int(0.25 * sample_rate)
    env = np.exp(-np.arange(length) / (decay_s * sample_rate))
    for t in times_s:
        start = int(t * sample_rate)
        seg = wav[start : start + length]
        seg += 0.8 * env[: len(seg)] * rng.standard_normal(len(seg))
    return wav.astype(np.float32)


def event_frames(times_s, duration_s: float, fps: int = FPS, size: int = 64, seed: int = 0) -> np.ndarray:
    """(T, size, size, 3) uint8 frames: the square moves only at the event frames."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * fps))
    event_idx = {int(round(t * fps)) for t in times_s}
    frames = np.full((n, size, size, 3), 40, dtype=np.uint8)
    side = size // 4
    y, x = rng.integers(0, size - side, 2)
    for i in range(n):
        if i in event_idx:
            y, x = rng.integers(0, size - side, 2)
        frames[i, y : y + side, x : x + side] = 230
    return frames


def write_clip(
    path: Path, frames: np.ndarray, wav: np.ndarray | None = None, sample_rate: int = SAMPLE_RATE, fps: int = FPS
) -> Path:
    """Encode frames (H.264) and an optional mono track (AAC) into `path`."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height = frames.shape[2], frames.shape[1]
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": "18", "preset": "ultrafast"}
        aus = None
        if wav is not None:
            aus = out.add_stream("aac", rate=sample_rate)
            aus.layout = "mono"
        for frame in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if aus is not None:
            block = 1024
            for start in range(0, len(wav), block):
                chunk = wav[start : start + block].reshape(1, -1).astype(np.float32)
                af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                af.sample_rate = sample_rate
                af.pts = start
                af.time_base = Fraction(1, sample_rate)
                for packet in aus.encode(af):
                    out.mux(packet)
            for packet in aus.encode():
                out.mux(packet)
    return path


def write_wav(path: Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """A reference audio file (FLAC) written with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        st = out.add_stream("flac", rate=sample_rate)
        st.layout = "mono"
        pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        af = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        af.sample_rate = sample_rate
        for packet in st.encode(af):
            out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    return path


def write_events(video_path: Path, times_s) -> Path:
    sidecar = video_path.with_name(video_path.stem + ".events.json")
    sidecar.write_text(json.dumps({"events": [float(t) for t in times_s]}))
    return sidecar


def write_generate_run(run_dir: Path, rows: list[dict]) -> Path:
    """A generate run as `dub generate` lays it out: run.json, report.parquet, mp4/.

    Each row: video_id, path (source), status, and for done rows `output_mp4`; optional `prompt`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"mode": "video-to-audio", "sample_rate": SAMPLE_RATE}))
    table = {
        "video_id": [r["video_id"] for r in rows],
        "path": [str(r["path"]) for r in rows],
        "status": [r.get("status", "done") for r in rows],
        "error": [r.get("error") for r in rows],
        "output_mp4": [None if r.get("output_mp4") is None else str(r["output_mp4"]) for r in rows],
        "output_shard": [None for _ in rows],
        "audio_duration_s": [r.get("audio_duration_s", 0.0) for r in rows],
        "t_total_s": [0.1 for _ in rows],
    }
    schema = pa.schema(
        [
            ("video_id", pa.string()),
            ("path", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("output_mp4", pa.string()),
            ("output_shard", pa.string()),
            ("audio_duration_s", pa.float64()),
            ("t_total_s", pa.float64()),
        ]
    )
    if any("prompt" in r for r in rows):
        table["prompt"] = [r.get("prompt") for r in rows]
        schema = schema.append(pa.field("prompt", pa.string()))
    pq.write_table(pa.Table.from_pydict(table, schema=schema), run_dir / "report.parquet")
    return run_dir


def decode_png(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 pixels of PNG bytes, decoded by FFmpeg (through PyAV): an independent
    decoder for the project's own PNG encoder and for Chromium's screenshots."""
    import io

    import av

    with av.open(io.BytesIO(data), format="png_pipe") as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")
