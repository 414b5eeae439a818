#!/usr/bin/env bash
# The performance scenarios of docs/performance.md, end to end: builds release binaries,
# starts the server(s) with `chat-bench cluster` (testkit/cluster.sh), runs chat-bench, stops
# everything. Usage:
#   bench/scenarios.sh embedded   # 1 replica, SQLite, in-process fan-out
#   bench/scenarios.sh cluster    # 2 replicas + a private redis-server + a fresh PostgreSQL database on 127.0.0.1:5432
#   bench/scenarios.sh idle       # 10 000 idle sockets on one cluster replica (PostgreSQL + Redis): RSS per socket
#   bench/scenarios.sh idle-embedded  # the same on the embedded server (SQLite)
#   bench/scenarios.sh soak       # chaos soak, 30 min, 10 000 sockets: 3 replicas behind nginx, a PRIVATE
#                                 # PostgreSQL and Redis it starts itself (see bench/README.md, `soak`)
# Extra arguments go to chat-bench (e.g. --rate 1 --duration 20s instead of the ramp).
# CHAT_SERVER_BIN=path runs that server binary instead of the one just built. The servers get
# this shell's environment (e.g. WS_FLUSH_INTERVAL_MS=50 bench/scenarios.sh cluster) under
# the settings below; PG_ADMIN_URL is the PostgreSQL server (default postgres://postgres@127.0.0.1:5432).
# cluster: the report (every ramp step with p50/p90/p99/p99.9) is also kept in
# target/bench-cluster.txt, the figures in target/bench-cluster.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. testkit/cluster.sh
mode=${1:-cluster}; shift || true
cargo build --release -p chat-server -p chat-bench >&2
# CHAT_SERVER_BIN: another server binary (an A/B comparison against an older build).
server=${CHAT_SERVER_BIN:-target/release/chat-server}
bench=target/release/chat-bench
export CHAT_BENCH_BIN=$bench
work=$(mktemp -d)
cleanup() { cluster_down; rm -rf "$work"; }
trap cleanup EXIT
common=(--env MESSAGE_RATE_PER_SEC=1000000 --env MESSAGE_RATE_BURST=1000000 --env AUTH_RATE_PER_MIN=1000000
  --env ACCOUNT_RATE_PER_MIN=1000000 --env ROOMS_PER_HOUR=1000000 --env WS_MAX_SOCKETS_PER_USER=0
  --env WS_MAX_SOCKETS_PER_ADDRESS=0 --env WS_UPGRADES_PER_SEC=0 --env "RUST_LOG=${RUST_LOG:-warn}"
  --server-bin "$server" --inherit-env)
pg=(--bus redis --db postgres --database-url "${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432}"
  --db-prefix chat_bench --env JWT_SECRET=bench-secret-bench-secret-123456 --env DB_MAX_CONNECTIONS=10)
scenario=(--rooms 50 --clients 20 --senders 2 --users 1000)
# ×1.15 per 8 s step from 40 000 deliveries/s: fine enough to tell a 10 % difference in the
# sustained rate (×1.5 steps could not), and a latency curve with a point every 15 %.
ramp=(--rate 20 --ramp --ramp-factor 1.15 --max-steps 24 --step-duration 8s --warmup 3s)
[ $# -gt 0 ] && ramp=("$@")
case "$mode" in
  idle)
    cluster_up "$work" "${common[@]}" "${pg[@]}" --replicas 1
    "$bench" idle --url "$BASE_URL" --sockets 10000 --rooms 100 --users 100 --pid "$REPLICA_PIDS" --setup-concurrency 2 "$@"
    ;;
  embedded|idle-embedded)
    cluster_up "$work" "${common[@]}" --bus embedded --db sqlite --replicas 1
    if [ "$mode" = idle-embedded ]; then
      "$bench" idle --url "$BASE_URL" --sockets 10000 --rooms 100 --users 100 --pid "$REPLICA_PIDS" --setup-concurrency 2 "$@"
    else
      "$bench" run --url "$BASE_URL" "${scenario[@]}" "${ramp[@]}" --cpu-pids "$REPLICA_PIDS" --json target/bench-embedded.json
    fi
    ;;
  cluster)
    cluster_up "$work" "${common[@]}" "${pg[@]}" --replicas 2
    "$bench" run --url "$REPLICA_URLS" "${scenario[@]}" "${ramp[@]}" \
      --cpu-pids "$REPLICA_PIDS" --json target/bench-cluster.json | tee target/bench-cluster.txt
    ;;
  soak)
    # Everything (PostgreSQL, Redis, replicas, nginx) is private to the soak and stopped by it.
    # Short version: bench/scenarios.sh soak --duration 3m --sockets 1500 --rate 40
    "$bench" soak --server-bin "$server" --json target/bench-soak.json "$@" | tee target/bench-soak.txt
    ;;
  *) echo "usage: $0 embedded|cluster|idle|idle-embedded|soak [chat-bench args]" >&2; exit 2 ;;
esac
