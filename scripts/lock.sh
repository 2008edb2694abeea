#!/usr/bin/env bash
# Refresh requirements.lock: resolve pyproject.toml's bounds in a brand-new virtualenv (so
# nothing installed on this machine leaks in), then freeze what was installed.
#
#   scripts/lock.sh            then run the suite with the new lock and commit both
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q -e ".[test]"
{
  sed -n '/^#/p' requirements.lock
  "$venv/bin/pip" freeze --exclude-editable | grep -v '^dub[= @]'
} > requirements.lock.new
mv requirements.lock.new requirements.lock
rm -rf "$(dirname "$venv")"
git --no-pager diff --stat -- requirements.lock || true
