"""`dub ingest`: scan folders for videos, probe each one, write the manifest.

    scan (walk, filter, skip hidden, loop-safe) -> probe in worker processes (hash + PyAV,
    per-file timeout, crash-proof) -> merge with the existing manifest -> flag duplicates
    -> write atomically

One bad file never stops a run: every failure becomes a row whose `error` says what is wrong.
Re-ingesting reuses rows of unchanged files (same path, size and mtime), probes new or
changed ones, drops rows whose file is gone, and keeps ids (they come from the bytes).
Nothing probed is lost to a crash or Ctrl-C: probed rows are journaled beside the manifest
(`.NAME.probed/`, Parquet parts) as they come back, the next run reuses them like rows of the
manifest, and a finished run removes the journal.
Probing uses a small pool of local processes: it is I/O and header parsing, one file at a
time, so a process pool is enough and a hung or crashing probe can be killed alone.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dub.storage.location import is_uri

DEFAULT_EXTENSIONS = (
    "mp4",
    "m4v",
    "mov",
    "mkv",
    "webm",
    "avi",
    "mpg",
    "mpeg",
    "ts",
    "mts",
    "m2ts",
    "flv",
    "wmv",
    "3gp",
    "ogv",
)


@dataclass(frozen=True)
class IngestConfig:
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS  # lower case, no dot
    workers: int | None = None  # probe processes; None: min(cpu count, 8); 0: in this process (no timeouts)
    timeout_s: float = 60.0  # per file, plus 1 s per 20 MB so big files get time to hash
    silence_threshold_db: float = -60.0
    silence_scan_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.extensions:
            raise ValueError("give at least one file extension to scan for")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout_s}")

    def timeout_for(self, size_bytes: int) -> float:
        return self.timeout_s + size_bytes / 20e6


@dataclass
class ScanResult:
    files: list[Path | str] = field(default_factory=list)  # candidate videos, absolute (or URIs), sorted
    directories: list[Path] = field(default_factory=list)  # directories named like videos
    warnings: list[str] = field(default_factory=list)  # folders that could not be listed, loops


@dataclass
class IngestSummary:
    output: Path
    rows: int = 0
    scanned: int = 0
    probed: int = 0  # new or changed files probed in this run
    reused: int = 0  # unchanged files whose rows were kept
    resumed: int = 0  # of those, rows an interrupted run had probed (its journal)
    removed: int = 0  # rows dropped because their file is gone
    ok: int = 0
    errors: int = 0
    duplicates: int = 0
    total_hours: float = 0.0  # video duration of the ok rows
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)  # kind -> one message
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


# -- scanning -----------------------------------------------------------------------------


def scan(roots: Iterable[str | Path], extensions: Iterable[str] = DEFAULT_EXTENSIONS) -> ScanResult:
    """Video files under `roots` (files named directly are always taken). Hidden files and
    folders (name starts with '.') are skipped; symlinked folders are followed once (loops
    and repeats are skipped by device + inode)."""
    exts = {e.lower().lstrip(".") for e in extensions}
    result = ScanResult()
    files: set[Path] = set()
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        if is_uri(root):
            _list_objects(str(root), exts, files)
            continue
        root = Path(os.path.abspath(root))
        if root.is_dir():
            _walk(root, exts, files, seen_dirs, result)
        elif root.exists() or root.is_symlink():
            files.add(root)
        else:
            raise FileNotFoundError(f"{root} does not exist")
    result.files = sorted(files, key=str)
    result.directories = sorted(set(result.directories))
    return result


def _walk(root: Path, exts: set[str], files: set[Path], seen_dirs: set[tuple[int, int]], result: ScanResult) -> None:
    def on_error(exc: OSError) -> None:
        result.warnings.append(f"cannot list {exc.filename}: {exc.strerror or exc}")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=on_error):
        here = Path(dirpath)
        try:
            st = os.stat(here)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            dirnames[:] = []
            if here != root:
                result.warnings.append(f"skipped {here}: a symbolic link to a folder already scanned (loop?)")
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in dirnames:
            if _has_ext(name, exts):
                result.directories.append(here / name)
        for name in filenames:
            if not name.startswith(".") and _has_ext(name, exts):
                files.add(here / name)


def _list_objects(root: str, exts: set[str], files: set) -> None:
    """Video objects under an object-storage prefix (or the one object it names); names with a
    hidden part (".x/", ".x.mp4") are skipped as on disk."""
    from dub.storage.location import check_uri, list_objects, stat

    root = check_uri(root)
    single = stat(root)
    if single is not None:
        files.add(root)
        return
    found = list_objects(root)
    if not found:
        raise FileNotFoundError(f"{root} holds no objects (or the bucket cannot be listed with these credentials)")
    for obj in found:
        parts = obj.uri[len(root) :].strip("/").split("/")
        if not any(part.startswith(".") for part in parts) and _has_ext(parts[-1], exts):
            files.add(obj.uri)


def _has_ext(name: str, exts: set[str]) -> bool:
    _, dot, ext = name.rpartition(".")
    return bool(dot) and ext.lower() in exts


# -- probing one file (runs in worker processes) --------------------------------------------


def probe_file(path: str, silence_threshold_db: float = -60.0, silence_scan_s: float = 600.0) -> dict:
    """A manifest row (without prompt) for one file; never raises."""
    from dub.manifests.ids import content_id, name_id
    from dub.workflows.media.errors import MediaError
    from dub.workflows.media.probe import probe_video
    from dub.workflows.media.streams import as_location, check_regular_file

    start = time.perf_counter()
    p = as_location(path)
    row: dict = {"path": display_path(path), "video_id": name_id(path), "status": "error"}
    try:
        if row["path"] != path:
            raise MediaError(
                "bad_name", "the file name is not valid UTF-8, so it cannot be stored in the manifest; rename the file"
            )
        row.update(_size_and_mtime(path))  # empty when it cannot be read: the checks below say why
        if not is_uri(path):
            check_regular_file(p)
        try:
            row["video_id"] = content_id(p)
        except PermissionError as exc:
            raise MediaError(
                "unreadable", f"permission denied: cannot read {p.name} (check its permissions, e.g. `chmod a+r`)"
            ) from exc
        except OSError as exc:
            raise MediaError("unreadable", f"cannot read {p.name}: {exc.strerror or exc}") from exc
        probe = probe_video(p, silence_threshold_db=silence_threshold_db, silence_scan_s=silence_scan_s)
        row.update(probe.as_dict(), status="ok")
    except MediaError as exc:
        row.update(error_kind=exc.kind, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - an unexpected failure is this file's problem, not the run's
        row.update(
            error_kind="internal",
            error=f"unexpected error while probing ({type(exc).__name__}: {exc}); please report it with the file",
        )
    row["probe_s"] = time.perf_counter() - start
    return row


def display_path(path: str) -> str:
    """`path` as valid UTF-8 (undecodable bytes from the file system become U+FFFD)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _directory_row(path: Path) -> dict:
    from dub.manifests.ids import name_id

    return {
        "path": display_path(str(path)),
        "video_id": name_id(str(path)),
        "status": "error",
        "error_kind": "directory",
        "error": f"{path.name} is a directory named like a video, not a video file (its contents are scanned as usual)",
    }


