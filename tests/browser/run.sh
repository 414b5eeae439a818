#!/usr/bin/env bash
# Browser end-to-end test of the web client and /docs against a two-replica cluster.
#
#   cargo build && bash tests/browser/run.sh
#
# Environment:
#   CHAT_SERVER_BIN   server binary (default target/debug/chat-server)
#   PG_ADMIN_URL      PostgreSQL server to create the throw-away database on
#                     (default postgres://postgres@127.0.0.1:5432)
#   E2E_ONLY          chat | docs | reconnect — run only one of the tests
#   KEEP_LOGS=1       print the replica logs even when the test passes
#
# What it does: python venv with the pinned requirements in target/browser-venv, Debian
# chromium + chromium-driver (installed only if missing), a private redis-server on a free
# port, a fresh database chat_browser_<random>, `chat-server migrate` once, two replicas
# (cluster mode) on free ports, waits for /readyz on both, runs chat_e2e.py against them
# (its reconnect test stops replica 1 and starts it again on the same port, with the
# environment exported here), and tears everything down (trap). Exit code = test result.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

BIN="${CHAT_SERVER_BIN:-target/debug/chat-server}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432}"
VENV="$ROOT/target/browser-venv"
LOGDIR="$ROOT/target/browser-logs"
SHOTS="$ROOT/target/browser-screenshots"

say() { echo "[run.sh $(date +%H:%M:%S)] $*"; }

if [[ ! -x "$BIN" ]]; then
  say "server binary $BIN not found (build it with 'cargo build' or set CHAT_SERVER_BIN)"
  exit 2
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
mkdir -p "$LOGDIR" "$SHOTS"

# ---- python environment -------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating venv $VENV"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$HERE/requirements.txt"

# ---- chromium -----------------------------------------------------------------------
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  say "installing chromium and chromium-driver"
  SUDO=""
  if [[ "$(id -u)" != 0 ]] && command -v sudo >/dev/null; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y chromium chromium-driver \
    || { $SUDO apt-get update && $SUDO apt-get install -y chromium chromium-driver; }
fi

# ---- teardown -----------------------------------------------------------------------
PIDS=()
REDIS_PID=""
RESTARTED_PIDFILE="$LOGDIR/replica1-restarted.pid"
rm -f "$RESTARTED_PIDFILE"
DB_NAME=""
TEST_RC=1
cleanup() {
  local rc=$?
  set +e
  if [[ -f "$RESTARTED_PIDFILE" ]]; then   # replica 1 restarted by the test (normally already stopped)
    rpid="$(cat "$RESTARTED_PIDFILE")"
    if [[ -n "$rpid" ]] && kill -0 "$rpid" 2>/dev/null; then
      kill -TERM "$rpid" 2>/dev/null
      for _ in $(seq 1 50); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$rpid" 2>/dev/null
    fi
    rm -f "$RESTARTED_PIDFILE"
  fi
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [[ -n "$REDIS_PID" ]]; then
    kill -TERM "$REDIS_PID" 2>/dev/null
    wait "$REDIS_PID" 2>/dev/null
  fi
  if [[ -n "$DB_NAME" ]]; then
    psql "$PG_ADMIN_URL/postgres" -q -v ON_ERROR_STOP=1 \
      -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1 \
      || say "warning: could not drop database $DB_NAME"
  fi
  if [[ "$TEST_RC" != 0 || -n "${KEEP_LOGS:-}" ]]; then
    for f in "$LOGDIR"/replica1.log "$LOGDIR"/replica2.log "$LOGDIR"/replica1-restarted.log; do
      [[ -f "$f" ]] || continue
      echo "----- last lines of $f -----"
      tail -n 60 "$f" | sed -E 's/(token=)[^& "]+/\1<redacted>/g'
    done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
rand_hex() { python3 -c "import secrets; print(secrets.token_hex($1))"; }

# ---- redis --------------------------------------------------------------------------
REDIS_PORT="$(free_port)"
say "starting redis-server on 127.0.0.1:$REDIS_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --loglevel warning >"$LOGDIR/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 1 50); do
  if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then break; fi
  sleep 0.1
done
redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping | grep -q PONG || { say "redis did not start"; exit 1; }

# ---- postgres -----------------------------------------------------------------------
DB_NAME="chat_browser_$(rand_hex 6)"
say "creating database $DB_NAME"
psql "$PG_ADMIN_URL/postgres" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DB_NAME\"" >/dev/null

export DATABASE_URL="$PG_ADMIN_URL/$DB_NAME"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export JWT_SECRET="$(rand_hex 32)"
export AUTO_MIGRATE=false
export SHUTDOWN_GRACE_SECS="${SHUTDOWN_GRACE_SECS:-3}"
export RUST_LOG="${RUST_LOG:-info}"
unset ALLOWED_ORIGINS || true

say "chat-server migrate"
"$BIN" migrate >"$LOGDIR/migrate.log" 2>&1 || { cat "$LOGDIR/migrate.log"; say "migrate failed"; exit 1; }

# ---- two replicas -------------------------------------------------------------------
URLS=()
for i in 1 2; do
  port="$(free_port)"
  say "starting replica $i on 127.0.0.1:$port"
  BIND_ADDR="127.0.0.1:$port" "$BIN" serve >"$LOGDIR/replica$i.log" 2>&1 &
  PIDS+=($!)
  URLS+=("http://127.0.0.1:$port")
done

for i in 0 1; do
  url="${URLS[$i]}"
  ok=""
  for _ in $(seq 1 120); do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      say "replica $((i + 1)) exited"; TEST_RC=1; exit 1
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/readyz" || true)"
    if [[ "$code" == 200 ]]; then ok=1; break; fi
    sleep 0.5
  done
  [[ -n "$ok" ]] || { say "replica $((i + 1)) at $url never became ready (last /readyz: $code)"; exit 1; }
  say "replica $((i + 1)) ready at $url"
done

# ---- the test -----------------------------------------------------------------------
ARGS=("${URLS[0]}" "${URLS[1]}" --screenshots "$SHOTS" --logdir "$LOGDIR"
      --server-bin "$BIN" --replica1-pid "${PIDS[0]}" --pidfile "$RESTARTED_PIDFILE")
if [[ -n "${E2E_ONLY:-}" ]]; then ARGS+=(--only "$E2E_ONLY"); fi
set +e
"$VENV/bin/python" "$HERE/chat_e2e.py" "${ARGS[@]}"
TEST_RC=$?
set -e
say "browser tests exit code $TEST_RC (screenshots in $SHOTS, logs in $LOGDIR)"
exit "$TEST_RC"
