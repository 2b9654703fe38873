#!/usr/bin/env bash
# Runs one benchmark of the whole stack on this machine: mock-gemini (0 ms), one API, two
# workers, a fresh database `sluice_bench`, a unique queue and Redis prefix; then the
# `sluice-bench` scenario, the processes' peak RSS and a per-process CPU breakdown (pidstat,
# when installed). Everything it started, created or declared is removed on exit.
#
# Usage:
#   bench/run.sh flood CLIENTS MESSAGES [sluice-bench options…]   e.g. bench/run.sh flood 16 20000
#   bench/run.sh chat CLIENTS SECONDS [sluice-bench options…]     e.g. bench/run.sh chat 64 30
# Options after the three arguments go to `sluice-bench` as they are (e.g. --json).
#
# Environment:
#   BENCH_PORT_BASE        API port; workers' /health on +1 and +2, mock-gemini on +10 (18080)
#   BENCH_MOCK_LATENCY_MS  mock-gemini's latency (0)
#   BENCH_WINDOW_MS        the budgets' window, SLUICE__LIMITS__WINDOW_MS (1000)
#   BENCH_BUILD=1          rebuild the release binaries even if they exist
#   BENCH_KEEP_LOGS=1      keep the processes' logs (always kept when something failed)
# shellcheck disable=SC2317 # cleanup and the probes run from traps and wait_until
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
source scripts/lib.sh

# rabbitmqctl lives in sbin dirs that are not on a non-root user's PATH.
for d in /usr/local/sbin /usr/sbin /sbin; do
    [[ ":$PATH:" == *":$d:"* ]] || PATH="$PATH:$d"
done
export PATH

usage() {
    sed -n '7,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

(($# >= 3)) || usage
SCENARIO=$1 CLIENTS=$2 AMOUNT=$3
shift 3
EXTRA=("$@")
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be a positive whole number, not '$CLIENTS'"
[[ $AMOUNT =~ ^[1-9][0-9]*$ ]] || die "the third argument must be a positive whole number, not '$AMOUNT'"
case $SCENARIO in
flood) SCENARIO_ARGS=(flood --clients "$CLIENTS" --messages "$AMOUNT") ;;
chat) SCENARIO_ARGS=(chat --clients "$CLIENTS" --duration-secs "$AMOUNT") ;;
*) usage ;;
esac

BASE=${BENCH_PORT_BASE:-18080}
[[ $BASE =~ ^[0-9]+$ ]] || die "BENCH_PORT_BASE must be a port number"
API_PORT=$BASE
WORKER_PORTS=($((BASE + 1)) $((BASE + 2)))
MOCK_PORT=$((BASE + 10))
for p in "$API_PORT" "${WORKER_PORTS[@]}" "$MOCK_PORT"; do
    port_in_use "$p" &&
        die "port $p is already in use (another benchmark running?); set BENCH_PORT_BASE to a free range"
done

BIN=target/release
BINARIES=(sluice-api sluice-worker mock-gemini sluice-bench)
need_build=${BENCH_BUILD:-0}
for b in "${BINARIES[@]}"; do [[ -x $BIN/$b ]] || need_build=1; done
if [[ $need_build == 1 ]]; then
    have cargo || die "cargo is not installed and the release binaries are missing"
    info "building the release binaries…"
    cargo build --release "${BINARIES[@]/#/--bin=}"
fi

scripts/ensure-services.sh

RUN_ID=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
PREFIX="bench$RUN_ID."
REDIS_PREFIX="bench$RUN_ID:"
DB=sluice_bench
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")
export PGPASSWORD=postgres
pg() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d postgres "$@"; }

PIDS=()
NAMES=()
PIDSTAT_PID=""
BENCH_PID=""
FAILED=1

