#!/usr/bin/env bash
# Installs repid into .venv and runs the demo: a producer and a worker on the in-memory broker.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/python examples/demo.py
