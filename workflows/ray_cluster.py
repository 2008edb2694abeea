"""Connecting to Ray: an existing cluster (`--address` / RAY_ADDRESS) or an embedded local one.

Resources are read from the cluster, never assumed: asking Ray for a GPU that does not exist
hangs instead of failing (SPEC §5), so GPU requests are derived from `cluster_resources()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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
            # Local embedded Ray: keep the object store modest so laptops are not starved.
            ray.init(object_store_memory=_local_object_store_bytes(), **kwargs)
    return resources()


def resources() -> ClusterResources:
    import ray

    res = ray.cluster_resources()
    return ClusterResources(cpus=float(res.get("CPU", 0.0)), gpus=float(res.get("GPU", 0.0)))


def _local_object_store_bytes() -> int:
    env = os.environ.get("DUB_OBJECT_STORE_MB")
    if env:
        return int(float(env) * 2**20)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 2**30
    return int(min(max(total * 0.15, 512 * 2**20), 8 * 2**30))
