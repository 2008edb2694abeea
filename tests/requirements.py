"""What a test needs from the machine, and what happens when it is missing.

On a developer's machine a missing requirement (chromium, torchvision, open_clip, torchaudio, a
pytest feature) skips the test with the reason. Under `CI=true` the same test FAILS with that
reason: CI installs everything the suite needs, so a skip there would be a check silently not
run, and a green CI would no longer mean what a fresh machine gets.

Two forms of one rule (`missing`):

* `require(condition, reason)`: a mark (decorator or `pytestmark`), decided before the test's
  fixtures are set up (tests/conftest.py's pytest_runtest_setup), so a missing fixture provider
  such as pytest < 9's absent `subtests` gives the reason, not a fixture error;
* `require_module(name, reason)`: inside a test, returns the imported module.

GPU-only conditions (CUDA, Triton) stay plain `pytest.skip`s: CI never has a GPU.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

__all__ = ["CI_ENV", "PYTEST_HAS_SUBTESTS", "missing", "on_ci", "require", "require_module"]

CI_ENV = "CI"
# pytest 9 ships the `subtests` fixture (before: the pytest-subtests plugin, not in our lock)
PYTEST_HAS_SUBTESTS = int(pytest.__version__.split(".")[0]) >= 9


def on_ci() -> bool:
    """`CI=true` (also 1/yes, any case), as CI services and .ci/run set it."""
    return os.environ.get(CI_ENV, "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> NoReturn:
    """A requirement of the running test is missing: skip, or fail under CI=true."""
    if on_ci():
        pytest.fail(f"required under {CI_ENV}=true, but missing: {reason}", pytrace=False)
    pytest.skip(reason)


def require(condition: bool, reason: str) -> pytest.MarkDecorator:
    """Mark a test (or a module, as `pytestmark`) as needing `condition`; see `missing`."""
    return pytest.mark.requires(bool(condition), reason=reason)


def require_module(name: str, reason: str | None = None) -> ModuleType:
    """`pytest.importorskip`, failing instead under CI=true."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing(reason or f"{name} is not importable ({err})")