# -- the probe pool -----------------------------------------------------------------------
# Workers are plain child interpreters speaking JSON lines on stdin/stdout: no fork (the parent
# may hold torch or Ray threads) and no multiprocessing spawn (which re-runs the caller's main
# script), and each one can be killed alone by its pid.

_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


# Test seam: a probe worker given a file of this name never answers, as a probe stuck on a stalled
# disk or network mount does (a real hang cannot be made on demand). Unset in normal use.
HANG_ENV = "DUB_TEST_PROBE_HANGS_ON"


def _worker_stdio() -> None:
    """Child side: read {"key", "path", ...} lines, answer {"key", "row"} lines."""
    import json
    import sys

    hang_on = os.environ.get(HANG_ENV)
    for line in sys.stdin:
        task = json.loads(line)
        if hang_on and os.path.basename(task["path"]) == hang_on:
            while True:
                time.sleep(3600)
        row = probe_file(task["path"], task["threshold_db"], task["scan_s"])
        sys.stdout.write(json.dumps({"key": task["key"], "row": row}) + "\n")
        sys.stdout.flush()


class _Worker:
    def __init__(self):
        import subprocess
        import sys
        import tempfile

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_PROJECT_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
        self.stderr = tempfile.TemporaryFile()  # kept to explain a crash
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import dub.workflows.ingest as m; m._worker_stdio()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self.task: tuple[int, str] | None = None
        self.deadline = 0.0
        self.limit = 0.0

    def send(self, key: int, path: str, config: IngestConfig) -> None:
        import json

        self.task = (key, path)
        self.limit = config.timeout_for(_size_of(path))
        self.deadline = time.monotonic() + self.limit
        self.proc.stdin.write(
            json.dumps(
                {"key": key, "path": path, "threshold_db": config.silence_threshold_db, "scan_s": config.silence_scan_s}
            )
            + "\n"
        )
        self.proc.stdin.flush()

    def receive(self) -> tuple[int, dict] | None:
        """The answer, or None when the worker died."""
        import json

        line = self.proc.stdout.readline()
        if not line:
            return None
        message = json.loads(line)
        self.task = None
        return message["key"], message["row"]

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - still running: end it
            self.kill()
        self.proc.stdout.close()
        self.stderr.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def crash_report(self) -> str:
        """How the worker died, with the last line it printed."""
        import signal

        code = self.proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        self.stderr.seek(0)
        lines = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
        return f"{how}: {lines[-1][:300]}" if lines else how


