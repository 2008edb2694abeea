#!/usr/bin/env python3
"""Time `dub generate` itself, end to end, and write one raw record of it: synthetic H.264 clips
are written, ingested and dubbed by the real command (Ray, decode tasks, model replicas,
writing), and OUT/generate_e2e.json holds the command, the device, clips/s and the run's own
summary. The figure a GPU run of dub is judged by, measured through the product rather than
composed from benchmark rows.

    python scripts/generate_e2e.py --out OUT                       # 32 clips, 8 s 720p, mmaudio-small-16k
    python scripts/generate_e2e.py --out OUT --batch-size 8 --compile --fp8
    python scripts/generate_e2e.py --out OUT --model demo --clips 2 --seconds 2 --size 64x64   # CPU smoke run

For a bundle other than the demo, when the --weights folder does not exist, full-size random
weights are written there first (scripts/random_generate_weights.py): the audio is meaningless, the work per clip is real.
Clip writing, ingest and weights are not timed; the record's `wall_s` and `clips_per_s` are
`dub generate`'s own (model load and Ray actor start included, as a user sees them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work folder: clips, manifest, run, record")
    p.add_argument("--model", default="mmaudio-small-16k", help="bundle to dub with (default: %(default)s)")
    p.add_argument("--weights", type=Path, default=None, help="weights folder (default: OUT/weights)")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the H.264 clips")
    p.add_argument("--batch-size", type=int, default=None, help="dub generate --batch-size (default: its own)")
    p.add_argument("--compile", action="store_true", help="dub generate --compile")
    p.add_argument("--fp8", action="store_true", help="dub generate --fp8")
    args = p.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must be WIDTHxHEIGHT, got {args.size!r}")
    if args.clips < 1 or args.seconds <= 0:
        p.error("--clips must be >= 1 and --seconds > 0")
    args.frame_size = (width, height)
    return args


def write_clips(folder: Path, n: int, seconds: float, size: tuple[int, int]) -> None:
    """n distinct clips (ingest flags identical files as duplicates): flashes at clip-specific times."""
    from dub.workflows.media.synth import write_synthetic_video

    for i in range(n):
        path = folder / f"clip_{i:04d}.mp4"
        if not path.exists():
            first = (0.2 + 0.37 * i) % max(seconds / 2, 0.2)
            write_synthetic_video(
                path, seconds=seconds, fps=25.0, size=size, pattern="flash_events", events=[first, seconds * 0.6]
            )


def commit() -> str | None:
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return found.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    from dub.workflows.bench import device_name, resolve_device

    args = parse_args(argv)
    out = args.out.resolve()
    clips, manifest, run_dir = out / "clips", out / "manifest.parquet", out / "run"
    clips.mkdir(parents=True, exist_ok=True)
    write_clips(clips, args.clips, args.seconds, args.frame_size)
    dub = [sys.executable, "-m", "dub.cli"]
    if not manifest.exists():
        subprocess.run([*dub, "ingest", str(clips), "-o", str(manifest), "-q"], check=True)
    env = dict(os.environ)
    if args.model != "demo":  # the demo bundle ships its weights in the repository
        weights = (args.weights or out / "weights").resolve()
        env["DUB_WEIGHTS_DIR"] = str(weights)
        if not weights.exists():
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "scripts" / "random_generate_weights.py"),
                    str(weights),
                    "--model",
                    args.model,
                ],
                check=True,
            )
    command = ["dub", "generate", "-m", str(manifest), "-o", str(run_dir), "--model", args.model, "--json"]
    command += [] if args.batch_size is None else ["--batch-size", str(args.batch_size)]
    command += [flag for flag, on in (("--compile", args.compile), ("--fp8", args.fp8)) if on]
    started = time.perf_counter()
    result = subprocess.run([*dub, *command[1:]], env=env, capture_output=True, text=True)
    outer_s = time.perf_counter() - started
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        print(f"dub generate failed (exit {result.returncode})", file=sys.stderr)
        return result.returncode
    summary = json.loads((run_dir / "summary.json").read_text())
    record = {
        "command": shlex.join(command),
        "device": device_name(resolve_device("auto")),  # where dub generate puts its replicas
        "clips_per_s": summary["clips_per_s"],
        "wall_s": summary["wall_s"],
        "process_wall_s": outer_s,  # with Python start-up and Ray's, which the summary leaves out
        "clips": args.clips,
        "clip": {"seconds": args.seconds, "size": list(args.frame_size), "codec": "h264"},
        "model": args.model,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "summary": summary,
    }
    (out / "generate_e2e.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("command", "device", "clips_per_s", "wall_s")}))
    return 0 if summary.get("failed", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
