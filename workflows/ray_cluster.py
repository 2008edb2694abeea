"""Connecting to Ray: an existing cluster (`--address` / RAY_ADDRESS) or an embedded local one.

Resources are read from the cluster, never assumed: asking Ray for a GPU that does not exist
hangs instead of failing (SPEC §5), so GPU requests are derived from `cluster_resources()`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# A decode task works through its input block one window at a time, streaming each window's
# frames on as it goes; 128 windows of ~0.33 s CPU each keep a task under a minute, and 8 blocks
# per CPU keep every core busy to the end of the run.
MAX_WINDOWS_PER_BLOCK = 128
BLOCKS_PER_CPU = 8


@dataclass(frozen=True)
class ClusterResources:
    cpus: float
    gpus: float

    @property
    def accelerator(self) -> str:
        return "cuda" if self.gpus >= 1 else "cpu"


class RayAuthError(ValueError):
    """The cluster at --address wants an authentication token this machine does not have (or has
    another one): a setting to fix, said in one line."""


def connect(address: str | None = None, *, quiet: bool = True) -> ClusterResources:
    """Join `address` (else RAY_ADDRESS) or start a local Ray; return what the cluster offers.

    Token authentication (Ray 2.60+): a new local Ray turns it on and keeps its token in
    ~/.ray/auth_token, and so does `ray start --head` once that file exists; but a client given an
    address sends no token unless RAY_AUTH_MODE=token is set, and then retries for ~20 s before a
    traceback. So joining an address with a token at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token, where Ray looks) turns token mode on for this process, and a cluster that
    still refuses us is a RayAuthError naming what to set. The embedded Ray keeps Ray's default
    (token mode on), set explicitly so Ray does not warn that it chose it. RAY_AUTH_MODE set by the
    user always wins."""
    import logging

    if not _ray_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            _prepare_token_auth(address, os.environ)
        elif AUTH_MODE_VAR not in os.environ:
            _set_auth_mode(os.environ, "token")
        import ray

        kwargs = dict(
            include_dashboard=False,
            log_to_driver=not quiet,
            ignore_reinit_error=True,
            logging_level=logging.WARNING if quiet else logging.INFO,
        )
        if address:
            ray.init(address=address, **kwargs)
        else:
            # Local embedded Ray: keep the object store modest so laptops are not starved, and
            # count at least 2 CPUs, so a 1-core machine still runs a replica beside a decode task
            # (they share the core) rather than waiting forever for a second CPU.
            ray.init(object_store_memory=_local_object_store_bytes(), num_cpus=_local_cpus(), **kwargs)
    if quiet:
        _quiet_ray_data_console()
    return resources()


def _ray_initialized() -> bool:
    import ray

    return ray.is_initialized()


AUTH_MODE_VAR = "RAY_AUTH_MODE"


@dataclass(frozen=True)
class AuthToken:
    value: str
    source: str  # where it was found, for messages


def find_auth_token(environ: Mapping[str, str] | None = None, home: str | Path | None = None) -> AuthToken | None:
    """The token a Ray client would send, looked up where Ray looks, in Ray's order: the
    RAY_AUTH_TOKEN variable, the file RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token (whitespace
    stripped; empty counts as none). A RAY_AUTH_TOKEN_PATH that cannot be read is a RayAuthError,
    as it is for Ray."""
    environ = os.environ if environ is None else environ
    value = environ.get("RAY_AUTH_TOKEN", "").strip()
    if value:
        return AuthToken(value, "RAY_AUTH_TOKEN")
    named = environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        value = _read_token(Path(named))
        if not value:
            raise RayAuthError(
                f"RAY_AUTH_TOKEN_PATH is {named}, but that file cannot be read or is empty: "
                "point it at a copy of the cluster's token (`ray get-auth-token` on the head node "
                "prints it), or unset it"
            )
        return AuthToken(value, f"RAY_AUTH_TOKEN_PATH ({named})")
    default = Path(home if home is not None else Path.home()) / ".ray" / "auth_token"
    value = _read_token(default)
    return AuthToken(value, str(default)) if value else None


def _read_token(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _prepare_token_auth(address: str, environ) -> None:
    """Before joining `address`: turn token mode on when a token is at hand and the user left
    RAY_AUTH_MODE unset, then ask the cluster once whether it takes what Ray will send."""
    token = find_auth_token(environ)
    if AUTH_MODE_VAR not in environ and token is not None:
        _set_auth_mode(environ, "token")
    sends = token if environ.get(AUTH_MODE_VAR, "").lower() == "token" else None
    if _gcs_refuses(address):
        raise RayAuthError(_auth_advice(address, sends, environ.get(AUTH_MODE_VAR)))


def _auth_advice(address: str, sent: AuthToken | None, mode: str | None) -> str:
    remedy = (
        "set RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on its head node prints it) "
        "or copy the head node's ~/.ray/auth_token to this machine"
    )
    if sent is not None:
        return f"the Ray cluster at {address} refused the authentication token from {sent.source}; {remedy}"
    if mode is not None and mode.lower() != "token":
        return (
            f"the Ray cluster at {address} requires token authentication, but RAY_AUTH_MODE is {mode!r}; "
            f"unset it or set RAY_AUTH_MODE=token, and {remedy}"
        )
    return f"the Ray cluster at {address} requires token authentication and no token was found here; {remedy}"


def _set_auth_mode(environ, mode: str) -> None:
    """Set RAY_AUTH_MODE for this process and the Ray processes it starts, and make an already
    imported Ray read it again (Ray caches its config at import; Ray does the same when it turns
    token mode on itself)."""
    import sys

    environ[AUTH_MODE_VAR] = mode
    if environ is os.environ and "ray._raylet" in sys.modules:
        sys.modules["ray._raylet"].Config.initialize("")


def _gcs_refuses(address: str, connect_timeout_s: float = 5.0) -> bool:
    """Whether the cluster's GCS at host:port turns this process away as unauthenticated: one
    request with the token Ray will send (the one ray.init retries for ~20 s, printing a warning a
    second, before its traceback). Anything else (an address that is not host:port, a cluster that
    does not answer, a Ray without this client) is left for ray.init to report as it does."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return False
    try:  # the GCS client waits 40 s for an address that does not answer; a TCP connect says at once
        socket.create_connection((host.strip("[]"), int(port)), timeout=connect_timeout_s).close()
    except OSError:
        return False
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # pragma: no cover - another Ray layout: no pre-check
        return False
    with quiet_known_ray_lines(("InvalidAuthToken",)):  # Ray's warning before the exception: ours is the message
        try:
            GcsClient(address=address)
        except AuthenticationError:
            return True
        except Exception:  # noqa: BLE001 - not an authentication problem: ray.init reports it
            return False
    return False


