#!/usr/bin/env bash
# Make sure the services Sluice needs are running on 127.0.0.1 (default ports):
#   PostgreSQL 15  127.0.0.1:5432  postgres://postgres:postgres@127.0.0.1:5432/postgres
#   Redis 7        127.0.0.1:6379
#   RabbitMQ       127.0.0.1:5672 (AMQP, guest/guest), management UI http://127.0.0.1:15672
#
# For each service: if it already answers, nothing is done (the whole script
# then takes well under a second). If it is installed but stopped, it is
# started; if it is not installed, it is installed from Debian's packages
# first. Target: Debian 12, root, no systemd (services started with plain
# commands). Non-root works too when passwordless sudo is available.
#
# Prints one status line per service to stderr ("postgres: ok",
# "redis: started", ...). Exits non-zero with a message naming the service
# (and its log) on failure. Safe to run concurrently: runs are serialised
# with a lock file.
#
# Usage: scripts/ensure-services.sh      (or: source scripts/ensure-services.sh)

# When sourced, run as a child process instead, so that strict mode, the
# helper definitions and `exit` (from die) don't leak into the caller's shell.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    bash "${BASH_SOURCE[0]}"
    return $?
fi

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

with_sbin_on_path

readonly HOST=127.0.0.1
readonly PG_PORT=5432 REDIS_PORT=6379 AMQP_PORT=5672 MGMT_PORT=15672
readonly PG_TIMEOUT=30 REDIS_TIMEOUT=30 RABBIT_TIMEOUT=60
readonly REDIS_DIR=/var/lib/redis REDIS_LOG=/var/log/redis/ci.log
readonly RABBIT_LOG_DIR=/var/log/rabbitmq

# Services whose packages were installed by this run (for the status line).
declare -A INSTALLED=()

# --------------------------------------------------------------------------
# privilege helpers

noninteractive() { [[ -n ${CI:-} ]] || [[ ! -t 0 ]]; }

# as_root CMD...: run CMD as root (directly, or through sudo). fd 9 (the lock)
# is closed so that daemons started here don't keep holding it.
as_root() {
    if ((EUID == 0)); then
        "$@" 9>&-
    elif have sudo; then
        if noninteractive; then sudo -n -- "$@" 9>&-; else sudo -- "$@" 9>&-; fi
    else
        die "need root (or sudo) to run: $*"
    fi
}

# as_postgres CMD...: run CMD as the postgres OS user (peer auth on the socket).
as_postgres() {
    id postgres >/dev/null 2>&1 || die "postgres: no 'postgres' OS user on this machine"
    if ((EUID == 0)); then
        (cd / && runuser -u postgres -- "$@" 9>&-)
    elif have sudo; then
        local n=()
        noninteractive && n=(-n)
        (cd / && sudo "${n[@]}" -u postgres -- "$@" 9>&-)
    else
        die "need root (or sudo) to run as postgres: $*"
    fi
}

# run_logged CMD...: run CMD with stdin from /dev/null and its output in a
# temp file (so daemons never hold our stdout/stderr pipes open); print the
# output only if CMD fails.
run_logged() {
    local out rc=0
    out=$(mktemp "${TMPDIR:-/tmp}/sluice-ensure.XXXXXX")
    "$@" </dev/null >"$out" 2>&1 || rc=$?
    if ((rc != 0)); then
        info "command failed (exit $rc): $*"
        sed 's/^/    /' "$out" >&2 || true
    fi
    rm -f "$out"
    return "$rc"
}

# --------------------------------------------------------------------------
# apt

APT_UPDATED=0
apt_update() {
    ((APT_UPDATED)) && return 0
    info "apt: updating package lists"
    run_logged as_root apt-get update || die "apt-get update failed"
    APT_UPDATED=1
}

apt_install() {
    have apt-get || die "apt-get not found; please install manually: $*"
    # `apt-get update` only when there are no package lists, or when the
    # install fails with the lists we have (e.g. stale lists).
    compgen -G '/var/lib/apt/lists/*Packages*' >/dev/null || apt_update
    info "apt: installing $* (this can take a minute)"
    local cmd=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q
        --no-install-recommends "$@")
    if ! run_logged as_root "${cmd[@]}"; then
        ((APT_UPDATED)) && die "apt-get install $* failed"
        apt_update
        run_logged as_root "${cmd[@]}" || die "apt-get install $* failed"
    fi
}

# --------------------------------------------------------------------------
# PostgreSQL

