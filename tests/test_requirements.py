"""tests/requirements.py: a missing requirement skips on a developer's machine and fails under
CI=true, for the mark (decided before fixtures) and for the in-test import alike."""

from __future__ import annotations

import pytest

from tests.conftest import PROJECT_ROOT

INNER_CONFTEST = """
from tests.conftest import pytest_runtest_setup  # noqa: F401  (the hook under test)


def pytest_configure(config):
    config.addinivalue_line("markers", "requires(condition, reason): tests/requirements.py")
"""

INNER_TESTS = """
from tests.requirements import require, require_module


@require(False, reason="no widget on this machine")
def test_marked(fixture_nobody_provides):  # decided before fixtures: the reason, not a fixture error
    pass


@require(True, reason="never shown")
def test_present():
    pass


def test_in_body():
    require_module("dub_no_such_module_anywhere", reason="dub_no_such_module_anywhere is not installed")
"""


@pytest.mark.parametrize("ci", [None, "false", "true", "TRUE", "1"])
def test_missing_requirement_skips_locally_and_fails_under_ci(pytester, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.syspathinsert(PROJECT_ROOT)
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(INNER_TESTS)
    result = pytester.runpytest("-rA", "-p", "no:cacheprovider")
    if ci in (None, "false"):
        result.assert_outcomes(passed=1, skipped=2)
        result.stdout.fnmatch_lines(["*SKIPPED*no widget on this machine*", "*SKIPPED*is not installed*"])
    else:
        # the mark fails the setup (an error), the in-body import fails the test itself
        result.assert_outcomes(passed=1, failed=1, errors=1)
        result.stdout.fnmatch_lines(
            [
                "*required under CI=true, but missing: no widget on this machine*",
                "*required under CI=true, but missing: dub_no_such_module_anywhere*",
            ]
        )
    assert "fixture 'fixture_nobody_provides' not found" not in result.stdout.str()
