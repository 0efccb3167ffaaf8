#!/usr/bin/env bash
# The whole quality gate: lint, format, types, layer contracts, CRDs in sync with the models, all tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin="$root/.venv/bin"
export PATH="$root/.cache/bin:$bin:$PATH"

echo "== ruff";          "$bin/ruff" check .
echo "== ruff format";   "$bin/ruff" format --check .
echo "== mypy";          "$bin/mypy" operator services devtools tests benchmarks hack
# Each conftest.py is the top-level module `conftest` (as to pytest), so the nested ones (excluded from the run above
# in pyproject.toml) are checked one per run.
for conftest in tests/*/conftest.py tests/*/*/conftest.py; do "$bin/mypy" --no-error-summary --no-warn-unused-configs "$conftest"; done
echo "== import-linter"; "$bin/lint-imports"
echo "== CRDs";          "$bin/moeops" crds --check
echo "== pytest";        "$bin/python" -m pytest "$@"
