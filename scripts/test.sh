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
# The suite runs as three pytest processes side by side: the "slow" part (the chaos suite, the
# multi-process and CLI tests, which mostly wait on child processes and servers), the
# conformance suite (every broker) and the rest. `--fast` runs all but the slow part in one
# process, the quick default while developing. Other arguments go to every pytest run.
SLOW=(tests/chaos tests/brokers/shared tests/cli)
CONFORMANCE=(tests/conformance)
FAST_ONLY=0
if [ "${1:-}" = "--fast" ]; then
  FAST_ONLY=1
  shift
fi
ignore_slow=()
for path in "${SLOW[@]}"; do ignore_slow+=("--ignore=$path"); done
ignore_conformance=()
for path in "${CONFORMANCE[@]}"; do ignore_conformance+=("--ignore=$path"); done

for arg in "$@"; do
  if [ -e "${arg%%::*}" ]; then # paths or node ids given: run just those, in one process
    echo "== pytest $*"
    exec python -m pytest "$@"
  fi
done

if [ "$FAST_ONLY" = 1 ]; then
  echo "== pytest (fast part: all but ${SLOW[*]})"
  exec python -m pytest "${ignore_slow[@]}" "$@"
fi

echo "== pytest (three parts side by side: ${SLOW[*]} | ${CONFORMANCE[*]} | the rest)"
slow_log=$(mktemp "${TMPDIR:-/tmp}/repid-slow.XXXXXX.log")
conformance_log=$(mktemp "${TMPDIR:-/tmp}/repid-conformance.XXXXXX.log")
python -m pytest "${SLOW[@]}" "$@" >"$slow_log" 2>&1 &
slow_pid=$!
python -m pytest "${CONFORMANCE[@]}" "$@" >"$conformance_log" 2>&1 &
conformance_pid=$!
set +e
python -m pytest "${ignore_slow[@]}" "${ignore_conformance[@]}" "$@"
rest_status=$?
wait "$conformance_pid"
conformance_status=$?
wait "$slow_pid"
slow_status=$?
set -e
echo "== pytest, conformance part (${CONFORMANCE[*]})"
cat "$conformance_log"
echo "== pytest, slow part (${SLOW[*]})"
cat "$slow_log"
rm -f "$slow_log" "$conformance_log"
if [ "$rest_status" -ne 0 ] || [ "$conformance_status" -ne 0 ] || [ "$slow_status" -ne 0 ]; then
  echo "pytest failed: rest exit $rest_status, conformance exit $conformance_status," \
    "slow part exit $slow_status" >&2
  exit 1
fi
