#!/usr/bin/env bash
# Writes `.env` for docker-compose.yml from `.env.example`, with every `change-me` value (the
# JWT secret, the admin token, the PostgreSQL, RabbitMQ and Redis passwords) replaced by a
# secret of its own, generated here (scripts/lib.sh random_secret). An existing `.env` is kept
# as it is: run it once, before the first `docker compose up`.
#
#   scripts/compose-env.sh [FILE]    # FILE defaults to .env
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source scripts/lib.sh

out=${1:-.env}
if [[ -e $out ]]; then
    info "compose-env: $out exists; keeping it (delete it to generate new secrets)"
    exit 0
fi
have base64 || die "compose-env: base64 (coreutils) is needed"

tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
chmod 600 "$tmp"
generated=0
while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^([A-Z0-9_]+)=change-me$ ]]; then
        line="${BASH_REMATCH[1]}=$(random_secret)"
        generated=$((generated + 1))
    fi
    printf '%s\n' "$line"
done <.env.example >"$tmp"
mv "$tmp" "$out"
trap - EXIT
info "compose-env: wrote $out with $generated generated secrets (mode 600; never commit it)"
