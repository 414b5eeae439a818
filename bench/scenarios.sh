#!/usr/bin/env bash
# The performance scenarios of docs/performance.md, end to end: builds release binaries, starts the
# server(s), runs chat-bench, stops everything. Usage:
#   bench/scenarios.sh embedded   # 1 replica, SQLite, in-process fan-out
#   bench/scenarios.sh cluster    # 2 replicas + Redis (127.0.0.1:6379) + PostgreSQL (127.0.0.1:5432, db chat_bench)
#   bench/scenarios.sh idle       # 10 000 idle sockets on one cluster replica (PostgreSQL + Redis): RSS per socket
#   bench/scenarios.sh idle-embedded  # the same on the embedded server (SQLite)
#   bench/scenarios.sh soak       # chaos soak, 30 min, 10 000 sockets: 3 replicas behind nginx, a PRIVATE
#                                 # PostgreSQL and Redis it starts itself (see bench/README.md, `soak`)
# Extra arguments go to chat-bench (e.g. --rate 1 --duration 20s instead of the ramp).
# CHAT_SERVER_BIN=path runs that server binary instead of the one just built.
# cluster: the report (every ramp step with p50/p90/p99/p99.9) is also kept in
# target/bench-cluster.txt, the figures in target/bench-cluster.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-cluster}; shift || true
cargo build --release -p chat-server -p chat-bench >&2
# CHAT_SERVER_BIN: another server binary (an A/B comparison against an older build).
server=${CHAT_SERVER_BIN:-target/release/chat-server}
bench=target/release/chat-bench
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
common=(MESSAGE_RATE_PER_SEC=1000000 MESSAGE_RATE_BURST=1000000 AUTH_RATE_PER_MIN=1000000 ACCOUNT_RATE_PER_MIN=1000000 ROOMS_PER_HOUR=1000000 WS_MAX_SOCKETS_PER_USER=0 WS_MAX_SOCKETS_PER_ADDRESS=0 WS_UPGRADES_PER_SEC=0 RUST_LOG=${RUST_LOG:-warn})
wait_ready() { for _ in $(seq 1 100); do curl -sf "$1/readyz" >/dev/null && return; sleep 0.1; done; echo "not ready: $1" >&2; exit 1; }
scenario=(--rooms 50 --clients 20 --senders 2 --users 1000)
# ×1.15 per 8 s step from 40 000 deliveries/s: fine enough to tell a 10 % difference in the
# sustained rate (×1.5 steps could not), and a latency curve with a point every 15 %.
ramp=(--rate 20 --ramp --ramp-factor 1.15 --max-steps 24 --step-duration 8s --warmup 3s)
[ $# -gt 0 ] && ramp=("$@")
case "$mode" in
  idle)
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS chat_bench WITH (FORCE)" -c "CREATE DATABASE chat_bench"
    redis-cli -h 127.0.0.1 -p 6379 --scan --pattern 'chat:*' | xargs -r redis-cli -h 127.0.0.1 -p 6379 del >/dev/null
    env "${common[@]}" DATABASE_URL=postgres://postgres@127.0.0.1:5432/chat_bench REDIS_URL=redis://127.0.0.1:6379 \
      JWT_SECRET=bench-secret-bench-secret-123456 DB_MAX_CONNECTIONS=10 BIND_ADDR=127.0.0.1:18081 "$server" &
    pids+=($!)
    wait_ready http://127.0.0.1:18081
    "$bench" idle --url http://127.0.0.1:18081 --sockets 10000 --rooms 100 --users 100 --pid "${pids[0]}" --setup-concurrency 2 "$@"
    ;;
  embedded|idle-embedded)
    db=$(mktemp -d)/bench.db
    env "${common[@]}" DATABASE_URL="sqlite://$db?mode=rwc" BIND_ADDR=127.0.0.1:18080 "$server" &
    pids+=($!)
    wait_ready http://127.0.0.1:18080
    if [ "$mode" = idle-embedded ]; then
      "$bench" idle --url http://127.0.0.1:18080 --sockets 10000 --rooms 100 --users 100 --pid "${pids[0]}" --setup-concurrency 2 "$@"
    else
      "$bench" run --url http://127.0.0.1:18080 "${scenario[@]}" "${ramp[@]}" --cpu-pids "${pids[0]}" --json target/bench-embedded.json
    fi
    ;;
  cluster)
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS chat_bench WITH (FORCE)" -c "CREATE DATABASE chat_bench"
    redis-cli -h 127.0.0.1 -p 6379 --scan --pattern 'chat:*' | xargs -r redis-cli -h 127.0.0.1 -p 6379 del >/dev/null
    for port in 18081 18082; do
      env "${common[@]}" DATABASE_URL=postgres://postgres@127.0.0.1:5432/chat_bench REDIS_URL=redis://127.0.0.1:6379 \
        JWT_SECRET=bench-secret-bench-secret-123456 DB_MAX_CONNECTIONS=10 BIND_ADDR=127.0.0.1:$port "$server" &
      pids+=($!)
      wait_ready http://127.0.0.1:$port
    done
    "$bench" run --url http://127.0.0.1:18081 --url http://127.0.0.1:18082 "${scenario[@]}" "${ramp[@]}" \
      --cpu-pids "$(IFS=,; echo "${pids[*]}")" --json target/bench-cluster.json | tee target/bench-cluster.txt
    ;;
  soak)
    # Everything (PostgreSQL, Redis, replicas, nginx) is private to the soak and stopped by it.
    # Short version: bench/scenarios.sh soak --duration 3m --sockets 1500 --rate 40
    "$bench" soak --server-bin "$server" --json target/bench-soak.json "$@" | tee target/bench-soak.txt
    ;;
  *) echo "usage: $0 embedded|cluster|idle|idle-embedded|soak [chat-bench args]" >&2; exit 2 ;;
esac
