#!/usr/bin/env bash
# Lint and type-check: ruff (mirage/, deployments/, serve_app/, benchmarks/, tests/, standins/, scripts/) and
# mypy --strict (mirage/, deployments/, serve_app/; config in pyproject.toml). Exits non-zero on
# any finding. Needs the test dependencies (requirements-test.txt; scripts/test.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

rc=0
.venv/bin/ruff check --no-cache mirage deployments serve_app benchmarks tests standins scripts || rc=1
.venv/bin/mypy || rc=1
if [ "$rc" != 0 ]; then
  echo "lint: ruff or mypy found problems (above)" >&2
fi
exit "$rc"