pg_server_installed() {
    have pg_ctlcluster && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

pg_answers() { pg_isready -q -h "$HOST" -p "$PG_PORT" -t 2; }

pg_login_ok() {
    local r
    r=$(PGPASSWORD=postgres PGCONNECT_TIMEOUT=5 psql -X -h "$HOST" -p "$PG_PORT" \
        -U postgres -d postgres -tAc 'select 1' 2>/dev/null) || return 1
    [[ $r == 1 ]]
}

# Version of the cluster to start: 15 if present, else the newest "main".
pg_version() {
    if [[ -d /etc/postgresql/15/main ]]; then
        echo 15
        return
    fi
    local d v=""
    for d in /etc/postgresql/*/main; do
        [[ -d $d ]] || continue
        d=${d#/etc/postgresql/}
        v+="${d%/main}"$'\n'
    done
    [[ -n $v ]] || return 1
    printf '%s' "$v" | sort -V | tail -n 1
}

ensure_postgres() {
    local status=ok ver log port
    if ! pg_answers; then
        if port_in_use "$PG_PORT"; then
            # Something listens: maybe a cluster that is still starting up.
            wait_until "$PG_TIMEOUT" pg_answers ||
                die "postgres: $HOST:$PG_PORT is in use but pg_isready fails (another program on the port?)"
        else
            pg_server_installed || die "postgres: server not installed (pg_ctlcluster or /usr/lib/postgresql/*/bin/postgres missing)"
            if ! ver=$(pg_version); then
                ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
                info "postgres: no cluster found, creating $ver/main"
                run_logged as_root pg_createcluster -p "$PG_PORT" "$ver" main ||
                    die "postgres: pg_createcluster $ver main failed"
            fi
            port=$(pg_conftool -s "$ver" main show port 2>/dev/null || echo "$PG_PORT")
            [[ $port == "$PG_PORT" ]] ||
                die "postgres: cluster $ver/main is configured for port $port, expected $PG_PORT (/etc/postgresql/$ver/main/postgresql.conf)"
            log=/var/log/postgresql/postgresql-$ver-main.log
            run_logged as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start ||
                { show_log "$log"; die "postgres: failed to start cluster $ver/main (log: $log)"; }
            if ! wait_until "$PG_TIMEOUT" pg_answers; then
                show_log "$log"
                die "postgres: not accepting connections on $HOST:$PG_PORT after ${PG_TIMEOUT}s" \
                    "(listen_addresses=$(pg_conftool -s "$ver" main show listen_addresses 2>/dev/null || echo '?'); log: $log)"
            fi
            status=started
        fi
    fi

    # The stack and the tests use postgres:postgres over TCP. With trust auth
    # any password works; with scram/md5 the role needs that password.
    if ! pg_login_ok; then
        info "postgres: cannot log in as postgres/postgres over TCP; setting the role's password"
        run_logged as_postgres psql -X -q -v ON_ERROR_STOP=1 -d postgres \
            -c "ALTER USER postgres PASSWORD 'postgres'" ||
            die "postgres: could not set the password of role postgres via the local socket"
        pg_login_ok ||
            die "postgres: still cannot connect as postgres://postgres:postgres@$HOST:$PG_PORT/postgres (check pg_hba.conf)"
        status+=" (password set)"
    fi
    [[ -n ${INSTALLED[postgres]:-} ]] && status="installed, $status"
    info "postgres: $status"
}

# --------------------------------------------------------------------------
# Redis

