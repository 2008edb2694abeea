"""Shared test fixtures: the MMAudio conformance fixture root, one local Ray per session, and the
`requires` marks of tests/requirements.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["pytester"]  # tests/test_requirements.py runs small pytest sessions

# Tests read the CLI's output line by line. rich wraps it to the terminal's width, which a
# terminal, CI and pytest-xdist's workers (no terminal: 80 columns) each answer differently.
os.environ["COLUMNS"] = "200"

# Workers beyond this contend for memory: each one starts its own local Ray (ray_session).
MAX_TEST_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject's addopts): one test worker per core, at most MAX_TEST_WORKERS."""
    return max(1, min(os.cpu_count() or 1, MAX_TEST_WORKERS))


def mmaudio_fixture_root() -> Path:
    """Where the MMAudio reference tensors live.

    `DUB_FIXTURES_MMAUDIO` wins; else `../shared/fixtures/mmaudio` beside the project (the
    development layout); else the copy bundled in `tests/data/mmaudio_fixtures` (a user's clone).
    A missing root is an error, never a silent skip.
    """
    env = os.environ.get("DUB_FIXTURES_MMAUDIO")
    if env:
        root = Path(env)
        if not root.is_absolute():
            root = PROJECT_ROOT / root
    else:
        shared = PROJECT_ROOT.parent / "shared" / "fixtures" / "mmaudio"
        root = shared if shared.is_dir() else PROJECT_ROOT / "tests" / "data" / "mmaudio_fixtures"
    if not root.is_dir():
        raise FileNotFoundError(f"MMAudio fixtures not found at {root} (set DUB_FIXTURES_MMAUDIO)")
    return root


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """`requires` marks (tests/requirements.py's `require`): skip, or fail under CI=true, before
    any fixture of the test is set up."""
    from tests.requirements import missing

    for mark in item.iter_markers("requires"):
        if not mark.args[0]:
            missing(mark.kwargs["reason"])


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    return mmaudio_fixture_root()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (start/stop costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            # dub's own local minimum (workflows/ray_cluster.py): with less, Ray Data's
            # per-operator budgets hold each decoded window back for seconds
            object_store_memory=1024 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def _limit_threads():
    # 2-core CI: keep torch from oversubscribing next to Ray workers.
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass
    yield
