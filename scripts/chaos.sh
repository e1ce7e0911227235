#!/usr/bin/env bash
# Runs the full chaos suite (REPID_CHAOS=full: C1 with 10,000 jobs, 4 workers, 20 SIGKILLs...)
# on every real broker, then writes its figures into docs/chaos.md (results section) and
# docs/chaos-results.json. Extra arguments go to pytest (e.g. -k redis). Needs the servers
# scripts/services.sh starts. Exits with pytest's status; the figures are rendered either way.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
bash scripts/services.sh || exit 1

results=$(mktemp "${TMPDIR:-/tmp}/repid-chaos.XXXXXX.jsonl")
REPID_CHAOS=full REPID_CHAOS_RESULTS="$results" \
  python -m pytest tests/chaos -m chaos -p no:cacheprovider -q -o timeout=3600 "$@"
status=$?
python -m tests.chaos.report "$results" --markdown docs/chaos.md --json docs/chaos-results.json \
  || status=1
echo "chaos: figures in docs/chaos.md and docs/chaos-results.json (raw: $results)"
exit "$status"
