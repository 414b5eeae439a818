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
#   BARE_RUST_DIR=DIR bench/scenarios.sh bare   # the `cluster` scenario against the bare fan-out
#                                 # reference (DIR: its Cargo project; two processes + a private
#                                 # redis-server), `chat-bench run --deliveries-only`: the ceiling
#                                 # the service's sustained rate is quoted against (docs/performance.md)
# Extra arguments go to chat-bench (e.g. --rate 1 --duration 20s instead of the ramp).
# CHAT_SERVER_BIN=path runs that server binary instead of the one just built. The servers get
# this shell's environment (e.g. WS_FLUSH_INTERVAL_MS=50 bench/scenarios.sh cluster) under
# the settings below; PG_ADMIN_URL is the PostgreSQL server (default postgres://postgres@127.0.0.1:5432).
# cluster: the report (every ramp step with p50/p90/p99/p99.9) is also kept in
# target/bench-cluster.txt, the figures in target/bench-cluster.json; bare: in
# target/bench-bare.txt and target/bench-bare.json. bare builds the reference with
# `cargo build --release --manifest-path "$BARE_RUST_DIR/Cargo.toml" --target-dir target/bare-rust`
# (not chat-server), starts redis-server and the two processes itself (free ports, logs in a
# temporary directory) and stops them by PID on exit; the processes get this shell's
# environment (e.g. BARE_WORKERS) with REDIS_URL set.
set -euo pipefail
cd "$(dirname "$0")/.."
. testkit/cluster.sh
mode=${1:-cluster}; shift || true
if [ "$mode" = bare ]; then
  if [ -z "${BARE_RUST_DIR:-}" ] || [ ! -f "${BARE_RUST_DIR}/Cargo.toml" ]; then
    echo "bare: set BARE_RUST_DIR to the bare fan-out reference's Cargo project (the directory of its Cargo.toml)" >&2
    exit 2
  fi
  cargo build --release -p chat-bench >&2
  cargo build --release --manifest-path "${BARE_RUST_DIR}/Cargo.toml" --target-dir target/bare-rust >&2
else
  cargo build --release -p chat-server -p chat-bench >&2
fi
# CHAT_SERVER_BIN: another server binary (an A/B comparison against an older build).
server=${CHAT_SERVER_BIN:-target/release/chat-server}
bench=target/release/chat-bench
export CHAT_BENCH_BIN=$bench
work=$(mktemp -d)

# bare mode: its own processes (no chat-bench cluster), stopped by PID in bare_down.
BARE_PIDS=()
BARE_REDIS_PID=""
# A port nothing answers on now (a process started on it may still lose it to another: the
# callers check that the process they started is the one answering, and retry).
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
}
# SIGTERM, up to 10 s for the exit, then SIGKILL.
stop_pid() {
  kill -TERM "$1" 2>/dev/null || return 0
  local i
  for i in $(seq 100); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
# A private redis-server (no persistence) on a free port: sets BARE_REDIS_URL.
bare_redis_up() {
  local try port pid i
  for try in $(seq 10); do
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --maxclients 10000 \
      --dir "$work" >"$work/redis.log" 2>&1 &
    pid=$!
    BARE_REDIS_PID=$pid
    for i in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      # ready when it answers, and it is this process that answers
      if [ "$(redis-cli -p "$port" info server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')" = "$pid" ]; then
        BARE_REDIS_URL=redis://127.0.0.1:$port
        return 0
      fi
      sleep 0.1
    done
    stop_pid "$pid"
    BARE_REDIS_PID=""
  done
  echo "redis-server did not start (see $work/redis.log):" >&2
  tail -n 20 "$work/redis.log" >&2
  return 1
}
# Process N of the reference on a free port: appends to BARE_URLS and BARE_PIDS once it has
# announced its port and answers GET /healthz.
bare_up() {
  local n=$1 try port pid i log
  log="$work/bare$n.log"
  for try in $(seq 10); do
    port=$(free_port)
    REDIS_URL=$BARE_REDIS_URL target/bare-rust/release/bare_rust "$port" >"$log" 2>&1 &
    pid=$!
    for i in $(seq 300); do
      kill -0 "$pid" 2>/dev/null || break
      if grep -q "pid=$pid on 127.0.0.1:$port" "$log" &&
        curl -sf -o /dev/null "http://127.0.0.1:$port/healthz"; then
        BARE_PIDS+=("$pid")
        BARE_URLS+=("http://127.0.0.1:$port")
        return 0
      fi
      sleep 0.1
    done
    stop_pid "$pid"
  done
  echo "bare_rust $n did not come up (see $log):" >&2
  tail -n 20 "$log" >&2
  return 1
}
bare_down() {
  local pid
  for pid in ${BARE_PIDS[@]+"${BARE_PIDS[@]}"}; do
    stop_pid "$pid"
  done
  BARE_PIDS=()
  if [ -n "$BARE_REDIS_PID" ]; then
    stop_pid "$BARE_REDIS_PID"
    BARE_REDIS_PID=""
  fi
}

cleanup() { cluster_down; bare_down; rm -rf "$work"; }
trap cleanup EXIT
common=(--env MESSAGE_RATE_PER_SEC=1000000 --env MESSAGE_RATE_BURST=1000000 --env READ_RATE_PER_SEC=1000000 --env READ_RATE_BURST=1000000 --env AUTH_RATE_PER_MIN=1000000
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
  bare)
    # The same scenario and ramp as `cluster`, against the bare fan-out reference: it sends
    # no `ready`, no acks and no seqs, so deliveries are counted and timed, nothing checked.
    BARE_URLS=()
    bare_redis_up
    bare_up 1
    bare_up 2
    urls=$(IFS=,; echo "${BARE_URLS[*]}")
    pids=$(IFS=,; echo "${BARE_PIDS[*]}")
    echo "bare: $urls (pids $pids), $BARE_REDIS_URL" >&2
    "$bench" run --url "$urls" "${scenario[@]}" "${ramp[@]}" --deliveries-only \
      --cpu-pids "$pids" --json target/bench-bare.json | tee target/bench-bare.txt
    ;;
  soak)
    # Everything (PostgreSQL, Redis, replicas, nginx) is private to the soak and stopped by it.
    # Short version: bench/scenarios.sh soak --duration 3m --sockets 1500 --rate 40
    "$bench" soak --server-bin "$server" --json target/bench-soak.json "$@" | tee target/bench-soak.txt
    ;;
  *) echo "usage: $0 embedded|cluster|bare|idle|idle-embedded|soak [chat-bench args]" >&2; exit 2 ;;
esac
