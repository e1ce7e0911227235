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

echo "== ruff"
ruff check .
echo "== mypy --strict"
mypy --strict
echo "== mkdocs build --strict"
export NO_MKDOCS_2_WARNING=1
mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
echo "== pytest"
python -m pytest "$@"
