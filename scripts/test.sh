#!/usr/bin/env bash
# Installs the test dependencies, starts the servers the tests need, and runs the whole suite
# plus ruff, mypy --strict and mkdocs build --strict. Used by CI (.ci/run) as is.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e '.[dev]'

bash scripts/services.sh
# The dashboard's browser tests (tests/dashboard/test_browser.py) drive Debian's chromium.
if ! command -v chromium >/dev/null 2>&1; then
  echo "== apt-get install chromium (dashboard browser tests)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
    || echo "chromium could not be installed: tests/dashboard/test_browser.py will fail"
fi

echo "== ruff"
ruff check .
echo "== mypy --strict"
mypy --strict
echo "== mkdocs build --strict"
export NO_MKDOCS_2_WARNING=1
mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
# The suite runs as two pytest processes side by side: the "slow" part (the chaos suite, the
# multi-process and CLI tests, which mostly wait on child processes and servers) and the
# rest. `--fast` runs only the rest, the quick default while developing. Other arguments go to
# both pytest runs.
SLOW=(tests/chaos tests/brokers/shared tests/cli)
FAST_ONLY=0
if [ "${1:-}" = "--fast" ]; then
  FAST_ONLY=1
  shift
fi
ignore=()
for path in "${SLOW[@]}"; do ignore+=("--ignore=$path"); done

for arg in "$@"; do
  if [ -e "${arg%%::*}" ]; then # paths or node ids given: run just those, in one process
    echo "== pytest $*"
    exec python -m pytest "$@"
  fi
done

if [ "$FAST_ONLY" = 1 ]; then
  echo "== pytest (fast part: all but ${SLOW[*]})"
  exec python -m pytest "${ignore[@]}" "$@"
fi

echo "== pytest (two parts side by side: ${SLOW[*]} | the rest)"
slow_log=$(mktemp "${TMPDIR:-/tmp}/repid-slow.XXXXXX.log")
python -m pytest "${SLOW[@]}" "$@" >"$slow_log" 2>&1 &
slow_pid=$!
set +e
python -m pytest "${ignore[@]}" "$@"
fast_status=$?
wait "$slow_pid"
slow_status=$?
set -e
echo "== pytest, slow part (${SLOW[*]})"
cat "$slow_log"
rm -f "$slow_log"
if [ "$fast_status" -ne 0 ] || [ "$slow_status" -ne 0 ]; then
  echo "pytest failed: fast part exit $fast_status, slow part exit $slow_status" >&2
  exit 1
fi
