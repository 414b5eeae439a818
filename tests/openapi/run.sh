#!/usr/bin/env bash
# The OpenAPI document against the running server ("the API document tells the truth").
#
#   cargo build --bin chat-server && bash tests/openapi/run.sh [validate] [client] [fuzz]
#
# With no argument, all three steps run, against one server (debug build, a free port,
# started by `chat-bench cluster`, testkit/cluster.sh) in embedded mode (a temp SQLite
# database) or, with OPENAPI_MODE=cluster, in cluster mode (a temp PostgreSQL database and a
# private redis-server), where revocation and the limits go through Redis:
#   validate  openapi-spec-validator accepts GET /api/v1/openapi.json.
#   client    openapi-python-client generates a client from that document into a temp dir;
#             client_flow.py drives register → login → create room → post → history →
#             logout → the token is refused, with it.
#   fuzz      schemathesis (checks not_a_server_error, status_code_conformance,
#             content_type_conformance, response_schema_conformance,
#             response_headers_conformance, ignored_auth, and positive_data_acceptance as
#             configured in schemathesis.toml: schema-valid data is never a 400/413/415/5xx),
#             in two passes:
#             1. logged in as a fresh user (Authorization header), every operation except
#                those that end the caller's session; afterwards that token must still work;
#             2. the session-ending operations (logout, password change, account deletion)
#                and the admin-only ones, each test case as a throwaway user registered for
#                it (hooks.py; promoted to admin for the admin-only operations).
#             0 failures allowed. Failures are reproducible with the printed seed.
#
# Environment:
#   CHAT_SERVER_BIN     server binary (default target/debug/chat-server)
#   CHAT_BENCH_BIN      chat-bench binary, which starts the server (default: built by cargo)
#   OPENAPI_MODE        embedded (default) or cluster
#   PG_ADMIN_URL        cluster mode: the PostgreSQL server for the temp database
#                       (default postgres://postgres@127.0.0.1:5432)
#   CI_TOOLS_DIR        where the pinned Python tools (requirements.txt) are installed once
#                       (default ~/.cache/chat-ci-tools); later runs download nothing
#   FUZZ_MAX_EXAMPLES   schemathesis test cases per operation and phase (default 25)
#   FUZZ_SEED           schemathesis seed (default: random, printed)
#   FUZZ_CHECKS         schemathesis checks instead of the list above (e.g. `all`)
#   KEEP_LOGS=1         print the end of the server log even when everything passes
#   OPENAPI_KEEP_REPORTS=DIR  keep schemathesis' JUnit/HAR reports and the server log there
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
# shellcheck source=../../testkit/cluster.sh
. "$ROOT/testkit/cluster.sh"

BIN="${CHAT_SERVER_BIN:-target/debug/chat-server}"
TOOLS_DIR="${CI_TOOLS_DIR:-$HOME/.cache/chat-ci-tools}"
PYTHON="${PYTHON:-python3}"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-25}"
MODE="${OPENAPI_MODE:-embedded}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432}"
[[ "$MODE" == embedded || "$MODE" == cluster ]] || { echo "OPENAPI_MODE: embedded or cluster" >&2; exit 2; }
SEED="${FUZZ_SEED:-$("$PYTHON" -c 'import secrets; print(secrets.randbelow(2**31))')}"

