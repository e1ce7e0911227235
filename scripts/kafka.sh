#!/usr/bin/env bash
# Starts the Kafka-protocol test broker (noida-db, from the `dev` extra) on 127.0.0.1:$PORT unless
# something already listens there, and waits until the port accepts connections.
# Usage: scripts/kafka.sh [start|stop]   (REPID_KAFKA_PORT, default 19092)
# Run against a real Kafka instead by setting REPID_KAFKA_BOOTSTRAP for the tests (nothing starts).
set -euo pipefail

PORT=${REPID_KAFKA_PORT:-19092}
STATE_DIR=${REPID_KAFKA_STATE_DIR:-${TMPDIR:-/tmp}/repid-kafka-$PORT}
PID_FILE=$STATE_DIR/noida.pid

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

binary() {
  # The `noida-db` console script is a Python wrapper that does not pass SIGTERM on: run the
  # binary shipped inside the package directly, so the PID we record is the server's.
  local py=python3
  if [ -x "$(dirname "${BASH_SOURCE[0]}")/../.venv/bin/python" ]; then
    py="$(dirname "${BASH_SOURCE[0]}")/../.venv/bin/python"
  fi
  "$py" - <<'PY'
import os, noida_db
print(os.path.join(os.path.dirname(noida_db.__file__), "noida-db"))
PY
}

start() {
  if port_open "$PORT"; then
    return 0
  fi
  echo "services: starting kafka (noida-db) on 127.0.0.1:$PORT"
  mkdir -p "$STATE_DIR"
  local data_dir
  data_dir=$(mktemp -d "$STATE_DIR/data.XXXXXX")
  local exe
  exe=$(binary)
  # setsid: the server outlives this script (and the test run that started it).
  setsid "$exe" start --only kafka --kafka-port "$PORT" --data-dir "$data_dir" \
    >"$STATE_DIR/noida.log" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  local deadline=$((SECONDS + 30))
  until port_open "$PORT"; do
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      echo "services: kafka (noida-db) exited; log: $STATE_DIR/noida.log" >&2
      tail -n 20 "$STATE_DIR/noida.log" >&2 || true
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "services: kafka did not open port $PORT in time" >&2
      return 1
    fi
    sleep 0.2
  done
}

stop() {
  [ -f "$PID_FILE" ] || return 0
  local pid
  pid=$(cat "$PID_FILE")
  kill -TERM "$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
