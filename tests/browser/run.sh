#!/usr/bin/env bash
# Browser end-to-end test of the web client and /docs against a two-replica cluster.
#
#   cargo build && bash tests/browser/run.sh
#
# Environment:
#   CHAT_SERVER_BIN   server binary (default target/debug/chat-server)
#   CHAT_BENCH_BIN    chat-bench binary, which starts the cluster (default: built by cargo)
#   PG_ADMIN_URL      PostgreSQL server to create the throw-away database on
#                     (default postgres://postgres@127.0.0.1:5432)
#   E2E_ONLY          chat | docs | reconnect — run only one of the tests
#   KEEP_LOGS=1       print the replica logs even when the test passes
#
# What it does: python venv with the pinned requirements in target/browser-venv, Debian
# chromium + chromium-driver (installed only if missing), then `chat-bench cluster`
# (testkit/cluster.sh): a private redis-server on a free port, a fresh database
# chat_browser_<random>, `chat-server migrate` once, two replicas (cluster mode) on free
# ports, each ready on /readyz. Runs chat_e2e.py against them (its reconnect test stops
# replica 1 and starts it again on the same port, with the replicas' environment exported
# here), and tears everything down (trap): the cluster stops its processes and drops the
# database. Exit code = test result.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
# shellcheck source=../../testkit/cluster.sh
. "$ROOT/testkit/cluster.sh"

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
RESTARTED_PIDFILE="$LOGDIR/replica1-restarted.pid"
rm -f "$RESTARTED_PIDFILE"
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
  cluster_down
  if [[ "$TEST_RC" != 0 || -n "${KEEP_LOGS:-}" ]]; then
    for f in "$LOGDIR"/cluster/replica1.log "$LOGDIR"/cluster/replica2.log "$LOGDIR"/replica1-restarted.log; do
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

rand_hex() { python3 -c "import secrets; print(secrets.token_hex($1))"; }

# ---- the cluster: Redis, a fresh database, two replicas ------------------------------
# The replicas get this environment (--inherit-env), and the reconnect test starts replica 1
# again with it (chat_e2e.py passes its own on), DATABASE_URL and REDIS_URL added below.
export JWT_SECRET="$(rand_hex 32)"
export AUTO_MIGRATE=false
export SHUTDOWN_GRACE_SECS="${SHUTDOWN_GRACE_SECS:-3}"
export RUST_LOG="${RUST_LOG:-info}"
unset ALLOWED_ORIGINS || true
say "starting the cluster (chat-bench cluster: redis-server, database chat_browser_*, 2 replicas)"
cluster_up "$LOGDIR" --server-bin "$BIN" --replicas 2 --db postgres \
  --database-url "$PG_ADMIN_URL" --db-prefix chat_browser --inherit-env \
  || exit 1
export DATABASE_URL REDIS_URL
IFS=, read -r -a URLS <<<"$REPLICA_URLS"
IFS=, read -r -a PIDS <<<"$REPLICA_PIDS"
say "replicas ready at ${URLS[*]} (pids ${PIDS[*]}), database $DATABASE_URL, Redis $REDIS_URL"

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
