#!/usr/bin/env bash
# A guided walk through the order service (`just run`):
#   1. builds order-service and applies the migrations,
#   2. starts `order-service serve` in the background on $HTTP_ADDR,
#   3. waits for GET /health/ready,
#   4. walks through the three ways the service is used:
#      - commands: creates an order, reserves it, confirms it for its total and prints its
#        event history, each through `order-service call` (signed like a peer service would);
#      - queries: reads the order the way payment-service does before it charges
#        (`/internal/orders/{id}/for-payment`, signed as payment-service);
#      - event stream: reads the order's events from NATS as a subscriber receives them
#        (`order-service subscribe`), then checks the read model against a rebuild from the
#        events (`order-service replay --dry-run`),
#   5. keeps the service running, its log in the foreground, until Ctrl-C.
#
# Postgres and NATS must answer first: `just run` runs scripts/services.sh before this.
# `scripts/demo.sh --once` stops the service after step 4 instead of waiting (smoke test).
#
# The exact subcommands and flags of the binary are in the variables just below, so that they
# can follow the CLI as it changes. Assumptions about `call`: it prints the response body (JSON)
# on stdout and exits non-zero for a non-2xx answer.
set -euo pipefail

# --- CLI of the binary (adjust here) --------------------------------------------------------
SERVE_ARGS=(serve)                 # starts the HTTP server, jobs and relay
MIGRATE_ARGS=(migrate)             # applies migrations; set to () to skip
CALL_ARGS=(call)                   # call METHOD PATH [flags]: a signed request
CALL_BODY_FLAG="--body"            # JSON request body
CALL_AS_FLAG="--as"                # the calling service whose key signs the request
CALL_TENANT_FLAG="--tenant"        # sent as X-Tenant-ID
CALL_EXTRA_ARGS=()                 # e.g. (--url "http://$HTTP_ADDR") if `call` needs the address
CALLER="${DEMO_CALLER:-api-gateway}"   # open to create, reserve and the history (docs/contract.md §4)

# --- Environment of the demo service -------------------------------------------------------
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${DATA_DIR:-$REPO_ROOT/.data}"
BIN="${ORDER_SERVICE_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/order-service}"  # set: use it, no build
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/order_service}"
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
export HTTP_ADDR="${HTTP_ADDR:-127.0.0.1:8080}"
export APP_ENV="${APP_ENV:-development}"
export SERVICE_NAME="${SERVICE_NAME:-order-service}"
export INTERNAL_SERVICE_SECRET="${INTERNAL_SERVICE_SECRET:-dev-internal-secret-change-me}"
export RUST_LOG="${RUST_LOG:-info}"
READY_TIMEOUT="${DEMO_READY_TIMEOUT:-60}"
SERVER_LOG="$DATA_DIR/demo-server.log"
BASE_URL="http://$HTTP_ADDR"

ONCE=0
[[ "${1:-}" == "--once" ]] && ONCE=1

SERVER_PID=""
TAIL_PID=""

if [[ -t 1 ]]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD="" PLAIN=""; fi
say() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$PLAIN"; }
die() { printf 'demo.sh: error: %s\n' "$*" >&2; exit 1; }

# Stop the background service (SIGTERM: it drains within 30 s), then the log follower.
# shellcheck disable=SC2317 # called from the traps below
cleanup() {
  trap - EXIT INT TERM
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    printf '\nstopping order-service (pid %s)...\n' "$SERVER_PID"
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 350); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ -n "$TAIL_PID" ]]; then kill "$TAIL_PID" 2>/dev/null || true; fi
}
# shellcheck disable=SC2317
on_exit() { local rc=$?; cleanup; exit "$rc"; }
# shellcheck disable=SC2317
on_signal() { cleanup; exit 0; }
trap on_exit EXIT
trap on_signal INT TERM

# Pull a value out of JSON on stdin by a dotted path (order.id, order.totalCents).
json_get() {
  python3 -c '
import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1].split("."):
    value = value[int(key)] if isinstance(value, list) else value[key]
print(value)
' "$1"
}

# Pretty-print JSON when it is JSON, as-is otherwise.
show_json() {
  python3 -c '
import json, sys
text = sys.stdin.read()
try:
    print(json.dumps(json.loads(text), indent=2))
except ValueError:
    print(text)
'
}

uuid() { python3 -c 'import uuid; print(uuid.uuid4())'; }

# HTTP status of GET $1, or 000 when nothing answers.
http_status() {
  python3 - "$1" <<'EOF'
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
EOF
}

# Signed request through the binary: call_api METHOD PATH [JSON]. Prints the body to stdout.
# CALL_AS (default $CALLER) names the calling service.
call_api() {
  local method="$1" path="$2" body="${3:-}"
  local -a args=("${CALL_ARGS[@]}" "$method" "$path" "$CALL_AS_FLAG" "${CALL_AS:-$CALLER}"
    "$CALL_TENANT_FLAG" "$TENANT_ID" "${CALL_EXTRA_ARGS[@]}")
  [[ -n "$body" ]] && args+=("$CALL_BODY_FLAG" "$body")
  printf '   $ order-service %s\n' "${args[*]}" >&2
  "$BIN" "${args[@]}"
}

