"""Running the real `dub` CLI as a child process, and killing it with everything it started.

start_cli(args, logs, name) -> Popen    `python -m dub.cli ARGS`, leader of a new session
run_cli(args, logs, name) -> (out, err) to completion; fails the test on a non-zero exit
wait_until(done, proc, logs, name)      poll until done() is truthy, failing if the CLI ends
kill_driver(proc) / kill_session(proc)  SIGKILL the CLI alone / its whole session, Ray included
session(sid), temporaries(root), ERROR_LOOKING
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# What a successful run must not print: Ray C++ error lines ("[2026-... E 123 123] file.cc:1: ..."),
# Python errors and tracebacks, and Ray's auth chatter (warnings about token mode, failed handshakes)
ERROR_LOOKING = re.compile(
    r"^\[[^\]]* E \d+ \d+\]|Traceback|\bERROR\b|InvalidAuthToken|Token authentication is "
    r"(enabled|disabled)|core_worker\.cc",
    re.MULTILINE,
)


def start_cli(args: list[str], logs: Path, name: str) -> subprocess.Popen:
    """`python -m dub.cli ARGS` as the leader of a new session; stdout/stderr to logs/NAME.*."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), COLUMNS="200")
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.out", "wb") as out, open(logs / f"{name}.err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "dub.cli", *args], stdout=out, stderr=err, env=env, cwd=logs, start_new_session=True
        )


def session(sid: int) -> list[tuple[int, str]]:
    """(pid, name) of the live processes of session `sid` (zombies are dead already)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append((int(entry.name), name))
    return found


def kill_session(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGKILL every process of `proc`'s session (the CLI and whatever it left running) and wait
    until none is left."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid, _ in session(proc.pid):  # a process that left the group but not the session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.poll()
        left = session(proc.pid)
        if not left:
            return
        assert time.monotonic() < deadline, f"processes of the killed run would not die: {left}"
        time.sleep(0.1)


def wait_until(
    done: Callable[[], object],
    proc: subprocess.Popen,
    logs: Path,
    name: str,
    timeout_s: float = 300.0,
    poll_s: float = 0.01,
):
    """Poll `done()` until it is truthy; fail if the CLI ends first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(
                f"`dub {name}` ended (exit {proc.returncode}) before the point to kill it:\n"
                + (logs / f"{name}.err").read_text(errors="replace")[-3000:]
            )
        time.sleep(poll_s)
    pytest.fail(f"`dub {name}` never reached the point to kill it in {timeout_s:.0f} s")


def run_cli(args: list[str], logs: Path, name: str, timeout_s: float = 300.0) -> tuple[str, str]:
    """The CLI to completion (its session cleaned up whatever happens): (stdout, stderr)."""
    proc = start_cli(args, logs, name)
    try:
        proc.wait(timeout=timeout_s)
    finally:
        kill_session(proc)
    out, err = ((logs / f"{name}.{k}").read_text(errors="replace") for k in ("out", "err"))
    assert proc.returncode == 0, f"`dub {name}` failed (exit {proc.returncode}):\n{err[-3000:]}"
    return out, err


def kill_driver(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def temporaries(root: Path) -> list[str]:
    """Files being written when a run died: ours (.NAME.X.tmp), Parquet's, the media writers'
    (.STEM.partial-PID.EXT); anything hidden but the output lock counts."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file()
        and (p.name.startswith(".") and p.name != ".dub.lock" or p.name.endswith(".tmp") or ".partial" in p.name)
    )
