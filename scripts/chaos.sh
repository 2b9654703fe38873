#!/usr/bin/env bash
# The chaos run: Sluice's promise — every accepted message gets exactly one answer — kept
# while its processes die and its services restart. Bounded by a message count, about four
# minutes in all on a 2-core machine.
#
# It starts its OWN PostgreSQL 15 (initdb/pg_ctl, own data directory), Redis and RabbitMQ
# (own Erlang node, own mnesia/log directories, no plugins; it imports
# rabbitmq/definitions.json, so the API and the workers run as the `sluice-api` and
# `sluice-worker` broker users) on free ports — never the machine's shared services — plus
# mock-gemini (100 ms latency), `sluice-api migrate`, the API and two workers, from the debug
# binaries (built with `cargo build` when cargo is here). Per-user limits are off, retry
# delays short (500, 1000, 2000 ms), budgets generous.
#
# `sluice-bench paced` then posts CHAOS_COUNT messages at CHAOS_RATE/s over many users and
# chats, writing every 202'd reply id to a file; a POST that fails (API down, 5xx, timeout) is
# "not accepted", not lost. Meanwhile, once the first 202 is in: a worker is SIGKILLed three
# times (a replacement started each time), the API is SIGKILLed and started again, and Redis
# (SIGTERM by PID), PostgreSQL (`pg_ctl stop -m immediate`, a crash) and RabbitMQ
# (`rabbitmqctl -n NODE stop`) are each stopped and started again. Then it waits (bounded)
# until no reply is pending and the outbox is empty, and checks IN THE DATABASE:
#
#   accepted    lines the bench wrote (POSTs answered 202)
#   completed   accepted ids whose assistant message is `completed`
#   failed      accepted ids whose assistant message is `failed` with a reason (error_kind)
#   lost        accepted ids with no assistant message, still `pending`, or `failed`
#               without a reason; plus replies stored without a 202 (the API died between
#               its commit and its answer) that are still `pending`: committed is promised too
#   duplicated  an id answered 202 more than once, plus, per chat, assistant messages beyond
#               its user messages (one post answered by two replies), plus replies whose
#               generation moved past 1 (nobody retries or replays here, so only a reply issued
#               twice could move it). A request redelivered after a kill and answered again is
#               NOT a duplicate: the API stores a response only `WHERE status = 'pending' AND
#               generation = g`, so the second answer changes nothing; those extra provider
#               calls are shown apart, for information.
#
# Prints `accepted / completed / failed / lost / duplicated` and exits non-zero unless lost
# and duplicated are 0 (and something was accepted). Whatever happens, it kills everything
# it started and removes its directories (trap). It skips (exit 0, reason printed) only when
# a service binary is absent from the machine.
#
# Environment: CHAOS_COUNT (2400), CHAOS_RATE (40 POSTs/s), CHAOS_USERS (12), CHAOS_CHATS
# (chats per user, 3), CHAOS_DRAIN_SECS (120), CHAOS_KEEP_LOGS=1 keeps the logs (printed path).
# shellcheck disable=SC2317 # cleanup and the probes run from traps and wait_until
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source scripts/lib.sh

with_sbin_on_path

COUNT=${CHAOS_COUNT:-2400}
RATE=${CHAOS_RATE:-40}
USERS=${CHAOS_USERS:-12}
CHATS=${CHAOS_CHATS:-3}
DRAIN_SECS=${CHAOS_DRAIN_SECS:-120}
for v in COUNT USERS CHATS DRAIN_SECS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "CHAOS_$v must be a positive whole number, not '${!v}'"
done
[[ $RATE =~ ^[0-9]+([.][0-9]+)?$ ]] || die "CHAOS_RATE must be a positive number, not '$RATE'"

# ---------------------------------------------------------------------------------------
# What the machine must have. Only a missing service binary skips the run.

PG_BIN=/usr/lib/postgresql/15/bin
RABBIT_BIN=/usr/lib/rabbitmq/bin
skip() {
    info "chaos: SKIPPED: $*"
    exit 0
}
[[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl && -x $PG_BIN/postgres ]] ||
    skip "PostgreSQL 15 is not installed ($PG_BIN/initdb, pg_ctl)"
