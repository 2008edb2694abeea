"""The installed layout: one top-level package, `dub`, with the repository's model/, workflows/
and manifests/ folders inside it (pyproject's package-dir), and nothing generic on sys.path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.requirements import require_module

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# repository folder -> installed package (pyproject's package-dir), dub/ being itself
MAPPED = {
    "dub": "dub",
    **{folder: package for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items()},
}


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_every_package_folder_is_installed():
    """A folder of modules left out of pyproject's package list would be missing from a wheel
    (an editable install can hide that): every folder holding .py files is listed, and has an
    __init__.py so it is a regular package."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in MAPPED.items():
        for module in (ROOT / top).rglob("*.py"):
            folder = module.parent.relative_to(ROOT / top)
            assert (module.parent / "__init__.py").is_file(), f"{module.parent} has modules but no __init__.py"
            found.add(".".join((name, *folder.parts)))
    assert found == listed


def test_only_dub_is_importable_outside_the_checkout(tmp_path):
    """Outside the repository the folders are reachable as dub.* only: `import model` (a name
    other projects use too) fails, `import dub.model` works."""
    bare = _python("import model", tmp_path)
    assert bare.returncode != 0 and "No module named 'model'" in bare.stderr
    for top in ("workflows", "manifests"):
        assert _python(f"import {top}", tmp_path).returncode != 0
    ok = _python("import dub.model.demo, dub.workflows.ingest, dub.manifests.io; print('ok')", tmp_path)
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr


def test_scripts_run_from_anywhere_without_path_edits(tmp_path):
    """The scripts import the installed package: run from another folder they still start."""
    for script in ("random_metric_weights.py", "gpu_bench.py"):
        run = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / script), "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0 and "usage" in run.stdout.lower(), run.stderr
    assert not [p for p in (ROOT / "scripts").glob("*.py") if "sys.path" in p.read_text()]


def test_ruff_finds_nothing_and_the_tree_is_formatted():
    """Lint (pyflakes, pycodestyle, isort, bugbear, pyupgrade: pyproject's [tool.ruff]) and the
    formatter's check, on every Python file of the repository."""
    require_module("ruff", "ruff is in the test extra (pip install -e '.[test]')")
    for args in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        run = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, f"ruff {' '.join(args)}:\n{run.stdout}{run.stderr}"


def test_import_contracts_hold_on_the_installed_layout(tmp_path):
    """pyproject's [tool.importlinter] contracts: dub -> workflows -> model, manifests -> storage,
    the model's and report's inner layers, no cycles. import-linter walks a package's folder, and
    the repository's folders become dub.* only when installed, so the check runs on that layout
    (the package-dir mapping copied into a temporary folder), not on the checkout."""
    require_module("importlinter", "import-linter is in the test extra (pip install -e '.[test]')")
    site = tmp_path / "site"
    for top, name in MAPPED.items():
        shutil.copytree(
            ROOT / top,
            site.joinpath(*name.split(".")),
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "samples", "assets", "sounds"),
        )
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run(
        [str(lint), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and "0 broken" in run.stdout, run.stdout + run.stderr
