#!/usr/bin/env bash
# Runs the whole Sluice stack on this machine: makes sure PostgreSQL, RabbitMQ and Redis are
# up, builds, applies migrations, and starts the API and two workers — plus mock-gemini as the
# provider when GEMINI_API_KEYS is not set. Ctrl-C stops what this script started; the system
# services keep running.
#
# Ports (change with the variable named): API 8080 (SLUICE_API_PORT), the API's /metrics 9464
# (SLUICE_METRICS_PORT), workers' /health and /metrics 8081 and 8082 (SLUICE_WORKER_PORTS, space
# separated), mock-gemini 8090 (MOCK_GEMINI_PORT).
# shellcheck disable=SC2317 # stop_all and ready run from traps and wait_until
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source scripts/lib.sh

have cargo || die "cargo is not installed: install the Rust toolchain (rustup) first"

API_PORT="${SLUICE_API_PORT:-8080}"
METRICS_PORT="${SLUICE_METRICS_PORT:-9464}"
read -r -a WORKER_PORTS <<<"${SLUICE_WORKER_PORTS:-8081 8082}"
MOCK_PORT="${MOCK_GEMINI_PORT:-8090}"

check_port() { # PORT VARIABLE
    if port_in_use "$1"; then
        die "port $1 is already in use; set $2 to a free port (e.g. $2=$(($1 + 100)))"
    fi
}
check_port "$API_PORT" SLUICE_API_PORT
check_port "$METRICS_PORT" SLUICE_METRICS_PORT
for p in "${WORKER_PORTS[@]}"; do check_port "$p" SLUICE_WORKER_PORTS; done
[[ -n "${GEMINI_API_KEYS:-}" ]] || check_port "$MOCK_PORT" MOCK_GEMINI_PORT

scripts/ensure-services.sh

info "building (release)…"
cargo build --release --locked --bin sluice-api --bin sluice-worker --bin mock-gemini
BIN=target/release

# Secrets that must outlive a restart (so issued tokens stay valid) live in .run/. One the API
# would refuse (fewer than 16 distinct bytes: the hex ones earlier versions wrote sometimes
# have) is replaced.
mkdir -p .run
secret_file() { # NAME -> prints the secret, creating it once
    local f=".run/$1"
    if [[ ! -s $f || $(fold -w1 "$f" | sort -u | wc -l) -lt 16 ]]; then
        (umask 077 && random_secret >"$f")
    fi
    cat "$f"
}
export SLUICE__AUTH__JWT_SECRET="${SLUICE__AUTH__JWT_SECRET:-$(secret_file jwt_secret)}"
export SLUICE__ADMIN__TOKEN="${SLUICE__ADMIN__TOKEN:-$(secret_file admin_token)}"
export SLUICE__HTTP__ADDR="127.0.0.1:$API_PORT"
export SLUICE__HTTP__METRICS_ADDR="127.0.0.1:$METRICS_PORT"
export RUST_LOG="${RUST_LOG:-info,sqlx=warn}"

if [[ -z "${SLUICE__DATABASE__URL:-}" ]]; then
    export PGPASSWORD=postgres
    if [[ -z "$(psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'sluice'")" ]]; then
        psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE sluice" >/dev/null
        info "created database sluice"
    fi
fi

PIDS=()
stop_all() {
    trap - INT TERM EXIT
    if ((${#PIDS[@]})); then
        info "stopping…"
        kill "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

declare -A LABELS
start() { # LABEL COMMAND...
    local label=$1
    shift
    "$@" > >(sed -u "s/^/[$label] /") 2>&1 &
    PIDS+=($!)
    LABELS[$!]=$label
}

if [[ -z "${GEMINI_API_KEYS:-}" ]]; then
    export GEMINI_API_KEYS="mock-1=mock-key-$RANDOM$RANDOM,mock-2=mock-key-$RANDOM$RANDOM,mock-3=mock-key-$RANDOM$RANDOM"
    export SLUICE__PROVIDER__BASE_URL="http://127.0.0.1:$MOCK_PORT"
    mock_keys=$(tr ',' '\n' <<<"$GEMINI_API_KEYS" | cut -d= -f2 | paste -sd,)
    start mock "$BIN/mock-gemini" --addr "127.0.0.1:$MOCK_PORT" --keys "$mock_keys" \
        --latency-ms "${MOCK_GEMINI_LATENCY_MS:-200}"
    wait_for_port 127.0.0.1 "$MOCK_PORT" 10 || die "mock-gemini did not start"
    info "no GEMINI_API_KEYS: using mock-gemini on 127.0.0.1:$MOCK_PORT with three generated keys"
fi

"$BIN/sluice-api" migrate
start api "$BIN/sluice-api"
for i in "${!WORKER_PORTS[@]}"; do
    SLUICE__WORKER__HEALTH_ADDR="127.0.0.1:${WORKER_PORTS[$i]}" start "worker-$((i + 1))" "$BIN/sluice-worker"
done

ready() { curl -fsS "http://127.0.0.1:$API_PORT/api/ready" >/dev/null 2>&1; }
wait_until 60 ready || die "the API did not become ready on port $API_PORT"

cat >&2 <<MSG

Sluice is running: http://127.0.0.1:$API_PORT  (RabbitMQ UI: http://127.0.0.1:15672, guest/guest)
Admin token: $SLUICE__ADMIN__TOKEN
Metrics: http://127.0.0.1:$METRICS_PORT/metrics (API), http://127.0.0.1:${WORKER_PORTS[0]}/metrics (a worker)

Try it:
  TOKEN=\$(curl -s http://127.0.0.1:$API_PORT/api/auth/register -H 'content-type: application/json' \\
      -d '{"email":"me-'\$RANDOM'@example.com","password":"correct horse"}' | sed -E 's/.*"token":"([^"]+)".*/\1/')
  CHAT=\$(curl -s http://127.0.0.1:$API_PORT/api/chats -H "authorization: Bearer \$TOKEN" \\
      -H 'content-type: application/json' -d '{"title":"hello"}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
  curl -s http://127.0.0.1:$API_PORT/api/chats/\$CHAT/messages -H "authorization: Bearer \$TOKEN" \\
      -H 'content-type: application/json' -d '{"content":"Hello!"}'
  curl -s http://127.0.0.1:$API_PORT/api/chats/\$CHAT/messages -H "authorization: Bearer \$TOKEN"

Ctrl-C stops Sluice (PostgreSQL, RabbitMQ and Redis keep running).
MSG

# Stop everything when any one process exits, so a crash is not hidden. Ctrl-C reaches the
# processes as well (they share the terminal's process group): they drain and exit 0, which is
# a clean stop, not a crash.
status=0
exited=""
wait -n -p exited "${PIDS[@]}" || status=$?
if ((status == 0)); then
    info "stopped"
    exit 0
fi
die "${LABELS[$exited]:-a Sluice process} exited with status $status; stopping the rest"
