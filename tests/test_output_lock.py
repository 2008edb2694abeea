"""One writer per output folder (storage/lock.py): a second dub run into a folder
another process is writing is refused with the holder named, before it touches anything, and a
holder that dies in any way (here SIGKILL) frees the folder."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dub.cli import app
from dub.storage.lock import LOCK_FILE, OutputInUse, exclusive_output
from tests.report_helpers import write_generate_run
from tests.train_helpers import write_synthetic_shards

REPO = Path(__file__).resolve().parents[1]
HOLD = """import sys, time
from dub.storage.lock import exclusive_output
with exclusive_output(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


@contextmanager
def held_by_another_process(directory: Path, command: str):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), command], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"held"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_second_writer_is_refused_and_a_killed_holder_frees_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with held_by_another_process(out, "generate") as holder:
        with pytest.raises(OutputInUse, match=rf"dub generate, pid {holder.pid} on {socket.gethostname()}"):
            with exclusive_output(out, "report"):
                pytest.fail("the folder was entered while another process held it")
        holder.kill()  # no clean-up runs in the holder: the kernel drops its lock
        holder.wait()
        with exclusive_output(out, "report"):
            info = json.loads((out / LOCK_FILE).read_text())
        assert info["command"] == "report" and info["pid"] != holder.pid


def test_dub_commands_refuse_an_output_folder_in_use(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a bell rings\n")
    run = write_generate_run(
        tmp_path / "run", [{"video_id": "v0", "path": tmp_path / "v0.mp4", "status": "failed", "error": "unreadable"}]
    )
    audio = tmp_path / "audio"
    audio.mkdir()
    shards = tmp_path / "shards"
    write_synthetic_shards(shards, samples=2, shard_size=2)
    out = tmp_path / "out"
    commands = {
        "generate": ["generate", "--prompts", str(prompts), "-o", str(out)],
        "report": ["report", str(run), "-o", str(out)],
        "extract": ["extract", "--audio-dir", str(audio), "-o", str(out)],
        "train": ["train", "--shards", str(shards), "--storage", str(tmp_path), "--name", "out", "--steps", "1"],
    }
    with held_by_another_process(out, "generate") as holder:
        for name, argv in commands.items():
            result = CliRunner().invoke(app, argv)
            said = " ".join(result.output.split())  # rich wraps long lines
            assert result.exit_code == 2, (name, result.output)
            assert f"is being written by another dub run (dub generate, pid {holder.pid}" in said, (name, said)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing else was written


def test_readers_of_a_folder_being_written_are_told(tmp_path: Path) -> None:
    """train refuses shards an extract is still writing (it would train on part of the set
    without a word); report scores a run generate is writing but says its report.parquet is
    older than the clips made since."""
    shards = tmp_path / "shards"
    write_synthetic_shards(shards, samples=2, shard_size=2)
    with held_by_another_process(shards, "extract") as holder:
        result = CliRunner().invoke(
            app, ["train", "--shards", str(shards), "--storage", str(tmp_path / "runs"), "--steps", "1"]
        )
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and f"are still being written (dub extract, pid {holder.pid}" in said, said
    assert not (tmp_path / "runs").exists()

    run = write_generate_run(
        tmp_path / "run", [{"video_id": "v0", "path": tmp_path / "v0.mp4", "status": "failed", "error": "unreadable"}]
    )
    with held_by_another_process(run, "generate") as holder:
        result = CliRunner().invoke(
            app,
            [
                "report",
                str(run),
                "-o",
                str(tmp_path / "report"),
                "--no-html",
                "--weights-dir",
                str(tmp_path / "no_weights"),
            ],
        )
        said = " ".join(result.output.split())
        assert result.exit_code == 0, said
        assert f"is being written (dub generate, pid {holder.pid}" in said and "not those generated since" in said
    result = CliRunner().invoke(
        app,
        [
            "report",
            str(run),
            "-o",
            str(tmp_path / "report"),
            "--no-html",
            "--weights-dir",
            str(tmp_path / "no_weights"),
        ],
    )
    assert result.exit_code == 0 and "is being written" not in result.output  # the writer is gone