def probe_all(paths: list[str], config: IngestConfig, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Probe `paths` (rows in the same order). Each file runs in a worker process with a
    timeout; a worker that hangs is killed, one that crashes is replaced, and the file gets
    an error row either way."""
    rows: list[dict | None] = [None] * len(paths)

    def done(key: int, row: dict) -> None:
        rows[key] = row
        if on_row is not None:
            on_row(row)

    workers = config.workers if config.workers is not None else min(os.cpu_count() or 1, 8)
    workers = min(workers, len(paths))
    if workers <= 0:
        for key, path in enumerate(paths):
            done(key, probe_file(path, config.silence_threshold_db, config.silence_scan_s))
        return rows  # type: ignore[return-value]
    _run_pool(paths, config, workers, done)
    return rows  # type: ignore[return-value]


def _run_pool(paths: list[str], config: IngestConfig, size: int, done: Callable[[int, dict], None]) -> None:
    from multiprocessing.connection import wait

    pending = deque(enumerate(paths))
    pool = [_Worker() for _ in range(size)]
    try:
        while pending or any(w.task for w in pool):
            for worker in pool:
                if worker.task is None and pending:
                    worker.send(*pending.popleft(), config)
            busy = [w for w in pool if w.task is not None]
            wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = set(wait([w.proc.stdout for w in busy], timeout=wait_s))
            for index, worker in enumerate(pool):
                if worker.task is None:
                    continue
                key, path = worker.task
                if worker.proc.stdout in ready:
                    answer = worker.receive()
                    if answer is not None:
                        done(*answer)
                        continue
                    worker.proc.wait()
                    done(
                        key,
                        _failure_row(
                            path,
                            "crash",
                            f"the probe crashed on this file ({worker.crash_report()}); the file is probably corrupt",
                        ),
                    )
                elif time.monotonic() >= worker.deadline:
                    worker.kill()
                    done(
                        key,
                        _failure_row(
                            path,
                            "timeout",
                            f"probing took longer than {worker.limit:.0f} s and was "
                            f"stopped; the file may be damaged or on a stalled disk",
                        ),
                    )
                else:
                    continue
                worker.stop()
                pool[index] = _Worker()
    finally:
        for worker in pool:
            worker.stop()


def _size_and_mtime(path: str | Path) -> dict:
    """{"size_bytes", "mtime_ns"} of a file or object; {} when it cannot be read."""
    try:
        if is_uri(path):
            from dub.storage.location import stat

            info = stat(str(path))
            return {} if info is None else {"size_bytes": info.size, "mtime_ns": info.mtime_ns}
        st = os.stat(path)
        return {"size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {}


def _size_of(path: str) -> int:
    return _size_and_mtime(path).get("size_bytes", 0)


def _failure_row(path: str, kind: str, message: str) -> dict:
    from dub.manifests.ids import name_id

    row = {
        "path": display_path(path),
        "video_id": name_id(path),
        "status": "error",
        "error_kind": kind,
        "error": message,
    }
    row.update(_size_and_mtime(path))
    return row


# -- the whole run ------------------------------------------------------------------------


def read_prompt(video: Path | str) -> str:
    """The sidecar prompt NAME.txt beside NAME.ext, stripped; "" when there is none."""
    if is_uri(video):
        from dub.storage.location import exists, read_bytes

        sidecar = str(video).rsplit(".", 1)[0] + ".txt"
        try:
            return read_bytes(sidecar).decode("utf-8", "replace").strip() if exists(sidecar) else ""
        except OSError:
            return ""
    sidecar = video.with_suffix(".txt")
    try:
        return sidecar.read_bytes().decode("utf-8", "replace").strip() if sidecar.is_file() else ""
    except OSError:
        return ""


def ingest(
    roots: Iterable[str | Path],
    output: str | Path,
    config: IngestConfig = IngestConfig(),
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Scan `roots`, probe what is new or changed, and write the manifest to `output`."""
    from dub.manifests.io import manifest_from_rows, read_manifest, write_parquet_atomic
    from dub.manifests.schema import MANIFEST_SCHEMA
    from dub.storage.journal import Journal, read_journal
    from dub.storage.location import exists

    started = time.perf_counter()
    output = str(output) if is_uri(output) else Path(output)
    summary = IngestSummary(output=output)
    found = scan(roots, config.extensions)
    summary.scanned = len(found.files)
    summary.warnings = list(found.warnings)

    previous = read_manifest(output).to_pylist() if exists(str(output)) else []
    previous_by_path = {row["path"]: row for row in previous}
    journal_dir = probe_journal_dir(output)
    interrupted = read_journal(journal_dir, key="path")  # newer than the manifest: it wins
    rows_by_path: dict[str, dict] = {}
    to_probe: list[str] = []
    for path in found.files:
        key = display_path(str(path))
        old = interrupted.get(key) or previous_by_path.get(key)
        if old is not None and old["status"] in ("ok", "duplicate") and _unchanged(path, old):
            rows_by_path[key] = dict(old)
            summary.reused += 1
            summary.resumed += key in interrupted
        else:
            to_probe.append(str(path))
    for directory in found.directories:
        rows_by_path[display_path(str(directory))] = _directory_row(directory)

    total = len(to_probe)
    progress = {"done": 0}
    journal = (
        Journal(journal_dir, MANIFEST_SCHEMA, flush_every_s=JOURNAL_FLUSH_S, flush_rows=1000) if to_probe else None
    )

    def on_row(row: dict) -> None:
        journal.add([row])
        progress["done"] += 1
        if on_progress is not None:
            on_progress(progress["done"], total)

    try:
        for row in probe_all(to_probe, config, on_row):
            rows_by_path[row["path"]] = row
    finally:  # a crash, a kill of the pool or Ctrl-C keeps what was probed
        if journal is not None:
            journal.flush()
    summary.probed = total

    for path in found.files:  # sidecar prompts may change without the video changing
        key = display_path(str(path))
        if key in rows_by_path:
            rows_by_path[key]["prompt"] = read_prompt(path)
    for key, old in previous_by_path.items():  # rows from other roots stay while their file exists
        if key in rows_by_path:
            continue
        if exists(key) if is_uri(key) else os.path.lexists(key):
            rows_by_path[key] = dict(old)
        else:
            summary.removed += 1

    rows = [rows_by_path[key] for key in sorted(rows_by_path)]
    for row in rows:
        row.setdefault("prompt", "")
        if row.get("prompt") is None:
            row["prompt"] = ""
    _flag_duplicates(rows, {row["path"] for row in previous if row["status"] == "ok"})
    write_parquet_atomic(manifest_from_rows(rows), output)
    shutil.rmtree(journal_dir, ignore_errors=True)  # every probed row is in the manifest now
    _summarize(rows, summary)
    summary.elapsed_s = time.perf_counter() - started
    return summary


# Probed rows go to the journal when one comes back this long after the last write (each write is
# one small Parquet part): a SIGKILL, which runs no cleanup, loses about the last second of probes.
JOURNAL_FLUSH_S = 1.0


def probe_journal_dir(output: Path | str) -> Path:
    """Where rows probed for `output` wait until the manifest is written: `.NAME.probed/` beside
    it, or for a manifest in object storage, in its local stage folder (dub.storage.mirror)."""
    if is_uri(output):
        from dub.storage.mirror import stage_for

        return stage_for(str(output)) / "probed"
    return output.with_name(f".{output.name}.probed")


def _unchanged(path: Path | str, old: dict) -> bool:
    now = _size_and_mtime(path)
    return bool(now) and now["size_bytes"] == old.get("size_bytes") and now["mtime_ns"] == old.get("mtime_ns")


def _flag_duplicates(rows: list[dict], previously_ok: set[str]) -> None:
    """Among usable rows with the same content id, keep one as ok (the one that was ok
    before, else the first path) and mark the others duplicate_of it."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["status"] in ("ok", "duplicate"):
            groups.setdefault(row["video_id"], []).append(row)
    for group in groups.values():
        keeper = min(group, key=lambda r: (r["path"] not in previously_ok, r["path"]))
        for row in group:
            if row is keeper:
                row.update(status="ok", duplicate_of=None)
            else:
                row.update(status="duplicate", duplicate_of=keeper["path"])


def _summarize(rows: list[dict], summary: IngestSummary) -> None:
    kinds: Counter[str] = Counter()
    for row in rows:
        status = row["status"]
        if status == "ok":
            summary.ok += 1
            summary.total_hours += float(row.get("duration_s") or 0.0) / 3600.0
        elif status == "duplicate":
            summary.duplicates += 1
        else:
            summary.errors += 1
            kind = row.get("error_kind") or "error"
            kinds[kind] += 1
            summary.error_examples.setdefault(kind, row.get("error") or "")
    summary.rows = len(rows)
    summary.errors_by_kind = dict(kinds.most_common())
