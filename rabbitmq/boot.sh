#!/usr/bin/env bash
# RabbitMQ's start in docker-compose.yml: the server (through the image's own entrypoint), then
# the users' passwords from the environment. definitions.json imports the users without any,
# so none can sign in before this runs; it runs at every start, so a changed .env takes effect
# with a restart. The health check waits for /tmp/sluice-users-ready.
set -euo pipefail

for var in RABBITMQ_ADMIN_PASSWORD RABBITMQ_API_PASSWORD RABBITMQ_WORKER_PASSWORD; do
    # Empty, or the placeholder .env.example ships: refused.
    if [[ -z ${!var:-} || ${!var,,} == *change-me* ]]; then
        printf 'error: set %s in .env (scripts/compose-env.sh writes one)\n' "$var" >&2
        exit 1
    fi
done
rm -f /tmp/sluice-users-ready

docker-entrypoint.sh rabbitmq-server &
server=$!
trap 'kill -TERM "$server" 2>/dev/null' TERM INT

ctl() { gosu rabbitmq rabbitmqctl --quiet "$@"; }
until ctl await_startup --timeout 5 >/dev/null 2>&1; do
    kill -0 "$server" 2>/dev/null || {
        wait "$server"
        exit $?
    }
    sleep 1
done
ctl change_password sluice-admin "$RABBITMQ_ADMIN_PASSWORD" >/dev/null
ctl change_password sluice-api "$RABBITMQ_API_PASSWORD" >/dev/null
ctl change_password sluice-worker "$RABBITMQ_WORKER_PASSWORD" >/dev/null
touch /tmp/sluice-users-ready
printf 'sluice: broker users ready\n' >&2

# Until the server stops; a TERM interrupts `wait` while the server shuts down, so wait again.
status=0
while kill -0 "$server" 2>/dev/null; do
    status=0
    wait "$server" || status=$?
done
exit "$status"