STEPS=("$@")
[[ ${#STEPS[@]} -gt 0 ]] || STEPS=(validate client fuzz)
for s in "${STEPS[@]}"; do
  case "$s" in validate | client | fuzz) ;; *) echo "unknown step: $s (validate, client, fuzz)" >&2; exit 2 ;; esac
done
wants() { [[ " ${STEPS[*]} " == *" $1 "* ]]; }

say() { echo "[openapi $(date +%H:%M:%S)] $*"; }
die() { say "FAILED: $*" >&2; exit 1; }

[[ -x "$BIN" ]] || die "server binary $BIN not found (build it with 'cargo build --bin chat-server' or set CHAT_SERVER_BIN)"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

# ---- tools: one venv per (python version, requirements.txt), installed once ----------------
stamp="$({ "$PYTHON" -c 'import sys; print(sys.version)'; cat "$HERE/requirements.txt"; } | sha256sum | cut -c1-16)"
VENV="$TOOLS_DIR/openapi-venv-$stamp"
if [[ ! -f "$VENV/.complete" ]]; then
  say "installing tests/openapi/requirements.txt into $VENV"
  rm -rf "$VENV"
  mkdir -p "$TOOLS_DIR"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$HERE/requirements.txt"
  touch "$VENV/.complete"
fi
PY="$VENV/bin/python"

# ---- one server on a free port ------------------------------------------------------------
WORK="$(mktemp -d)"
SERVER_LOG="$WORK/cluster/replica1.log"
cleanup() {
  local rc=$?
  set +e
  cluster_down   # stops the server and Redis, drops the temp database
  if [[ "$rc" != 0 || -n "${KEEP_LOGS:-}" ]] && [[ -f "$SERVER_LOG" ]]; then
    echo "----- last lines of the server log -----"
    tail -n 40 "$SERVER_LOG" | sed -E 's/(token=)[^& "]+/\1<redacted>/g'
  fi
  if [[ -n "${OPENAPI_KEEP_REPORTS:-}" ]]; then
    rm -rf "$OPENAPI_KEEP_REPORTS"; mkdir -p "$OPENAPI_KEEP_REPORTS"
    cp -r "$WORK"/report* "$OPENAPI_KEEP_REPORTS"/ 2>/dev/null
    cp "$SERVER_LOG" "$OPENAPI_KEEP_REPORTS/server.log" 2>/dev/null
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rand_hex() { "$PYTHON" -c "import secrets; print(secrets.token_hex($1))"; }

if [[ "$MODE" == cluster ]]; then
  WHERE=(--bus redis --db postgres --database-url "$PG_ADMIN_URL" --db-prefix chat_openapi)
  WHAT="cluster mode: a temp PostgreSQL database on $PG_ADMIN_URL, a private redis-server"
else
  WHERE=(--bus embedded --db sqlite)
  WHAT="embedded mode: SQLite in a temp dir"
fi

# The credential limits are raised (pass 2 registers a user per test case, all from
# 127.0.0.1); the room-creation limit is met within a run, so its 429 is exercised too.
ADMIN_PASSWORD="$(rand_hex 12)"
export ADMIN_USERNAME="fuzz-admin" ADMIN_EMAIL="fuzz-admin@example.com" ADMIN_PASSWORD
JWT_SECRET="$(rand_hex 32)" RUST_LOG="${RUST_LOG:-warn}"
export JWT_SECRET RUST_LOG
unset ALLOWED_ORIGINS || true
say "starting $BIN ($WHAT)"
# The server gets this environment (--inherit-env; the cluster sets DATABASE_URL and
# REDIS_URL, and none without Redis), then the settings here.
cluster_up "$WORK" --server-bin "$BIN" --replicas 1 "${WHERE[@]}" --inherit-env \
  --env ACCESS_TOKEN_TTL_SECS=3600 --env AUTH_RATE_PER_MIN=100000 \
  --env ACCOUNT_RATE_PER_MIN=100000 --env ROOMS_PER_HOUR=100 --env LOG_FORMAT=pretty \
  || die "the server did not start"
BASE="$BASE_URL"
SERVER_PID="$REPLICA_PIDS"
say "server ready on $BASE"
curl -sf -o "$WORK/openapi.json" "$BASE/api/v1/openapi.json" || die "GET /api/v1/openapi.json"

server_alive() { kill -0 "$SERVER_PID" 2>/dev/null || die "the server died (see its log below)"; }

# ---- 1. the document is valid OpenAPI ------------------------------------------------------
if wants validate; then
  say "openapi-spec-validator"
  "$VENV/bin/openapi-spec-validator" "$WORK/openapi.json" || die "the document is not valid OpenAPI"
fi

# ---- 2. a generated client drives the main flow --------------------------------------------
if wants client; then
  say "openapi-python-client generate"
  printf 'project_name_override: chat-client\npackage_name_override: chat_client\npost_hooks: []\n' >"$WORK/gen.yaml"
  (cd "$WORK" && "$VENV/bin/openapi-python-client" generate --path openapi.json --config gen.yaml \
    --meta none --output-path "$WORK/client/chat_client" --fail-on-warning) \
    || die "openapi-python-client could not generate a client"
  say "client_flow.py"
  PYTHONPATH="$WORK/client" "$PY" "$HERE/client_flow.py" "$BASE" || die "the generated client's flow"
  server_alive
fi

# ---- 3. schemathesis ----------------------------------------------------------------------
if wants fuzz; then
  CHECKS="${FUZZ_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,positive_data_acceptance,ignored_auth}"
  # Operations that end the caller's session, and the admin-only ones: fuzzed in pass 2.
  SESSION_OPS='^(POST /api/v1/auth/logout|PUT /api/v1/users/me/password|DELETE /api/v1/users/me|(PATCH|DELETE) /api/v1/users/\{id\})$'
  common=(--config-file "$HERE/schemathesis.toml" run "$WORK/openapi.json" --url "$BASE" --checks "$CHECKS" --max-examples "$MAX_EXAMPLES"
    --seed "$SEED" --workers 1 --request-timeout 10 --generation-database none --no-color
    --suppress-health-check all --warnings off)

  # A fresh user for pass 1; its token must survive the whole pass.
  read -r MAIN_TOKEN < <("$PY" "$HERE/hooks.py" register "$BASE") || die "registering the fuzzing user"

  say "schemathesis pass 1: logged in, every operation but the session-ending ones (seed $SEED, $MAX_EXAMPLES examples)"
  # From $WORK: schemathesis keeps a .schemathesis/ cache in its working directory.
  (cd "$WORK" && "$VENV/bin/schemathesis" "${common[@]}" --exclude-name-regex "$SESSION_OPS" \
    --header "Authorization: Bearer $MAIN_TOKEN" --report junit,har --report-dir "$WORK/report1") \
    || die "schemathesis pass 1 (reproduce with FUZZ_SEED=$SEED)"
  server_alive
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $MAIN_TOKEN" "$BASE/api/v1/users/me")"
  [[ "$code" == 200 ]] || die "the fuzzing user's token no longer works after pass 1 (GET /users/me: $code)"

  say "schemathesis pass 2: session-ending and admin-only operations, a throwaway user per test case"
  (cd "$WORK" && SCHEMATHESIS_HOOKS="$HERE/hooks.py" CHAT_BASE="$BASE" CHAT_ADMIN_LOGIN="$ADMIN_USERNAME" \
    CHAT_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
    "$VENV/bin/schemathesis" "${common[@]}" --include-name-regex "$SESSION_OPS" \
    --report junit,har --report-dir "$WORK/report2") \
    || die "schemathesis pass 2 (reproduce with FUZZ_SEED=$SEED)"
  server_alive
fi

# No 500 may hide behind a check that passed: the server logs every one.
if grep -q 'request failed' "$SERVER_LOG"; then
  grep 'request failed' "$SERVER_LOG" | head -n 5
  die "the server logged internal errors"
fi
say "ok: ${STEPS[*]}"
