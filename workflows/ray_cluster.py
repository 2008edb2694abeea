"""Connecting to Ray: an existing cluster (`--address` / RAY_ADDRESS) or an embedded local one.

Resources are read from the cluster, never assumed: asking Ray for a GPU that does not exist
hangs instead of failing (SPEC §5), so GPU requests are derived from `cluster_resources()`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

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


def connect(address: str | None = None, *, quiet: bool = True) -> ClusterResources:
    """Join `address` (else RAY_ADDRESS) or start a local Ray; return what the cluster offers."""
    import logging

    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs = dict(include_dashboard=False, log_to_driver=not quiet, ignore_reinit_error=True,
                      logging_level=logging.WARNING if quiet else logging.INFO)
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


def model_replicas(requested: int | None, cluster: ClusterResources) -> int:
    """How many model replicas an actor pool beside CPU decode tasks gets: `requested`, else one
    per GPU, else one CPU actor. A count the cluster cannot hold is refused here, because Ray
    waits forever for it instead of failing: each replica takes a GPU (when there are GPUs) and
    a CPU, and at least one CPU must stay free for the decode tasks (seen: --replicas 2 and 3 on
    a 2-CPU machine hung until killed)."""
    use_gpu = cluster.gpus >= 1
    replicas = requested or (int(cluster.gpus) if use_gpu else 1)
    if use_gpu and replicas > cluster.gpus:
        raise ValueError(f"--replicas {replicas} needs {replicas} GPUs (one per replica), but the Ray cluster has "
                         f"{cluster.gpus:g}; use --replicas {int(cluster.gpus)} or a bigger cluster (--address)")
    if replicas + 1 > cluster.cpus:
        fits = int(cluster.cpus) - 1
        hint = f"use --replicas {fits}" if fits >= 1 else "give Ray at least 2 CPUs"
        raise ValueError(f"{replicas} model replica(s) take {replicas} CPUs and the decode tasks need at least one "
                         f"more, but the Ray cluster has {cluster.cpus:g}; {hint} (Ray would wait forever)")
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
    text = (f"Ray's object store ({store / 2**20:.0f} MiB) holds fewer than {STORE_WINDOWS} decoded windows "
            f"({window_bytes / 2**20:.0f} MiB each): Ray Data will hold windows back and the run will crawl; "
            f"give it at least {STORE_WINDOWS * window_bytes / 2**30:.1f} GiB (DUB_OBJECT_STORE_MB for the "
            "embedded Ray, `ray start --object-store-memory` on a cluster)")
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