# --- 1. Build and migrate -------------------------------------------------------------------
mkdir -p "$DATA_DIR"
if [[ -z "${ORDER_SERVICE_BIN:-}" ]]; then
  say "Building order-service (cargo build -p order-api --bin order-service)"
  (cd "$REPO_ROOT" && cargo build -q -p order-api --bin order-service)
fi
[[ -x "$BIN" ]] || die "$BIN was not built"

if (( ${#MIGRATE_ARGS[@]} )); then
  say "Applying migrations to $DATABASE_URL"
  "$BIN" "${MIGRATE_ARGS[@]}"
fi

# --- 2. Start the service -------------------------------------------------------------------
if [[ "$(http_status "$BASE_URL/health/live")" != "000" ]]; then
  die "something already answers on $HTTP_ADDR; stop it or set HTTP_ADDR"
fi
say "Starting order-service ${SERVE_ARGS[*]} on $HTTP_ADDR (APP_ENV=$APP_ENV, log $SERVER_LOG)"
"$BIN" "${SERVE_ARGS[@]}" </dev/null >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

# --- 3. Wait until ready (Postgres, NATS and the relay answer) -------------------------------
say "Waiting up to ${READY_TIMEOUT}s for GET /health/ready"
deadline=$((SECONDS + READY_TIMEOUT))
until [[ "$(http_status "$BASE_URL/health/ready")" == "200" ]]; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    tail -n 30 "$SERVER_LOG" >&2 || true
    die "order-service exited before it was ready (log: $SERVER_LOG)"
  fi
  if (( SECONDS >= deadline )); then
    tail -n 30 "$SERVER_LOG" >&2 || true
    die "order-service not ready after ${READY_TIMEOUT}s (log: $SERVER_LOG)"
  fi
  sleep 0.5
done
echo "ready: $BASE_URL"

# --- 4. The demo steps ----------------------------------------------------------------------
TENANT_ID="${DEMO_TENANT_ID:-$(uuid)}"
USER_ID="$(uuid)"
EVENT_ID="$(uuid)"
TICKET_TYPE_ID="$(uuid)"

say "1/7 Create an order: tenant $TENANT_ID buys 2 tickets at 25.00 USD plus 3.00 fees and 2.00 tax, signed as $CALLER (POST /api/v1/orders)"
ITEMS="[{\"ticketTypeId\": \"$TICKET_TYPE_ID\", \"quantity\": 2, \"unitPriceCents\": 2500}]"
created="$(call_api POST /api/v1/orders "{\"userId\": \"$USER_ID\", \"eventId\": \"$EVENT_ID\", \"currency\": \"USD\", \"items\": $ITEMS, \"feesCents\": 300, \"taxCents\": 200}")"
show_json <<<"$created"
ORDER_ID="$(json_get order.id <<<"$created")"
TOTAL_CENTS="$(json_get order.totalCents <<<"$created")"

say "2/7 Reserve order $ORDER_ID: holds its tickets while the buyer pays (POST /api/v1/orders/$ORDER_ID/reserve)"
reserved="$(call_api POST "/api/v1/orders/$ORDER_ID/reserve" '{}')"
show_json <<<"$reserved"
VERSION="$(json_get order.version <<<"$reserved")"

say "3/7 Query it as payment-service does before it charges: the read model, waiting until it has caught up with version $VERSION (GET /internal/orders/$ORDER_ID/for-payment?minVersion=$VERSION)"
CALL_AS=payment-service call_api GET "/internal/orders/$ORDER_ID/for-payment?minVersion=$VERSION" | show_json

PAYMENT_INTENT="pi_demo_$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
say "4/7 Confirm the payment of its total, $TOTAL_CENTS cents, signed as payment-service after a successful charge (POST /api/v1/orders/$ORDER_ID/confirm)"
CALL_AS=payment-service call_api POST "/api/v1/orders/$ORDER_ID/confirm" \
  "{\"paymentIntentId\": \"$PAYMENT_INTENT\", \"amountCents\": $TOTAL_CENTS}" | show_json

say "5/7 Read the order's event history: every change above is an event in the store (GET /api/v1/orders/$ORDER_ID/events)"
history="$(call_api GET "/api/v1/orders/$ORDER_ID/events")"
show_json <<<"$history"
EVENTS="$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["events"]))' <<<"$history")"

say "6/7 Receive its $EVENTS events from the NATS stream as a subscriber does: the outbox relay published each one once, in order (order-service subscribe --order $ORDER_ID)"
printf '   $ order-service subscribe --order %s --count %s\n' "$ORDER_ID" "$EVENTS" >&2
RUST_LOG=warn "$BIN" subscribe --order "$ORDER_ID" --count "$EVENTS" --wait 10

say "7/7 Rebuild the orders read model from the events into shadow tables and compare it with the live one, changing nothing (order-service replay --projection orders --dry-run)"
printf '   $ order-service replay --projection orders --dry-run\n' >&2
RUST_LOG=warn "$BIN" replay --projection orders --dry-run

# --- 5. Keep serving ------------------------------------------------------------------------
if (( ONCE )); then
  say "Demo done (--once): stopping the service"
  exit 0
fi
say "Demo done. order-service keeps running on $BASE_URL (try /health/ready, /metrics, /openapi.json). Its log follows; Ctrl-C stops it."
tail -n +1 -f "$SERVER_LOG" &
TAIL_PID=$!
set +e
wait "$SERVER_PID"
rc=$?
set -e
SERVER_PID=""
echo "order-service exited with status $rc"
exit "$rc"
