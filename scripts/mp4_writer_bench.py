#!/usr/bin/env python3
"""Time dub's mp4 writer (remux_with_audio: the source's video copied, 8 s of 16 kHz audio as AAC)
on an 8 s 720p H.264 clip, one thread, after one warm-up; prints JSON."""

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dub.workflows.media.remux import remux_with_audio
from dub.workflows.media.synth import write_synthetic_video

with tempfile.TemporaryDirectory() as tmp:
    src = write_synthetic_video(Path(tmp) / "src_720p.mp4", seconds=8.0, fps=25, size=(1280, 720)).path
    audio = (np.random.default_rng(0).standard_normal(8 * 16000) * 0.1).astype(np.float32)
    times = []
    for i in range(11):
        t0 = time.perf_counter()
        remux_with_audio(src, audio, 16000, Path(tmp) / f"out{i}.mp4")
        times.append(time.perf_counter() - t0)
    out = {
        "what": "remux_with_audio, 8 s 720p H.264 source, 8 s 16 kHz mono audio -> AAC (dub's default)",
        "ms": [round(t * 1000, 1) for t in times[1:]],
        "median_ms": round(statistics.median(times[1:]) * 1000, 1),
        "source_bytes": os.path.getsize(src),
        "output_bytes": os.path.getsize(Path(tmp) / "out10.mp4"),
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }
    print(json.dumps(out))
