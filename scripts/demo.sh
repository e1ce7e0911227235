#!/usr/bin/env bash
# Installs repid into .venv and runs the demos: a producer and a worker on the in-memory broker,
# then producer and worker processes sharing one SQLite file (no server), the worker restarted.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet -e .
.venv/bin/python examples/demo.py
echo
exec .venv/bin/python examples/demo_sqlite.py
