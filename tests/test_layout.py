"""The installed layout: one top-level package, `dub`, with the repository's model/, workflows/
and manifests/ folders inside it (pyproject's package-dir), and nothing generic on sys.path."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"model": "dub.model", "workflows": "dub.workflows", "manifests": "dub.manifests", "dub": "dub"}


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_every_package_folder_is_installed():
    """A folder of modules left out of pyproject's package list would be missing from a wheel
    (an editable install can hide that): every folder holding .py files is listed, and has an
    __init__.py so it is a regular package."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
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
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "usage" in run.stdout.lower(), run.stderr
    assert not [p for p in (ROOT / "scripts").glob("*.py") if "sys.path" in p.read_text()]