# Lines Ray prints during every successful run that say nothing about the run, dropped from stderr
# while a run executes (quiet_known_ray_lines). Ray Data always passes its actor wrapper the map
# function as an object-store reference and asks for actor restarts, and Ray core logs that
# combination at ERROR level for each actor pool (ray-project/ray#57733: Ray's own wrapper; our
# replicas take only small keyword arguments).
KNOWN_RAY_NOISE = ("has constructor arguments in the object store and max_restarts > 0",)

# The filter process: copies its stdin to its stdout, dropping whole lines that contain any of its
# arguments; a partial line still partial after 0.2 s is passed on as it is (a prompt, a bar).
_FILTER = r"""
import os, select, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the run; the filter ends at EOF
drop = [a.encode() for a in sys.argv[1:]]
pending = b""
def out(data):
    while data:
        try:
            data = data[os.write(1, data):]
        except OSError:
            return
while True:
    if pending and not select.select([0], [], [], 0.2)[0]:
        out(pending)
        pending = b""
        continue
    chunk = os.read(0, 65536)
    if not chunk:
        break
    *lines, pending = (pending + chunk).split(b"\n")
    out(b"".join(line + b"\n" for line in lines if not any(d in line for d in drop)))
out(pending)
"""


@contextmanager
def quiet_known_ray_lines(patterns: tuple[str, ...] = KNOWN_RAY_NOISE) -> Iterator[None]:
    """Drop the lines of this process's stderr that contain one of `patterns` while the block runs.

    Ray's C++ core worker logs straight to file descriptor 2, so the filter sits there: fd 2
    becomes a pipe into a small filter process that writes every other line to the real stderr.
    A process, not a thread, so whatever is written just before a crash still gets out. Python's
    sys.stderr points at the real stderr meanwhile, so a terminal stays a terminal (progress bars)
    and Python's own messages skip the filter. Only for the run itself: processes started while
    fd 2 is the pipe would keep it (Ray's own are started before, by connect)."""
    import subprocess
    import sys

    if os.name != "posix":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    read_end, write_end = os.pipe()
    try:
        filter_proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _FILTER, *patterns],
            stdin=read_end,
            stdout=saved,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        for fd in (read_end, write_end, saved):
            os.close(fd)
        yield
        return
    os.close(read_end)
    python_stderr = sys.stderr
    sys.stderr = open(
        os.dup(saved),
        "w",
        buffering=1,
        encoding=getattr(python_stderr, "encoding", None) or "utf-8",
        errors="backslashreplace",
    )
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        try:
            sys.stderr.close()
        finally:
            sys.stderr = python_stderr
            os.dup2(saved, 2)  # the filter sees EOF: it passes on the rest and ends
            os.close(saved)
            try:
                filter_proc.wait(timeout=2)
            except subprocess.TimeoutExpired:  # a process started meanwhile still holds the pipe: the
                pass  # filter goes on passing its lines and ends with it


