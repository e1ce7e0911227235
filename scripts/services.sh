#!/usr/bin/env bash
# Starts every server the test suite needs that is not already running, and waits until each
# answers. Which servers: REPID_SERVICES (space-separated), default: those the suite uses today.
set -euo pipefail

SERVICES=${REPID_SERVICES:-redis rabbitmq kafka nats}

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
