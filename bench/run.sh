#!/usr/bin/env bash
# Runs one benchmark of the whole stack on this machine: mock-gemini (0 ms), one API, two
# workers, a fresh database `sluice_bench`, a unique queue and Redis prefix; then the
# `sluice-bench` scenario, the pipeline's own latency from the database, each process's peak
# RSS and CPU per message, optionally a profile. Everything it started, created or declared
# is removed on exit.
#
# Usage:
#   bench/run.sh flood CLIENTS MESSAGES [sluice-bench options…]   e.g. bench/run.sh flood 16 20000
#   bench/run.sh chat CLIENTS SECONDS [sluice-bench options…]     e.g. bench/run.sh chat 64 30
#   bench/run.sh paced RATE SECONDS [sluice-bench options…]       e.g. bench/run.sh paced 400 30
#   bench/run.sh live CHATS ROUNDS [sluice-bench options…]        e.g. bench/run.sh live 100 5
#     (a second API replica on BENCH_PORT_BASE + 3; half the chats listen on the event stream,
#     half poll, e.g. --poll-ms 250; mock-gemini streams with BENCH_CHUNK_PAUSE_MS between chunks)
#   bench/run.sh live-heavy WATCHED ROUNDS [sluice-bench options…] e.g. bench/run.sh live-heavy 200 2
#     (two API replicas as live; WATCHED listening chats and BENCH_UNWATCHED (4 × WATCHED)
#     unwatched ones, replies in 40 pieces (--chunks); phases unwatched, watched, mixed)
# Options after the three arguments go to `sluice-bench` as they are (e.g. --users 16).
# The human summary goes to stderr; one JSON line with every figure goes to stdout and is
# appended to $BENCH_OUT/runs.jsonl. bench/repeat.sh runs a scenario N times for medians.
#
# Environment:
#   BENCH_BIN_DIR          where sluice-api and sluice-worker come from (the tool's directory
#                          below): the build under test, e.g. an older build for an A/B.
#   CARGO_TARGET_DIR       mock-gemini and sluice-bench (the tool) always come from this
#                          checkout's build: $CARGO_TARGET_DIR/release, else target/release
#   BENCH_UNWATCHED        live-heavy's unwatched chats (4 × WATCHED)
#   BENCH_OUT              where results and profiles go (target/bench)
#   BENCH_PERF             api | worker | worker-2: `perf record` that process during the
#                          measured phase only; the report goes to $BENCH_OUT/perf-*.txt
#   BENCH_PERF_CALLGRAPH   perf's --call-graph (fp, as -g; dwarf unwinds Rust better, costs more)
#   BENCH_PERF_FREQ        samples per second (999)
#   BENCH_PORT_BASE        API port; workers' /health on +1 and +2, mock-gemini on +10, each
#                          API's /metrics on its port + 20 (18080)
#   BENCH_MOCK_LATENCY_MS  mock-gemini's latency (0)
#   BENCH_WINDOW_MS        the budgets' window, SLUICE__LIMITS__WINDOW_MS (1000)
#   BENCH_WAIT_IDLE        wait up to this many seconds for the CPUs to be under 20 % busy
#                          before measuring (0: just warn)
#   BENCH_BUILD=1          rebuild the release binaries even if they exist
#   BENCH_KEEP_LOGS=1      keep the processes' logs (always kept when something failed)
# shellcheck disable=SC2317 # cleanup and the probes run from traps and wait_until
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
source scripts/lib.sh

with_sbin_on_path