delete_queues() {
    local names=() q
    if have rabbitmqadmin; then
        mapfile -t names < <(rabbitmqadmin -q -f tsv list queues name 2>/dev/null |
            awk -v p="$PREFIX" 'index($0, p) == 1')
        for q in "${names[@]}"; do rabbitmqadmin -q delete queue name="$q" >/dev/null || true; done
        local exchanges=()
        mapfile -t exchanges < <(rabbitmqadmin -q -f tsv list exchanges name 2>/dev/null |
            awk -v p="$PREFIX" 'index($0, p) == 1')
        for q in "${exchanges[@]}"; do rabbitmqadmin -q delete exchange name="$q" >/dev/null || true; done
    elif have rabbitmqctl; then
        mapfile -t names < <(rabbitmqctl -q list_queues name 2>/dev/null |
            awk -v p="$PREFIX" 'index($0, p) == 1')
        for q in "${names[@]}"; do rabbitmqctl -q delete_queue "$q" >/dev/null || true; done
    else
        warn "neither rabbitmqadmin nor rabbitmqctl found: queues $PREFIX* are left behind"
        return
    fi
    info "deleted ${#names[@]} queue(s) $PREFIX*"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Clean up whatever happens: a failing step must not stop the rest, nor a reader of our
    # output that went away (e.g. `| tail` killed by the same Ctrl-C).
    set +e
    trap '' PIPE
    [[ -n $BENCH_PID ]] && kill "$BENCH_PID" 2>/dev/null
    [[ -n $PIDSTAT_PID ]] && kill "$PIDSTAT_PID" 2>/dev/null
    if ((${#PIDS[@]})); then
        kill "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
    delete_queues || true
    if have redis-cli; then
        redis-cli -h 127.0.0.1 --scan --pattern "$REDIS_PREFIX*" 2>/dev/null |
            xargs -r redis-cli -h 127.0.0.1 del >/dev/null 2>&1 || true
    fi
    pg -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || warn "could not drop database $DB"
    if ((FAILED)) || [[ ${BENCH_KEEP_LOGS:-0} == 1 ]]; then
        info "logs kept in $LOGS"
    else
        rm -rf "$LOGS"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME COMMAND…: runs COMMAND in the background, its output in $LOGS/NAME.log.
start() {
    local name=$1
    shift
    "$@" </dev/null >"$LOGS/$name.log" 2>&1 &
    PIDS+=($!)
    NAMES+=("$name")
}

# Every started process must still run; otherwise show its log and stop.
check_alive() {
    local i
    for i in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            show_log "$LOGS/${NAMES[$i]}.log" 40
            die "${NAMES[$i]} (pid ${PIDS[$i]}) exited"
        fi
    done
}

pg -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
pg -c "CREATE DATABASE $DB"

export RUST_LOG=warn
export SLUICE__DATABASE__URL="postgres://postgres:postgres@127.0.0.1:5432/$DB"
export SLUICE__HTTP__ADDR="127.0.0.1:$API_PORT"
export SLUICE__QUEUES__PREFIX="$PREFIX"
export SLUICE__REDIS__PREFIX="$REDIS_PREFIX"
SLUICE__AUTH__JWT_SECRET="bench-$RUN_ID-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export SLUICE__AUTH__JWT_SECRET
export SLUICE__PROVIDER__BASE_URL="http://127.0.0.1:$MOCK_PORT"
export GEMINI_API_KEYS=bench-1,bench-2
# The benchmark measures the pipeline, not the free tier: budgets far above what one machine
# can send (the limits are per key and model). The budget window is 1 s instead of a minute
# (BENCH_WINDOW_MS): the Redis reservation script reads every call of the window, so at
# hundreds of calls per second a one-minute window would measure that scan, not the pipeline.
export SLUICE__LIMITS__RPM=1000000000 SLUICE__LIMITS__TPM=4000000000 SLUICE__LIMITS__RPD=4000000000
export SLUICE__LIMITS__WINDOW_MS="${BENCH_WINDOW_MS:-1000}"
# The bench measures the pipeline, not the per-user limits: turn them off (0).
export SLUICE__USERS__MESSAGES_PER_MINUTE=0 SLUICE__USERS__MESSAGES_PER_DAY=0 SLUICE__USERS__MAX_PENDING=0
export SLUICE__USERS__LOGINS_PER_MINUTE_PER_EMAIL=0 SLUICE__USERS__LOGINS_PER_MINUTE_PER_ADDRESS=0

info "run $RUN_ID: API :$API_PORT, workers :${WORKER_PORTS[*]}, mock-gemini :$MOCK_PORT, queues $PREFIX*, logs $LOGS"
start mock-gemini "$BIN/mock-gemini" --addr "127.0.0.1:$MOCK_PORT" --latency-ms "${BENCH_MOCK_LATENCY_MS:-0}"
wait_for_port 127.0.0.1 "$MOCK_PORT" 10 || { check_alive; die "mock-gemini is not listening on :$MOCK_PORT"; }

"$BIN/sluice-api" migrate >"$LOGS/migrate.log" 2>&1 ||
    { show_log "$LOGS/migrate.log" 40; die "sluice-api migrate failed"; }
start api "$BIN/sluice-api"
for i in "${!WORKER_PORTS[@]}"; do
    SLUICE__WORKER__HEALTH_ADDR="127.0.0.1:${WORKER_PORTS[$i]}" start "worker-$((i + 1))" "$BIN/sluice-worker"
done

ready() {
    check_alive
    # Ready answers 200 while the broker is still connecting (the outbox absorbs that); the
    # measurement should not start before the relay and the response consumer are up.
    [[ $(curl -fsS --max-time 2 "http://127.0.0.1:$API_PORT/api/ready" 2>/dev/null) == *'"broker":"ok"'* ]] || return 1
    local p
    for p in "${WORKER_PORTS[@]}"; do
        curl -fsS --max-time 2 "http://127.0.0.1:$p/health" >/dev/null 2>&1 || return 1
    done
}
wait_until 60 ready || die "the stack did not become ready within 60 s (logs: $LOGS)"
info "stack ready: $(curl -s "http://127.0.0.1:$API_PORT/api/ready")"

TARGETS=()
for i in "${!PIDS[@]}"; do TARGETS+=("${NAMES[$i]}=${PIDS[$i]}"); done
TARGET_LIST=$(
    IFS=,
    echo "${TARGETS[*]}"
)

# busy_percent: how busy the CPUs were over one second (from /proc/stat).
busy_percent() {
    local a b
    read -r -a a < <(grep '^cpu ' /proc/stat)
    sleep 1
    read -r -a b < <(grep '^cpu ' /proc/stat)
    # user nice system idle iowait irq softirq steal
    local busy=$(((b[1] + b[2] + b[3] + b[6] + b[7] + b[8]) - (a[1] + a[2] + a[3] + a[6] + a[7] + a[8])))
    local total=$((busy + (b[4] + b[5]) - (a[4] + a[5])))
    echo $((total > 0 ? 100 * busy / total : 0))
}
busy=$(busy_percent)
if ((busy > 20)); then
    warn "the CPUs are already ${busy}% busy before the run (other jobs: $(ps -eo comm= --sort=-%cpu | head -n 3 | paste -sd, -)); the figures will be low and noisy"
fi

if have pidstat; then
    pidstat -u -h 2 >"$LOGS/pidstat.log" 2>&1 &
    PIDSTAT_PID=$!
fi

# In the background, so that Ctrl-C runs the cleanup at once instead of after the scenario.
rc=0
"$BIN/sluice-bench" "${SCENARIO_ARGS[@]}" --api "http://127.0.0.1:$API_PORT" \
    --pids "$TARGET_LIST" "${EXTRA[@]}" </dev/null &
BENCH_PID=$!
wait "$BENCH_PID" || rc=$?
BENCH_PID=""

if [[ -n $PIDSTAT_PID ]]; then
    kill "$PIDSTAT_PID" 2>/dev/null || true
    wait "$PIDSTAT_PID" 2>/dev/null || true
    PIDSTAT_PID=""
    # Average %CPU per command over the run (100 % = one core).
    awk '
        $1 !~ /^#/ && NF >= 10 && $8 ~ /^[0-9.]+$/ {
            if (!($1 in seen)) { seen[$1] = 1; samples++ }
            cpu[$10] += $8
        }
        END {
            if (!samples) exit
            for (c in cpu) {
                if (c !~ /^(postgres|beam\.smp|sluice-|mock-gemini|redis-server|erl_child_setup|inet_gethost|epmd|pidstat|kworker|ksoftirqd|kdamond|rcu_|jbd2)/)
                    other += cpu[c]
            }
            printf "average CPU per command during the run (%d samples of 2 s; 100 %% = one core; outside the stack: %.1f %%):\n", samples, other / samples
            for (c in cpu) printf "  %6.1f %%  %s\n", cpu[c] / samples, c
        }' "$LOGS/pidstat.log" | { read -r head && echo "$head" && sort -rn | head -n 10; } >&2 || true
fi

check_alive
((rc == 0)) || die "sluice-bench failed (exit $rc)"
FAILED=0
