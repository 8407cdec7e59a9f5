#!/usr/bin/env bash
# Sets up everything the tests need and runs the whole suite. Idempotent.
# Debian's chromium and firefox-esr drive the browser tests (never a downloaded browser).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/firefox-esr ] || missing+=(firefox-esr)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)  # real speech for the voice tests
command -v turnserver >/dev/null || missing+=(coturn)  # a real TURN relay for the relay test
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: ${missing[*]} missing and this is not root; the browser tests that need it will be skipped" >&2
  fi
fi

scripts/setup.sh

# Test-only dependencies (requirements-test.txt), skipped unless that list changed, like setup.sh.
stamp=.venv/.mirage-test-deps
want=$(cat requirements.txt requirements-test.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q -r requirements-test.txt
  echo "$want" > "$stamp"
fi

# Lint and types first (ruff + mypy --strict): a finding fails the run before any test starts.
scripts/lint.sh

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