usage() {
    sed -n '9,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

(($# >= 3)) || usage
SCENARIO=$1 FIRST=$2 AMOUNT=$3
shift 3
EXTRA=("$@")
[[ $AMOUNT =~ ^[1-9][0-9]*$ ]] || die "the third argument must be a positive whole number, not '$AMOUNT'"
case $SCENARIO in
flood | chat | live | live-heavy)
    [[ $FIRST =~ ^[1-9][0-9]*$ ]] || die "the second argument must be a positive whole number, not '$FIRST'"
    ;;
paced)
    [[ $FIRST =~ ^[0-9]*\.?[0-9]+$ && ! $FIRST =~ ^[0.]+$ ]] || die "RATE must be a positive number, not '$FIRST'"
    ;;
*) usage ;;
esac
case $SCENARIO in
flood) SCENARIO_ARGS=(flood --clients "$FIRST" --messages "$AMOUNT") ;;
chat) SCENARIO_ARGS=(chat --clients "$FIRST" --duration-secs "$AMOUNT") ;;
# Waiting for the replies makes the CPU per message cover the whole pipeline.
paced) SCENARIO_ARGS=(paced --rate "$FIRST" --duration-secs "$AMOUNT" --wait-replies) ;;
live) SCENARIO_ARGS=(live --chats "$FIRST" --rounds "$AMOUNT") ;;
live-heavy)
    UNWATCHED=${BENCH_UNWATCHED:-$((4 * FIRST))}
    [[ $UNWATCHED =~ ^[0-9]+$ ]] || die "BENCH_UNWATCHED must be a whole number, not '$UNWATCHED'"
    SCENARIO_ARGS=(live-heavy --watched "$FIRST" --unwatched "$UNWATCHED" --rounds "$AMOUNT")
    ;;
esac
# Both live scenarios run two API replicas: a listener's stream is on one, its posts go
# through the other, so every piece crosses the stream exchange.
LIVE=0
[[ $SCENARIO == live || $SCENARIO == live-heavy ]] && LIVE=1

BASE=${BENCH_PORT_BASE:-18080}
[[ $BASE =~ ^[0-9]+$ ]] || die "BENCH_PORT_BASE must be a port number"
API_PORT=$BASE
WORKER_PORTS=($((BASE + 1)) $((BASE + 2)))
MOCK_PORT=$((BASE + 10))
API_PORTS=("$API_PORT")
((LIVE)) && API_PORTS+=($((BASE + 3)))
# Each API's /metrics listener: its HTTP port + 20.
METRICS_PORTS=()
for p in "${API_PORTS[@]}"; do METRICS_PORTS+=($((p + 20))); done
for p in "${API_PORTS[@]}" "${METRICS_PORTS[@]}" "${WORKER_PORTS[@]}" "$MOCK_PORT"; do
    port_in_use "$p" &&
        die "port $p is already in use (another benchmark running?); set BENCH_PORT_BASE to a free range"
done

PERF_TARGET=""
case ${BENCH_PERF:-} in
"") ;;
api) PERF_TARGET=api ;;
worker | worker-1) PERF_TARGET=worker-1 ;;
worker-2) PERF_TARGET=worker-2 ;;
*) die "BENCH_PERF must be api, worker or worker-2, not '$BENCH_PERF'" ;;
esac
[[ -z $PERF_TARGET ]] || have perf || die "BENCH_PERF is set but perf is not installed"

# The tool (load generator, stand-in provider) and the build under test are apart, so an
# older build is measured by the same tool against the same provider. The tool is where
# `cargo build` below puts it.
TOOL=${CARGO_TARGET_DIR:-target}/release
BIN=${BENCH_BIN_DIR:-$TOOL}
need_build=${BENCH_BUILD:-0}
BUILD=(mock-gemini sluice-bench)
for b in "${BUILD[@]}"; do [[ -x $TOOL/$b ]] || need_build=1; done
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    for b in sluice-api sluice-worker; do
        [[ -x $BIN/$b ]] || die "BENCH_BIN_DIR=$BIN has no executable $b"
    done
else
    BUILD+=(sluice-api sluice-worker)
    for b in sluice-api sluice-worker; do [[ -x $BIN/$b ]] || need_build=1; done
fi
if [[ $need_build == 1 ]]; then
    have cargo || die "cargo is not installed and the release binaries are missing"
    info "building the release binaries ${BUILD[*]}…"
    cargo build --release "${BUILD[@]/#/--bin=}"
fi

scripts/ensure-services.sh

RUN_ID=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
PREFIX="bench$RUN_ID."
REDIS_PREFIX="bench$RUN_ID:"
DB=sluice_bench
OUT=${BENCH_OUT:-target/bench}
mkdir -p "$OUT"
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")
export PGPASSWORD=postgres
pg() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d postgres "$@"; }
pgdb() { psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d "$DB" "$@"; }

PIDS=()
NAMES=()
PIDSTAT_PID=""
BENCH_PID=""
PERF_PID=""
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
    if [[ -n $PERF_PID ]]; then
        kill -INT "$PERF_PID" 2>/dev/null
        wait "$PERF_PID" 2>/dev/null
    fi
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