have redis-server || skip "redis-server is not installed"
[[ -x $RABBIT_BIN/rabbitmq-server ]] && have rabbitmqctl ||
    skip "rabbitmq-server is not installed ($RABBIT_BIN/rabbitmq-server, rabbitmqctl)"
have psql || die "psql (postgresql-client) is needed to check the database"
have curl || die "curl is needed to watch the stack"
id postgres >/dev/null 2>&1 || die "no 'postgres' OS user to run PostgreSQL as"
id rabbitmq >/dev/null 2>&1 || die "no 'rabbitmq' OS user to run RabbitMQ as"
# Where the rabbitmq user's Erlang cookie lives, which rabbitmqctl also reads.
RABBIT_HOME=$(getent passwd rabbitmq | cut -d: -f6)

# as_user USER CMD...: run CMD as USER, keeping the environment (root, or passwordless sudo).
as_user() {
    local user=$1
    shift
    if ((EUID == 0)); then
        runuser -u "$user" -- "$@"
    else
        sudo -n -E -u "$user" -- "$@"
    fi
}
((EUID == 0)) || sudo -n true 2>/dev/null || die "needs root (or passwordless sudo) to run PostgreSQL and RabbitMQ as their users"

BIN=target/debug
BINARIES=(sluice-api sluice-worker mock-gemini sluice-bench)
if have cargo; then
    # The same targets as scripts/test.sh's `cargo test --workspace --all-targets`, so the
    # features resolve alike and this is a no-op after it.
    info "chaos: building the debug binaries (a no-op after scripts/test.sh)…"
    cargo build --locked --workspace --all-targets >&2
fi
for b in "${BINARIES[@]}"; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing and cargo is not installed to build it"
done

# ---------------------------------------------------------------------------------------
# Private directories and free ports.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-chaos.XXXXXX")
chmod 755 "$WORK" # postgres and rabbitmq must reach their directories inside
LOGS=$WORK/logs
mkdir -p "$LOGS"
pick_port PG_PORT
pick_port REDIS_PORT
pick_port AMQP_PORT
pick_port DIST_PORT
pick_port MOCK_PORT
pick_port API_PORT
pick_port METRICS_PORT
RUN_ID=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
NODE="chaos$RUN_ID@localhost"

# ---------------------------------------------------------------------------------------
# Cleanup: whatever happens, stop all we started and remove our directories.

declare -A PID=() # name -> pid of processes started in the background
STARTED_AT=$SECONDS

# descendants PID: every process below PID (children first found, then theirs).
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