redis_ping() {
    if have redis-cli; then
        [[ $(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
    else
        # No client installed (e.g. Redis runs in a container): speak RESP.
        # shellcheck disable=SC2016 # $1/$2 expand in the child shell
        timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "PING\r\n" >&3 &&
            IFS= read -r l <&3 && [[ $l == "+PONG"* ]]' _ "$HOST" "$REDIS_PORT" 2>/dev/null
    fi
}

ensure_redis() {
    local status=ok
    if ! redis_ping; then
        if port_in_use "$REDIS_PORT"; then
            # Maybe still loading; otherwise password-protected or not Redis.
            wait_until "$REDIS_TIMEOUT" redis_ping ||
                die "redis: $HOST:$REDIS_PORT is in use but does not answer PING with PONG (password set, or another program?)"
        else
            have redis-server || die "redis: redis-server not installed"
            as_root mkdir -p "$REDIS_DIR" "$(dirname "$REDIS_LOG")"
            run_logged as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 \
                --port "$REDIS_PORT" --save "" --appendonly no \
                --dir "$REDIS_DIR" --logfile "$REDIS_LOG" ||
                { show_log "$REDIS_LOG"; die "redis: redis-server failed to start (log: $REDIS_LOG)"; }
            if ! wait_until "$REDIS_TIMEOUT" redis_ping; then
                show_log "$REDIS_LOG"
                die "redis: no PONG from $HOST:$REDIS_PORT after ${REDIS_TIMEOUT}s (log: $REDIS_LOG)"
            fi
            status=started
        fi
    fi
    [[ -n ${INSTALLED[redis]:-} ]] && status="installed, $status"
    info "redis: $status"
}

# --------------------------------------------------------------------------
# RabbitMQ

# HTTP status of the management API for guest/guest ("000" = no answer).
rabbit_mgmt_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 -u guest:guest \
        "http://$HOST:$MGMT_PORT/api/whoami" 2>/dev/null || true
}
rabbit_mgmt_answers() { local c; c=$(rabbit_mgmt_code); [[ $c != 000 && $c != 503 ]]; }

rabbit_ping() { as_root timeout 20 rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
rabbit_ready() { port_in_use "$AMQP_PORT" && rabbit_ping; }

rabbit_fail() {
    local f
    for f in "$RABBIT_LOG_DIR"/rabbit@*.log; do
        [[ $f == *_upgrade.log ]] || show_log "$f"
    done
    die "rabbitmq: $* (logs: $RABBIT_LOG_DIR/)"
}

ensure_rabbitmq() {
    # Fast path (~10 ms): AMQP port open and the management API accepts
    # guest/guest, which proves the node runs, the management plugin is on
    # and guest can log in from 127.0.0.1.
    if port_in_use "$AMQP_PORT" && [[ $(rabbit_mgmt_code) == 200 ]]; then
        info "rabbitmq: ok${INSTALLED[rabbitmq]:+ (installed)}"
        return 0
    fi

    local status=ok notes="" code enabled
    if ! have rabbitmqctl; then
        die "rabbitmq: $HOST:$AMQP_PORT is in use but RabbitMQ's management API does not accept guest/guest" \
            "on $HOST:$MGMT_PORT, and rabbitmqctl is not installed here to fix it"
    fi

    # 1. Node running and AMQP listener up.
    if ! rabbit_ready; then
        if port_in_use "$AMQP_PORT"; then
            # Listener up but node does not answer (yet): give it time.
            wait_until "$RABBIT_TIMEOUT" rabbit_ready ||
                rabbit_fail "$HOST:$AMQP_PORT is in use but 'rabbitmq-diagnostics ping' fails"
        else
            if rabbit_ping; then
                # Erlang node is up, but the rabbit app is stopped.
                run_logged as_root rabbitmqctl start_app || rabbit_fail "rabbitmqctl start_app failed"
            else
                run_logged as_root rabbitmq-server -detached || rabbit_fail "rabbitmq-server -detached failed"
            fi
            wait_until "$RABBIT_TIMEOUT" rabbit_ready ||
                rabbit_fail "not answering on $HOST:$AMQP_PORT after ${RABBIT_TIMEOUT}s"
            status=started
        fi
    fi

    # 2. Management plugin (listing plugins takes ~2-3 s, so only when the
    #    management port is closed).
    if ! port_in_use "$MGMT_PORT"; then
        enabled=$(as_root rabbitmq-plugins -q list -e -m 2>/dev/null || true)
        if ! grep -qx rabbitmq_management <<<"$enabled"; then
            run_logged as_root rabbitmq-plugins enable rabbitmq_management ||
                rabbit_fail "could not enable the rabbitmq_management plugin"
            notes+=", management plugin enabled"
        fi
        wait_for_port "$HOST" "$MGMT_PORT" 30 ||
            rabbit_fail "management plugin is enabled but nothing listens on $HOST:$MGMT_PORT (management.tcp.* in /etc/rabbitmq/rabbitmq.conf?)"
    fi

    # 3. guest/guest must be able to log in (default for connections from
    #    localhost; repair the user if it was changed or deleted).
    wait_until 15 rabbit_mgmt_answers || true
    code=$(rabbit_mgmt_code)
    if [[ $code == 401 ]]; then
        info "rabbitmq: guest/guest rejected; (re)creating user guest"
        as_root rabbitmqctl -q add_user guest guest >/dev/null 2>&1 ||
            run_logged as_root rabbitmqctl -q change_password guest guest ||
            rabbit_fail "could not set password of user guest"
        run_logged as_root rabbitmqctl -q set_user_tags guest administrator ||
            rabbit_fail "could not set tags of user guest"
        run_logged as_root rabbitmqctl -q set_permissions -p / guest '.*' '.*' '.*' ||
            rabbit_fail "could not set permissions of user guest"
        code=$(rabbit_mgmt_code)
        notes+=", guest user reset"
    fi
    [[ $code == 200 ]] ||
        rabbit_fail "guest/guest cannot use the management API at http://$HOST:$MGMT_PORT (HTTP $code)"

    [[ -n ${INSTALLED[rabbitmq]:-} ]] && status="installed, $status"
    info "rabbitmq: $status${notes:+ (${notes#, })}"
}

# --------------------------------------------------------------------------

install_missing() {
    local pkgs=()
    have curl || pkgs+=(curl)
    # A server that already answers on its port (e.g. in a container) doesn't
    # need a local install.
    if ! pg_server_installed && ! port_in_use "$PG_PORT"; then
        pkgs+=(postgresql) # pulls in postgresql-15 and postgresql-client
        INSTALLED[postgres]=1
    elif ! have pg_isready || ! have psql; then
        pkgs+=(postgresql-client)
    fi
    if ! have redis-server && ! port_in_use "$REDIS_PORT"; then
        pkgs+=(redis-server)
        INSTALLED[redis]=1
    fi
    if ! have rabbitmq-server && ! port_in_use "$AMQP_PORT"; then
        pkgs+=(rabbitmq-server)
        INSTALLED[rabbitmq]=1
    fi
    ((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"
}

main() {
    # Serialise concurrent runs (e.g. run.sh and test.sh started together).
    if have flock; then
        local lock="${TMPDIR:-/tmp}/sluice-ensure-services.$EUID.lock"
        exec 9>"$lock"
        flock -w 600 9 || die "timed out waiting for another ensure-services run (lock: $lock)"
    fi
    install_missing
    ensure_postgres
    ensure_redis
    ensure_rabbitmq
}

main "$@"