# pid_of NAME: the PID of a process `start` started.
pid_of() {
    local i
    for i in "${!NAMES[@]}"; do
        [[ ${NAMES[$i]} == "$1" ]] && echo "${PIDS[$i]}" && return 0
    done
    return 1
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

# listener_pid PORT COMMAND: the PID of COMMAND listening on 127.0.0.1:PORT — the root of a
# service's process tree (PostgreSQL's postmaster, RabbitMQ's beam.smp). The private
# services of a concurrent chaos run have the same names, hence the port. Without `ss`
# (or its process column, which needs root for others' sockets) the oldest COMMAND.
listener_pid() {
    local pid=""
    if have ss; then
        pid=$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o "\"$2\",pid=[0-9]*" | head -n 1 | sed 's/.*pid=//')
    fi
    if [[ -z $pid ]]; then
        pid=$(pgrep -o -x "$2" || true)
        [[ -n $pid ]] && warn "cannot tell which $2 listens on :$1; measuring the oldest, pid $pid"
    fi
    echo "$pid"
}

# json_str TEXT: TEXT as a JSON string.
json_str() {
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

pg -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
pg -c "CREATE DATABASE $DB"

export RUST_LOG=warn
export SLUICE__DATABASE__URL="postgres://postgres:postgres@127.0.0.1:5432/$DB"
export SLUICE__HTTP__ADDR="127.0.0.1:$API_PORT"
export SLUICE__HTTP__METRICS_ADDR="127.0.0.1:${METRICS_PORTS[0]}"
export SLUICE__QUEUES__PREFIX="$PREFIX"
export SLUICE__REDIS__PREFIX="$REDIS_PREFIX"
SLUICE__AUTH__JWT_SECRET=$(random_secret)
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
export SLUICE__USERS__LOGINS_PER_MINUTE_PER_EMAIL_AND_ADDRESS=0 SLUICE__USERS__LOGINS_PER_MINUTE_PER_EMAIL=0 \
    SLUICE__USERS__LOGINS_PER_MINUTE_PER_ADDRESS=0

info "run $RUN_ID: $BIN/sluice-api and sluice-worker, API :$API_PORT, workers :${WORKER_PORTS[*]}, mock-gemini :$MOCK_PORT, queues $PREFIX*, logs $LOGS"
start mock-gemini "$TOOL/mock-gemini" --addr "127.0.0.1:$MOCK_PORT" --latency-ms "${BENCH_MOCK_LATENCY_MS:-0}" \
    --chunk-pause-ms "${BENCH_CHUNK_PAUSE_MS:-20}"
wait_for_port 127.0.0.1 "$MOCK_PORT" 10 || { check_alive; die "mock-gemini is not listening on :$MOCK_PORT"; }

"$BIN/sluice-api" migrate >"$LOGS/migrate.log" 2>&1 ||
    { show_log "$LOGS/migrate.log" 40; die "sluice-api migrate failed"; }
start api "$BIN/sluice-api"
for i in "${!API_PORTS[@]}"; do
    ((i == 0)) && continue
    SLUICE__HTTP__ADDR="127.0.0.1:${API_PORTS[$i]}" SLUICE__HTTP__METRICS_ADDR="127.0.0.1:${METRICS_PORTS[$i]}" \
        start "api-$((i + 1))" "$BIN/sluice-api"
done
for i in "${!WORKER_PORTS[@]}"; do
    SLUICE__WORKER__HEALTH_ADDR="127.0.0.1:${WORKER_PORTS[$i]}" start "worker-$((i + 1))" "$BIN/sluice-worker"
done

ready() {
    check_alive
    # Ready answers 200 while the broker is still connecting (the outbox absorbs that); the
    # measurement should not start before the relay and the response consumer are up.
    local p
    for p in "${API_PORTS[@]}"; do
        [[ $(curl -fsS --max-time 2 "http://127.0.0.1:$p/api/ready" 2>/dev/null) == *'"broker":"ok"'* ]] || return 1
    done
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
# The shared services: CPU of their whole process trees (PostgreSQL's backends, WAL writer
# and checkpointer are children of the postmaster; RabbitMQ's helpers of beam.smp).
TREES=()
for svc in postgres:5432:postgres rabbitmq:5672:beam.smp redis:6379:redis-server; do
    IFS=: read -r label port comm <<<"$svc"
    pid=$(listener_pid "$port" "$comm")
    if [[ -n $pid ]]; then TREES+=("$label=$pid"); else warn "no $comm found: its CPU is not measured"; fi
done
TREE_LIST=$(
    IFS=,
    echo "${TREES[*]}"
)
HOOK_ARGS=()
[[ -n $TREE_LIST ]] && HOOK_ARGS+=(--cpu-trees "$TREE_LIST")

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
idle_deadline=$((SECONDS + ${BENCH_WAIT_IDLE:-0}))
while ((busy > 20 && SECONDS < idle_deadline)); do
    busy=$(busy_percent)
done
if ((busy > 20)); then
    warn "the CPUs are already ${busy}% busy before the run (other jobs: $(ps -eo comm= --sort=-%cpu | head -n 3 | paste -sd, -)); the figures will be low and noisy"
fi

if [[ -n $PERF_TARGET ]]; then
    perf_pid=$(pid_of "$PERF_TARGET")
    PERF_DATA="$OUT/perf-$SCENARIO-$PERF_TARGET-$RUN_ID.data"
    mkfifo "$LOGS/perf.ctl" "$LOGS/perf.ack"
    # Started with its events disabled (-D -1); the bench's hook enables them when the
    # measured phase begins, so the setup's argon2 hashing is not in the profile.
    perf record --call-graph "${BENCH_PERF_CALLGRAPH:-fp}" -F "${BENCH_PERF_FREQ:-999}" \
        -p "$perf_pid" -o "$PERF_DATA" -D -1 --control "fifo:$LOGS/perf.ctl,$LOGS/perf.ack" \
        </dev/null >"$LOGS/perf.log" 2>&1 &
    PERF_PID=$!
    cat >"$LOGS/measure-hook" <<HOOK
#!/usr/bin/env bash
# Called by sluice-bench: \$1 is start or stop. Tells perf to enable or disable its events
# and waits for its acknowledgement.
set -euo pipefail
case \$1 in start) cmd=enable ;; stop) cmd=disable ;; *) exit 2 ;; esac
exec 4<>"$LOGS/perf.ack"
# Bounded: a perf that died would leave the fifo without a reader.
timeout 10 bash -c 'echo "\$1" >"\$2"' _ "\$cmd" "$LOGS/perf.ctl"
read -r -t 10 answer <&4
[[ \$answer == ack* ]]
HOOK
    chmod +x "$LOGS/measure-hook"
    HOOK_ARGS+=(--measure-hook "$LOGS/measure-hook")
    # perf says so once it is attached with its events disabled.
    wait_until 10 grep -q "Events disabled" "$LOGS/perf.log" || true
    kill -0 "$PERF_PID" 2>/dev/null || { show_log "$LOGS/perf.log" 20; die "perf record exited"; }
    info "perf: recording $PERF_TARGET (pid $perf_pid) during the measured phase into $PERF_DATA"