def model_replicas(requested: int | None, cluster: ClusterResources) -> int:
    """How many model replicas an actor pool beside CPU decode tasks gets: `requested`, else one
    per GPU, else one CPU actor. A count the cluster cannot hold is refused here, because Ray
    waits forever for it instead of failing: each replica takes a GPU (when there are GPUs) and
    a CPU, and at least one CPU must stay free for the decode tasks (seen: --replicas 2 and 3 on
    a 2-CPU machine hung until killed)."""
    use_gpu = cluster.gpus >= 1
    replicas = requested or (int(cluster.gpus) if use_gpu else 1)
    if use_gpu and replicas > cluster.gpus:
        raise ValueError(
            f"--replicas {replicas} needs {replicas} GPUs (one per replica), but the Ray cluster has "
            f"{cluster.gpus:g}; use --replicas {int(cluster.gpus)} or a bigger cluster (--address)"
        )
    if replicas + 1 > cluster.cpus:
        fits = int(cluster.cpus) - 1
        hint = f"use --replicas {fits}" if fits >= 1 else "give Ray at least 2 CPUs"
        raise ValueError(
            f"{replicas} model replica(s) take {replicas} CPUs and the decode tasks need at least one "
            f"more, but the Ray cluster has {cluster.cpus:g}; {hint} (Ray would wait forever)"
        )
    return replicas


def _quiet_ray_data_console() -> None:
    """Ray Data's per-dataset INFO lines (plan, "execution finished") drown our progress bar:
    raise its console handler to WARNING. Its log file (under the Ray session) keeps everything."""
    import logging

    import ray.data  # noqa: F401 - configures the "ray.data" logger and its handlers on import

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(logging.WARNING)
    # we turn Ray's progress bars off on purpose (dub draws its own): no warning about it
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def resources() -> ClusterResources:
    import ray

    res = ray.cluster_resources()
    return ClusterResources(cpus=float(res.get("CPU", 0.0)), gpus=float(res.get("GPU", 0.0)))


# Ray Data's per-operator budgets need the store to hold this many decoded windows, or they hold
# windows back (measured: 512 MiB stalls 56 MiB windows, 1 GiB does not; docs/benchmarks.md).
STORE_WINDOWS = 16


def warn_if_store_small(window_bytes: float) -> str | None:
    """Warn (and return the text) when the cluster's object store holds fewer than STORE_WINDOWS
    decoded windows of `window_bytes`."""
    import warnings

    import ray

    store = float(ray.cluster_resources().get("object_store_memory", 0.0))
    if store <= 0 or store >= STORE_WINDOWS * window_bytes:
        return None
    text = (
        f"Ray's object store ({store / 2**20:.0f} MiB) holds fewer than {STORE_WINDOWS} decoded windows "
        f"({window_bytes / 2**20:.0f} MiB each): Ray Data will hold windows back and the run will crawl; "
        f"give it at least {STORE_WINDOWS * window_bytes / 2**30:.1f} GiB (DUB_OBJECT_STORE_MB for the "
        "embedded Ray, `ray start --object-store-memory` on a cluster)"
    )
    warnings.warn(text, RuntimeWarning, stacklevel=2)
    return text


def window_blocks(windows: int, cpus: float) -> int:
    """How many blocks a dataset of `windows` window rows is cut into: one per window while
    that gives at most BLOCKS_PER_CPU per CPU (every window its own decode task), else at least
    that many and at most MAX_WINDOWS_PER_BLOCK windows each. One block per window does not scale: Ray
    Data needs ~1 ms per block to build the dataset and ~10 ms per block to schedule it
    (50 000 windows: 55 s before the first task starts; 2-core box, docs/benchmarks.md)."""
    if windows <= 0:
        return 1
    per_cpu = BLOCKS_PER_CPU * max(1, math.ceil(cpus))
    return int(min(windows, max(per_cpu, math.ceil(windows / MAX_WINDOWS_PER_BLOCK))))


def _local_cpus() -> int | None:
    """CPUs for the embedded Ray: None (Ray's own count, which honours container limits) unless
    that is below 2, then 2."""
    try:
        from ray._private.utils import get_num_cpus  # what Ray would count (cgroup quotas included)

        count = get_num_cpus()
    except Exception:  # noqa: BLE001 - a private helper: fall back to the affinity mask
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return None if count >= 2 else 2


def _local_object_store_bytes() -> int:
    env = os.environ.get("DUB_OBJECT_STORE_MB")
    if env:
        return int(float(env) * 2**20)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 2**30
    # At least 1 GiB (RAM allowing): Ray Data splits the store into per-operator budgets, and
    # with 512 MiB an operator's budget is smaller than one decoded 8 s window (~56 MiB), which
    # stalls the pipeline (3 sample clips: 35 s with 512 MiB, 11 s with 1 GiB, 2-core box).
    return int(min(max(total * 0.15, 2**30), total * 0.4, 8 * 2**30))
