# shellcheck shell=bash
# Reusable helpers for Sluice scripts. Source it, don't run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It only defines functions; it does not change shell options.

# Logging: everything goes to stderr so stdout stays usable for data.
info() { printf '%s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# have CMD: true if CMD is on PATH.
have() { command -v "$1" >/dev/null 2>&1; }

# tcp_open HOST PORT: true if a TCP connection to HOST:PORT succeeds (1 s max).
tcp_open() {
    # shellcheck disable=SC2016 # $1/$2 expand in the child shell
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# port_in_use PORT: true if something accepts connections on 127.0.0.1:PORT
# (also true for wildcard listeners, which accept on loopback too).
port_in_use() { tcp_open 127.0.0.1 "$1"; }

# wait_until TIMEOUT_SECONDS CMD [ARGS...]: run CMD every 0.5 s until it
# succeeds (return 0) or the timeout expires (return 1).
wait_until() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    while true; do
        "$@" && return 0
        ((SECONDS >= deadline)) && return 1
        sleep 0.5
    done
}

# wait_for_port HOST PORT TIMEOUT_SECONDS: wait until HOST:PORT accepts TCP
# connections; returns 1 on timeout.
wait_for_port() { wait_until "$3" tcp_open "$1" "$2"; }

# show_log FILE [LINES]: print the tail of a log file to stderr, if readable.
show_log() {
    local f=$1 n=${2:-20}
    if [[ -r $f ]]; then
        info "---- last $n lines of $f ----"
        tail -n "$n" "$f" >&2 || true
        info "----"
    fi
}

# with_sbin_on_path: add the sbin directories (rabbitmqctl, pg_ctlcluster, runuser, nginx live
# there), which a non-root user's PATH lacks.
with_sbin_on_path() {
    local d
    for d in /usr/local/sbin /usr/sbin /sbin; do
        [[ ":$PATH:" == *":$d:"* ]] || PATH="$PATH:$d"
    done
    export PATH
}

# pick_port VAR: set VAR to a port on 127.0.0.1 that nothing listens on and that no earlier
# pick_port of this script chose. Not `VAR=$(…)`: a command substitution's subshell would
# forget what was chosen.
PORTS_PICKED=" "
pick_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000))
        [[ $PORTS_PICKED == *" $p "* ]] && continue
        port_in_use "$p" && continue
        PORTS_PICKED+="$p "
        printf -v "$1" '%s' "$p"
        return 0
    done
    die "no free port found"
}

# random_secret: prints 65 URL-safe characters: `s` and 48 bytes of /dev/urandom in base64url,
# fit for the API's secrets (at least 32 bytes and 16 distinct ones: hex, with its 16 symbols,
# would miss one about a time in four) and for passwords that go into URLs. The leading letter
# keeps a secret from starting with `-`, which a command line (rabbitmqctl change_password)
# would take for an option, one time in 64.
random_secret() { printf 's%s' "$(head -c 48 /dev/urandom | base64 -w0 | tr '+/' '-_')"; }

# as_root CMD...: CMD as root, directly or through passwordless sudo.
as_root() {
    if ((EUID == 0)); then "$@"; else sudo -n -- "$@"; fi
}

# install_packages LABEL PKG...: Debian's packages, as scripts/ensure-services.sh installs the
# services: the package lists are updated only when the install fails without it.
install_packages() {
    local label=$1
    shift
    have apt-get || die "$label: apt-get not found; install $* by hand"
    local cmd=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@")
    info "$label: installing $*"
    if ! compgen -G '/var/lib/apt/lists/*Packages*' >/dev/null || ! as_root "${cmd[@]}" >/dev/null 2>&1; then
        as_root apt-get update -q >/dev/null 2>&1 || die "$label: apt-get update failed"
        as_root "${cmd[@]}" >/dev/null || die "$label: apt-get install $* failed"
    fi
}

# scratch_stack NAME LOG...: what a script that runs Sluice's processes needs of its own, named
# after NAME: a work directory ($WORK), an id ($RUN_ID), a database ($DB, through $ADMIN_URL),
# a RabbitMQ vhost guest may use ($VHOST) and a Redis prefix ($REDIS_PREFIX). `start NAME CMD…`
# runs a process with its output in $WORK/NAME.log. On exit, whatever happens, every process
# started is stopped, the logs named LOG are shown if the script failed, and all of it removed.
declare -A PID=()
SCRATCH_LOGS=()
SCRATCH_MGMT=(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -u guest:guest)
scratch_stack() {
    local name=$1
    shift
    SCRATCH_LOGS=("$@")
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-$name.XXXXXX")
    RUN_ID=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
    DB=sluice_${name}_$RUN_ID
    VHOST=sluice-$name-$RUN_ID
    REDIS_PREFIX="sluice-$name-$RUN_ID:"
    trap scratch_cleanup EXIT
    trap 'exit 130' INT TERM
    psql -X -q "$ADMIN_URL" -c "CREATE DATABASE \"$DB\"" >/dev/null || die "$name: cannot create database $DB"
    [[ $("${SCRATCH_MGMT[@]}" -X PUT "http://127.0.0.1:15672/api/vhosts/$VHOST") == 20[14] ]] ||
        die "$name: cannot create RabbitMQ vhost $VHOST"
    [[ $("${SCRATCH_MGMT[@]}" -X PUT -H 'content-type: application/json' \
        -d '{"configure":".*","write":".*","read":".*"}' \
        "http://127.0.0.1:15672/api/permissions/$VHOST/guest") == 20[14] ]] ||
        die "$name: cannot grant guest the vhost $VHOST"
}

scratch_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    local name
    for name in "${!PID[@]}"; do
        { kill "${PID[$name]}" && wait "${PID[$name]}"; } 2>/dev/null
    done
    if ((rc != 0)); then
        for name in "${SCRATCH_LOGS[@]}"; do
            [[ -s $WORK/$name.log ]] && show_log "$WORK/$name.log" 30
        done
    fi
    PGCONNECT_TIMEOUT=5 psql -X -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1
    "${SCRATCH_MGMT[@]}" -X DELETE "http://127.0.0.1:15672/api/vhosts/$VHOST" >/dev/null
    if have redis-cli; then
        redis-cli -h 127.0.0.1 --scan --pattern "$REDIS_PREFIX*" | xargs -r redis-cli -h 127.0.0.1 del >/dev/null
    fi
    rm -rf "$WORK"
    exit "$rc"
}

start() { # NAME CMD...: CMD in the background, its output in $WORK/NAME.log
    local name=$1
    shift
    "$@" </dev/null >>"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
}