fi

if have pidstat; then
    pidstat -u -h 2 >"$LOGS/pidstat.log" 2>&1 &
    PIDSTAT_PID=$!
fi

STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# In the background, so that Ctrl-C runs the cleanup at once instead of after the scenario.
rc=0
REPLICAS=$(printf 'http://127.0.0.1:%s,' "${API_PORTS[@]}")
((LIVE)) && SCENARIO_ARGS+=(--replicas "${REPLICAS%,}")
"$TOOL/sluice-bench" "${SCENARIO_ARGS[@]}" --api "http://127.0.0.1:$API_PORT" \
    --pids "$TARGET_LIST" "${HOOK_ARGS[@]}" --json "${EXTRA[@]}" </dev/null >"$LOGS/bench.json" &
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

PERF_JSON=null
if [[ -n $PERF_PID ]]; then
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
    report="${PERF_DATA%.data}.txt"
    # awk, not head: it reads to the end, so perf never gets a SIGPIPE. The symbol column is
    # padded to the longest name, and an empty IPC column follows: both go.
    top() { awk -v n="$1" 'NF && !/^# \.\.\./ && shown++ < n { sub(/( +-)* *$/, ""); print }'; }
    {
        echo "# perf record of $PERF_TARGET during the measured phase: bench/run.sh $SCENARIO $FIRST $AMOUNT ${EXTRA[*]}"
        echo "# self time by symbol"
        perf report -i "$PERF_DATA" --stdio --no-children -g none --sort dso,symbol --percent-limit 0.5 2>/dev/null | top 60
        echo
        echo "# self + callees by symbol (needs usable call graphs; see BENCH_PERF_CALLGRAPH)"
        perf report -i "$PERF_DATA" --stdio --children -g none --sort symbol --percent-limit 2 2>/dev/null | top 40
    } >"$report" || warn "perf report failed; the data is in $PERF_DATA"
    info "perf: top symbols in $report (data: $PERF_DATA)"
    PERF_JSON="{\"target\":$(json_str "$PERF_TARGET"),\"data\":$(json_str "$PERF_DATA"),\"report\":$(json_str "$report")}"
