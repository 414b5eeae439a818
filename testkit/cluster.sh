# shellcheck shell=bash
# Sourced by the test scripts and bench/scenarios.sh: a local cluster through
# `chat-bench cluster` (chat-testkit), instead of starting servers in shell.
#
#   cluster_up WORKDIR [chat-bench cluster options...]
#       Starts `chat-bench cluster --dir WORKDIR/cluster --env-out WORKDIR/cluster.env ...` in
#       the background and waits until everything is ready; then sources the env file:
#       BASE_URL, REPLICA_URLS and REPLICA_PIDS (comma-separated), REDIS_URL, DATABASE_URL,
#       NGINX_URL, CLUSTER_DIR. CLUSTER_PID is the chat-bench process, CLUSTER_LOG its output.
#       Returns 1 (after printing its output) if it did not come up.
#   cluster_down
#       SIGTERM, and wait until it has stopped everything it started (replicas, Redis, nginx,
#       the database). Call it from the script's EXIT trap.
#
# Its stdin is a FIFO this shell holds open: if the script dies, even by SIGKILL, the cluster
# sees the end of its input and stops all the same.
#
# CHAT_BENCH_BIN: the chat-bench binary (default: `cargo build -p chat-bench --bin chat-bench`,
# target/debug/chat-bench). CLUSTER_START_SECS: how long the start may take (default 300);
# CLUSTER_STOP_SECS: how long the stop may take (default 300: dropping the database waits for
# a checkpoint of the whole server, slow on a busy one).

CLUSTER_PID=""
CLUSTER_LOG=""
CLUSTER_HOLD=""

cluster_up() {
  local work="$1"
  shift
  local bench="${CHAT_BENCH_BIN:-}"
  if [[ -z "$bench" ]]; then
    cargo build -q -p chat-bench --bin chat-bench >&2 || return 1
    bench="${CARGO_TARGET_DIR:-target}/debug/chat-bench"
  fi
  [[ -x "$bench" ]] || { echo "chat-bench binary $bench not found (set CHAT_BENCH_BIN)" >&2; return 1; }
  local fifo="$work/cluster.stdin" envfile="$work/cluster.env"
  CLUSTER_LOG="$work/cluster.log"
  rm -f "$fifo" "$envfile"
  rm -rf "$work/cluster"
  mkfifo "$fifo"
  "$bench" cluster --dir "$work/cluster" --env-out "$envfile" "$@" \
    <"$fifo" >"$work/cluster.out" 2>"$CLUSTER_LOG" &
  CLUSTER_PID=$!
  exec {CLUSTER_HOLD}>"$fifo"
  local deadline=$((SECONDS + ${CLUSTER_START_SECS:-300}))
  while [[ ! -f "$envfile" ]]; do
    if ! kill -0 "$CLUSTER_PID" 2>/dev/null || ((SECONDS >= deadline)); then
      echo "----- chat-bench cluster did not come up: its output -----" >&2
      tail -n 60 "$CLUSTER_LOG" >&2
      cluster_down
      return 1
    fi
    sleep 0.2
  done
  # shellcheck disable=SC1090
  . "$envfile"
}

cluster_down() {
  [[ -n "$CLUSTER_PID" ]] || return 0
  kill -TERM "$CLUSTER_PID" 2>/dev/null || true
  local limit=$((SECONDS + ${CLUSTER_STOP_SECS:-300})) noted=$((SECONDS + 15))
  while kill -0 "$CLUSTER_PID" 2>/dev/null && ((SECONDS < limit)); do
    if ((noted && SECONDS >= noted)); then
      echo "waiting for chat-bench cluster to stop: $(tail -n 1 "$CLUSTER_LOG")" >&2
      noted=0
    fi
    sleep 0.2
  done
  if kill -0 "$CLUSTER_PID" 2>/dev/null; then
    echo "chat-bench cluster (pid $CLUSTER_PID) did not stop within ${CLUSTER_STOP_SECS:-300} s: SIGKILL" >&2
    kill -KILL "$CLUSTER_PID" 2>/dev/null || true
  fi
  wait "$CLUSTER_PID" 2>/dev/null || true
  if [[ -n "$CLUSTER_HOLD" ]]; then
    exec {CLUSTER_HOLD}>&-
    CLUSTER_HOLD=""
  fi
  CLUSTER_PID=""
}
