#!/usr/bin/env bash
# Drift check: install the newest versions pyproject.toml's bounds allow into a brand-new
# virtualenv (no lock), run the conformance tests there, and report which packages moved
# away from requirements.lock and which tests changed outcome. It reports; it never fails,
# so it can run on a schedule and drift is seen before a lock refresh brings it in.
#
#   scripts/newest_versions.sh [REPORT_FILE]      (default: newest-versions-report.txt)
set -uo pipefail
cd "$(dirname "$0")/.."
report=$(realpath -m "${1:-newest-versions-report.txt}")
work=$(mktemp -d)
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade -e ".[test]" > "$work/install.log" 2>&1 \
  || { echo "install of the newest versions failed; see $work/install.log" | tee "$report"; exit 0; }
"$work/venv/bin/pip" freeze --exclude-editable | grep -v '^dub[= @]' | sort > "$work/newest.txt"
grep -v '^#' requirements.lock | sort > "$work/locked.txt"
"$work/venv/bin/python" -m pytest -m conformance -q -p no:cacheprovider -rfE > "$work/tests.txt" 2>&1
status=$?
{
  echo "# newest versions vs requirements.lock ($(date -u +%F), $(git rev-parse --short HEAD))"
  echo
  echo "## packages that moved (- locked, + newest)"
  diff "$work/locked.txt" "$work/newest.txt" | grep '^[<>]' | sed 's/^</-/; s/^>/+/' || echo "(none)"
  echo
  echo "## conformance tests on the newest versions (pytest exit status $status)"
  tail -n 40 "$work/tests.txt"
} > "$report"
cat "$report"
rm -rf "$work"
exit 0