fi

# The pipeline's own time, from the database before it is dropped: created_at is stamped by
# the API as it starts handling the POST (the same transaction commits the outbox row),
# completed_at is the response consumer's transaction time when it stores the reply.
DB_SQL="
WITH a AS (
    SELECT status, 1000 * extract(epoch FROM completed_at - created_at)::float8 AS ms
    FROM messages WHERE role = 'assistant'
), c AS (SELECT ms FROM a WHERE status = 'completed')
SELECT json_build_object(
    'assistant_messages', (SELECT count(*) FROM a),
    'completed', (SELECT count(*) FROM c),
    'failed', (SELECT count(*) FROM a WHERE status = 'failed'),
    'pending', (SELECT count(*) FROM a WHERE status = 'pending'),
    'commit_to_stored_ms', (SELECT json_build_object(
        'p50', round((percentile_cont(0.50) WITHIN GROUP (ORDER BY ms))::numeric, 2),
        'p95', round((percentile_cont(0.95) WITHIN GROUP (ORDER BY ms))::numeric, 2),
        'p99', round((percentile_cont(0.99) WITHIN GROUP (ORDER BY ms))::numeric, 2),
        'max', round(max(ms)::numeric, 2),
        'mean', round(avg(ms)::numeric, 2)) FROM c),
    'other_database_connections', (SELECT count(*) FROM pg_stat_activity
        WHERE datname IS NOT NULL AND datname <> current_database() AND pid <> pg_backend_pid())
)"
DB_JSON=$(pgdb -c "$DB_SQL") || die "could not read the pipeline's figures from $DB"
DB_LINE=$(pgdb -F ' ' -c "
WITH c AS (SELECT 1000 * extract(epoch FROM completed_at - created_at)::float8 AS ms
           FROM messages WHERE role = 'assistant' AND status = 'completed')
SELECT format('%s replies stored; commit→stored p50 %s ms  p95 %s ms  p99 %s ms  max %s ms',
    count(*),
    round((percentile_cont(0.50) WITHIN GROUP (ORDER BY ms))::numeric, 2),
    round((percentile_cont(0.95) WITHIN GROUP (ORDER BY ms))::numeric, 2),
    round((percentile_cont(0.99) WITHIN GROUP (ORDER BY ms))::numeric, 2),
    round(max(ms)::numeric, 2)) FROM c")
info "pipeline (database): $DB_LINE"

sha() { sha256sum "$1" | cut -c1-12; }
RUN_JSON=$(
    printf '{"id":"%s","started_at":"%s","scenario":"%s","args":[%s,%s],"extra":%s,' \
        "$RUN_ID" "$STARTED_AT" "$SCENARIO" "$FIRST" "$AMOUNT" "$(json_str "${EXTRA[*]}")"
    printf '"bin_dir":%s,"api_sha256":"%s","worker_sha256":"%s","tool_commit":"%s",' \
        "$(json_str "$BIN")" "$(sha "$BIN/sluice-api")" "$(sha "$BIN/sluice-worker")" \
        "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    printf '"mock_latency_ms":%s,"window_ms":%s,"busy_before_percent":%s,"perf":%s}' \
        "${BENCH_MOCK_LATENCY_MS:-0}" "${BENCH_WINDOW_MS:-1000}" "$busy" "$PERF_JSON"
)
LINE="{\"run\":$RUN_JSON,\"db\":$DB_JSON,\"bench\":$(tr -d '\n' <"$LOGS/bench.json")}"
if have jq; then
    jq -e . >/dev/null <<<"$LINE" || die "internal error: the result line is not valid JSON: $LINE"
fi
printf '%s\n' "$LINE" >>"$OUT/runs.jsonl"
printf '%s\n' "$LINE"
FAILED=0