# Stops our node however far it got: politely, then by the PIDs we know (the pid file, and
# everything below the runuser we started, for a node that died before writing it).
stop_rabbit() {
    timeout 60 rabbitmqctl -q -n "$NODE" stop >/dev/null 2>&1 || true
    local pids=()
    [[ -s $WORK/rabbit/pid ]] && pids+=("$(cat "$WORK/rabbit/pid")")
    if [[ -n ${PID[rabbit]:-} ]]; then
        mapfile -t -O "${#pids[@]}" pids < <(descendants "${PID[rabbit]}")
        pids+=("${PID[rabbit]}")
    fi
    ((${#pids[@]} == 0)) || kill -9 "${pids[@]}" 2>/dev/null || true
    if [[ -n ${PID[rabbit]:-} ]]; then
        { wait "${PID[rabbit]}"; } 2>/dev/null || true
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    trap '' PIPE
    local name
    for name in "${!PID[@]}"; do
        [[ $name == rabbit ]] && continue
        # Reaped in a redirected group, so bash does not announce each "Killed".
        { kill -9 "${PID[$name]}" && wait "${PID[$name]}"; } 2>/dev/null
    done
    stop_rabbit
    if [[ -f $WORK/pg/data/postmaster.pid ]]; then
        as_user postgres "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w -t 30 stop >/dev/null 2>&1
    fi
    if ((rc != 0)); then
        for name in bench api worker-1 worker-2 worker-3 worker-4 worker-5 postgres redis rabbit; do
            [[ -s $LOGS/$name.log ]] && show_log "$LOGS/$name.log" 15
        done
    fi
    if [[ ${CHAOS_KEEP_LOGS:-0} == 1 ]]; then
        local kept
        kept=$(mktemp -d "${TMPDIR:-/tmp}/sluice-chaos-logs.XXXXXX")
        cp -a "$LOGS/." "$kept/" 2>/dev/null
        info "chaos: logs kept in $kept"
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: CMD in the background, its output in $LOGS/NAME.log.
start() {
    local name=$1
    shift
    "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
    PID[$name]=$!
}

# kill9 NAME: SIGKILL a process we started and reap it.
kill9() {
    { kill -9 "${PID[$1]}" && wait "${PID[$1]}"; } 2>/dev/null || true
    unset "PID[$1]"
}

# fail NAME MESSAGE: show NAME's log and stop.
fail() {
    show_log "$LOGS/$1.log" 40
    die "chaos: $2"
}

# ---------------------------------------------------------------------------------------
# The services.

PSQL=(psql -X -q -tA -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres)
pg_up() { PGCONNECT_TIMEOUT=2 "${PSQL[@]}" -d postgres -c 'SELECT 1' >/dev/null 2>&1; }

start_postgres() {
    as_user postgres "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$LOGS/postgres.log" -w -t 60 \
        -o "-p $PG_PORT -k $WORK/pg/sock -c listen_addresses=127.0.0.1" start >/dev/null ||
        fail postgres "PostgreSQL did not start on :$PG_PORT"
    wait_until 30 pg_up || fail postgres "PostgreSQL does not answer on :$PG_PORT"
}

redis_up() {
    # shellcheck disable=SC2016 # $1 expands in the child shell
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "PING\r\n" >&3 &&
        IFS= read -r l <&3 && [[ $l == "+PONG"* ]]' _ "$REDIS_PORT" 2>/dev/null
}
start_redis() {
    start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --dir "$WORK/redis"
    wait_until 30 redis_up || fail redis "Redis does not answer on :$REDIS_PORT"
}

start_rabbit() {
    # runuser keeps the environment: these name the node, its ports and its directories.
    start rabbit as_user rabbitmq env HOME="$RABBIT_HOME" \
        RABBITMQ_NODENAME="$NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$AMQP_PORT" RABBITMQ_DIST_PORT="$DIST_PORT" \
        RABBITMQ_MNESIA_BASE="$WORK/rabbit/mnesia" RABBITMQ_LOG_BASE="$WORK/rabbit/log" \
        RABBITMQ_CONFIG_FILE="$WORK/rabbit/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$WORK/rabbit/advanced.config" \
        RABBITMQ_CONF_ENV_FILE="$WORK/rabbit/rabbitmq-env.conf" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$WORK/rabbit/enabled_plugins" \
        RABBITMQ_FEATURE_FLAGS_FILE="$WORK/rabbit/feature_flags" \
        RABBITMQ_PID_FILE="$WORK/rabbit/pid" \
        "$RABBIT_BIN/rabbitmq-server"
    wait_for_port 127.0.0.1 "$AMQP_PORT" 90 || {
        show_log "$WORK/rabbit/log/$NODE.log" 30
        fail rabbit "RabbitMQ did not listen on :$AMQP_PORT within 90 s"
    }
    # definitions.json ships its users without passwords and is imported at every boot, so
    # they get theirs after every start (as rabbitmq/boot.sh does in compose).
    rabbitmqctl -q -n "$NODE" change_password sluice-api "$API_AMQP_PASSWORD" >/dev/null &&
        rabbitmqctl -q -n "$NODE" change_password sluice-worker "$WORKER_AMQP_PASSWORD" >/dev/null ||
        fail rabbit "cannot set the broker users' passwords"
}
API_AMQP_PASSWORD=$(random_secret)
WORKER_AMQP_PASSWORD=$(random_secret)

info "chaos: run $RUN_ID in $WORK: PostgreSQL :$PG_PORT, Redis :$REDIS_PORT, RabbitMQ :$AMQP_PORT ($NODE), API :$API_PORT, mock-gemini :$MOCK_PORT"

# RabbitMQ boots slowest (~15 s): start it first and set the rest up meanwhile.
mkdir -p "$WORK/rabbit/mnesia" "$WORK/rabbit/log"
cp rabbitmq/definitions.json "$WORK/rabbit/definitions.json"
cat >"$WORK/rabbit/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
definitions.import_backend = local_filesystem
definitions.local.path = $WORK/rabbit/definitions.json
disk_free_limit.absolute = 50MB
CONF
echo '[].' >"$WORK/rabbit/enabled_plugins"
echo 'ERL_EPMD_ADDRESS=127.0.0.1' >"$WORK/rabbit/rabbitmq-env.conf"
as_root chown -R rabbitmq: "$WORK/rabbit"
start_rabbit_started=$SECONDS
start_rabbit

mkdir -p "$WORK/pg/sock" "$WORK/redis"
touch "$LOGS/postgres.log"
as_root chown -R postgres: "$WORK/pg" "$LOGS/postgres.log"
as_user postgres "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres -A trust -E UTF8 --locale=C \
    >"$LOGS/initdb.log" 2>&1 || fail initdb "initdb failed"
start_postgres
"${PSQL[@]}" -d postgres -c "CREATE DATABASE sluice" || die "chaos: cannot create the database"
start_redis

start mock-gemini "$BIN/mock-gemini" --addr "127.0.0.1:$MOCK_PORT" --latency-ms 100
wait_for_port 127.0.0.1 "$MOCK_PORT" 20 || fail mock-gemini "mock-gemini is not listening"

# ---------------------------------------------------------------------------------------
# The stack.

export RUST_LOG=info,sqlx=warn
export SLUICE__DATABASE__URL="postgres://postgres:postgres@127.0.0.1:$PG_PORT/sluice"
export SLUICE__REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
export SLUICE__HTTP__ADDR="127.0.0.1:$API_PORT"
export SLUICE__HTTP__METRICS_ADDR="127.0.0.1:$METRICS_PORT"
export SLUICE__PROVIDER__BASE_URL="http://127.0.0.1:$MOCK_PORT"
export SLUICE__PROVIDER__TIMEOUT_MS=10000
export GEMINI_API_KEYS=chaos-1,chaos-2,chaos-3
SLUICE__AUTH__JWT_SECRET=$(random_secret)
export SLUICE__AUTH__JWT_SECRET
export SLUICE__RETRY__DELAYS_MS=500,1000,2000
export SLUICE__LIMITS__WINDOW_MS=1000 SLUICE__LIMITS__RPM=1000000 \
    SLUICE__LIMITS__TPM=4000000000 SLUICE__LIMITS__RPD=4000000000
export SLUICE__WORKER__BUDGET_WAIT_MS=5000
export SLUICE__USERS__MESSAGES_PER_MINUTE=0 SLUICE__USERS__MESSAGES_PER_DAY=0 \
    SLUICE__USERS__MAX_PENDING=0 SLUICE__USERS__LOGINS_PER_MINUTE_PER_EMAIL_AND_ADDRESS=0 \
    SLUICE__USERS__LOGINS_PER_MINUTE_PER_EMAIL=0 SLUICE__USERS__LOGINS_PER_MINUTE_PER_ADDRESS=0
# The broker users of rabbitmq/definitions.json (passwords set by start_rabbit).
API_AMQP="amqp://sluice-api:$API_AMQP_PASSWORD@127.0.0.1:$AMQP_PORT/%2f"
WORKER_AMQP="amqp://sluice-worker:$WORKER_AMQP_PASSWORD@127.0.0.1:$AMQP_PORT/%2f"

api_ready() {
    [[ $(curl --noproxy '*' -fsS --max-time 2 "http://127.0.0.1:$API_PORT/api/ready" 2>/dev/null) == *'"broker":"ok"'* ]]
}
start_api() {
    SLUICE__AMQP__URL=$API_AMQP start api "$BIN/sluice-api"
    wait_until 60 api_ready || fail api "the API was not ready within 60 s"
}

WORKERS=0
declare -A WORKER_PORT=()
worker_ready() { [[ $(curl --noproxy '*' -fsS --max-time 2 "http://127.0.0.1:$1/health" 2>/dev/null) == *'"broker":"connected"'* ]]; }
# start_worker: one more worker, named worker-N.
start_worker() {
    WORKERS=$((WORKERS + 1))
    local name=worker-$WORKERS port
    pick_port port
    WORKER_PORT[$name]=$port
    SLUICE__AMQP__URL=$WORKER_AMQP SLUICE__WORKER__HEALTH_ADDR="127.0.0.1:$port" \
        start "$name" "$BIN/sluice-worker"
    LIVE_WORKERS+=("$name")
}
LIVE_WORKERS=()

wait_until 90 tcp_open 127.0.0.1 "$AMQP_PORT" || fail rabbit "RabbitMQ is not up"
info "chaos: services up ($((SECONDS - start_rabbit_started)) s); migrating and starting the stack"
SLUICE__AMQP__URL=$API_AMQP "$BIN/sluice-api" migrate >"$LOGS/migrate.log" 2>&1 ||
    fail migrate "sluice-api migrate failed"
start_api
start_worker
start_worker
for w in "${LIVE_WORKERS[@]}"; do
    wait_until 60 worker_ready "${WORKER_PORT[$w]}" || fail "$w" "$w did not connect to the broker"
done

# ---------------------------------------------------------------------------------------
# The load, and the chaos alongside it.

ACCEPTED=$WORK/accepted.tsv
start bench "$BIN/sluice-bench" paced --api "http://127.0.0.1:$API_PORT" --rate "$RATE" \
    --count "$COUNT" --users "$USERS" --chats "$CHATS" --out "$ACCEPTED" \
    --request-timeout-secs 10 --setup-concurrency 2
bench_running() { kill -0 "${PID[bench]}" 2>/dev/null; }
first_accepted() { [[ -s $ACCEPTED ]] || { bench_running || fail bench "the bench stopped before posting"; false; }; }
wait_until 180 first_accepted || fail bench "no POST was accepted within 180 s (setup too slow?)"
T0=$SECONDS
info "chaos: load running ($COUNT POSTs at $RATE/s); the chaos begins"

at() { # at SECONDS: wait until SECONDS after the load began (at once if already past)
    local wait=$((T0 + $1 - SECONDS))
    ((wait > 0)) && sleep "$wait"
    return 0
}
event() { info "chaos: +$((SECONDS - T0)) s: $*"; }

kill_worker() {
    local victim=${LIVE_WORKERS[0]}
    LIVE_WORKERS=("${LIVE_WORKERS[@]:1}")
    event "SIGKILL $victim; starting a replacement"
    kill9 "$victim"
    start_worker
}

at 4
kill_worker
at 9
event "SIGKILL the API; starting it again"
kill9 api
start_api
at 16
event "restarting Redis"
kill "${PID[redis]}" 2>/dev/null || true
wait "${PID[redis]}" 2>/dev/null || true
unset "PID[redis]"
start_redis
at 22
kill_worker
at 27
event "restarting PostgreSQL (immediate stop: a crash)"
as_user postgres "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w -t 30 stop >/dev/null ||
    fail postgres "pg_ctl stop failed"
start_postgres
at 34
event "restarting RabbitMQ"
timeout 60 rabbitmqctl -q -n "$NODE" stop "$WORK/rabbit/pid" >/dev/null 2>&1 ||
    fail rabbit "rabbitmqctl stop failed"
wait "${PID[rabbit]}" 2>/dev/null || true
unset "PID[rabbit]"
start_rabbit
event "RabbitMQ is back"
at 56
kill_worker

info "chaos: waiting for the bench to finish posting"
while bench_running; do sleep 1; done
wait "${PID[bench]}" || fail bench "the bench failed"
unset "PID[bench]"
LOAD_SECS=$((SECONDS - T0))

# ---------------------------------------------------------------------------------------
# Drain, then check in the database.

sql() { "${PSQL[@]}" -d sluice -c "$1"; }
drained() {
    local left
    left=$(sql "SELECT (SELECT count(*) FROM messages WHERE status = 'pending')
                     + (SELECT count(*) FROM outbox)" 2>/dev/null) || return 1
    [[ $left == 0 ]]
}
info "chaos: load done in $LOAD_SECS s; waiting (at most $DRAIN_SECS s) until nothing is pending"
DRAIN_START=$SECONDS
wait_until "$DRAIN_SECS" drained || warn "still pending after $DRAIN_SECS s: $(sql "SELECT count(*) FROM messages WHERE status = 'pending'") replies, $(sql 'SELECT count(*) FROM outbox') outbox rows"
DRAIN=$((SECONDS - DRAIN_START))

read -r ACCEPTED_N DISTINCT COMPLETED FAILED_N LOST DUP_CHATS REISSUED UNACKED STRANDED < <(
    "${PSQL[@]}" -d sluice -F ' ' <<SQL
CREATE TEMP TABLE accepted (id uuid, chat uuid, n bigint);
\copy accepted FROM '$ACCEPTED'
WITH ids AS (SELECT DISTINCT id FROM accepted),
     answered AS (
        SELECT ids.id, m.status, m.error_kind, m.role
        FROM ids LEFT JOIN messages m ON m.id = ids.id),
     per_chat AS (
        SELECT chat_id,
               count(*) FILTER (WHERE role = 'assistant') AS replies,
               count(*) FILTER (WHERE role = 'user') AS posts
        FROM messages GROUP BY chat_id)
SELECT
    (SELECT count(*) FROM accepted),
    (SELECT count(*) FROM ids),
    (SELECT count(*) FROM answered WHERE role = 'assistant' AND status = 'completed'),
    (SELECT count(*) FROM answered
        WHERE role = 'assistant' AND status = 'failed' AND coalesce(error_kind, '') <> ''),
    (SELECT count(*) FROM answered
        WHERE role IS DISTINCT FROM 'assistant' OR status = 'pending'
           OR (status = 'failed' AND coalesce(error_kind, '') = '')),
    (SELECT coalesce(sum(greatest(replies - posts, 0)), 0) FROM per_chat),
    (SELECT count(*) FROM messages WHERE role = 'assistant' AND generation > 1),
    (SELECT count(*) FROM messages m
        WHERE m.role = 'assistant' AND NOT EXISTS (SELECT 1 FROM accepted a WHERE a.id = m.id)),
    (SELECT count(*) FROM messages m
        WHERE m.role = 'assistant' AND m.status = 'pending'
          AND NOT EXISTS (SELECT 1 FROM accepted a WHERE a.id = m.id));
SQL
)
[[ $STRANDED =~ ^[0-9]+$ ]] || die "chaos: could not read the results from the database"
LOST=$((LOST + STRANDED))
DUPLICATED=$((ACCEPTED_N - DISTINCT + DUP_CHATS + REISSUED))
FAILED_KINDS=$(sql "SELECT coalesce(string_agg(kind || ' ' || n, ', '), 'none') FROM (
    SELECT error_kind AS kind, count(*) AS n FROM messages
    WHERE role = 'assistant' AND status = 'failed' GROUP BY 1 ORDER BY 2 DESC) k")
CALLS=$(curl --noproxy '*' -fsS --max-time 5 "http://127.0.0.1:$MOCK_PORT/_stats" 2>/dev/null |
    sed -nE 's/.*"calls":([0-9]+).*/\1/p')
REPLIES=$(sql "SELECT count(*) FROM messages WHERE role = 'assistant' AND status <> 'pending'")
NOT_ACCEPTED=$(sed -nE 's/^ *not accepted +([0-9]+).*/\1/p' "$LOGS/bench.log" | tail -n 1)

cat <<REPORT
chaos: $COUNT POSTs at $RATE/s over $USERS users × $CHATS chats; load ${LOAD_SECS} s, drain ${DRAIN} s, whole run $((SECONDS - STARTED_AT)) s
chaos: 3 worker SIGKILLs, 1 API SIGKILL, Redis, PostgreSQL and RabbitMQ restarted once each
chaos: not accepted (API down, 5xx, timeouts) ${NOT_ACCEPTED:-?}; stored without a 202 $UNACKED ($STRANDED of them still pending, counted as lost)
chaos: failed by kind: $FAILED_KINDS
chaos: provider calls ${CALLS:-?} for $REPLIES stored replies (redeliveries after kills; not duplicates)
chaos: accepted $ACCEPTED_N / completed $COMPLETED / failed $FAILED_N / lost $LOST / duplicated $DUPLICATED
REPORT
if ((ACCEPTED_N == 0)); then
    die "chaos: nothing was accepted; the run proves nothing"
fi
if ((LOST != 0 || DUPLICATED != 0)); then
    die "chaos: FAILED: $LOST lost, $DUPLICATED duplicated"
fi
info "chaos: passed"
