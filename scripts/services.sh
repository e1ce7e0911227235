#!/usr/bin/env bash
# Starts every server the test suite needs that is not already running, and waits until each
# answers. Which servers: REPID_SERVICES (space-separated), default: those the suite uses today.
set -euo pipefail

SERVICES=${REPID_SERVICES:-redis rabbitmq kafka postgres nats}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2 deadline=$((SECONDS + ${3:-60}))
  until port_open "$port"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "services: $name did not open port $port in time" >&2
      return 1
    fi
    sleep 0.2
  done
}

start_redis() {
  port_open 6379 && return 0
  echo "services: starting redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port redis 6379 30
}

start_rabbitmq() {
  port_open 5672 && return 0
  echo "services: starting rabbitmq"
  rabbitmq-server -detached
  rabbitmqctl await_startup --timeout 120
  wait_port rabbitmq 5672 60
}

start_kafka() {
  # A Kafka-protocol test broker (noida-db) on 127.0.0.1:19092; see scripts/kafka.sh.
  bash "$(dirname "${BASH_SOURCE[0]}")/kafka.sh" start
}

start_postgres() {
  # The Debian cluster (PostgreSQL 15) on 127.0.0.1:5432 with trust auth and a database `test`.
  if ! port_open 5432; then
    echo "services: starting postgres"
    local version
    version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    pg_ctlcluster "$version" main start
    wait_port postgres 5432 60
  fi
  local psql=(psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq)
  local deadline=$((SECONDS + 30))
  until "${psql[@]}" -c "SELECT 1" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "services: postgres does not accept connections on 127.0.0.1:5432" >&2
      return 1
    fi
    sleep 0.2
  done
  if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'test'")" ]; then
    "${psql[@]}" -c "CREATE DATABASE test"
  fi
}

start_nats() {
  # nats-server from the Debian package (nats-server), JetStream on, file storage.
  port_open 4222 && return 0
  echo "services: starting nats-server -js"
  local bin
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  if [ ! -x "$bin" ]; then
    echo "services: nats-server is not installed (apt-get install nats-server)" >&2
    return 1
  fi
  mkdir -p /var/lib/repid-nats /var/log/repid-nats
  nohup "$bin" -js -a 127.0.0.1 -p 4222 -sd /var/lib/repid-nats \
    >>/var/log/repid-nats/nats.log 2>&1 &
  wait_port nats 4222 30
}

for service in $SERVICES; do
  "start_$service"
done
