#!/bin/sh
# The postgres image runs this once, when the data volume is first created (as POSTGRES_USER,
# who owns the database and runs the migrations): it creates `sluice_app`, the API's role,
# which reads and writes rows but cannot change the schema (../app-role.sql).
set -eu
: "${POSTGRES_APP_PASSWORD:?set POSTGRES_APP_PASSWORD in .env}"
case $POSTGRES_APP_PASSWORD in
*[Cc][Hh][Aa][Nn][Gg][Ee]-[Mm][Ee]*)
    echo "error: POSTGRES_APP_PASSWORD is the placeholder of .env.example (scripts/compose-env.sh)" >&2
    exit 1
    ;;
esac
psql -v ON_ERROR_STOP=1 -q --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v app_role=sluice_app -v app_password="$POSTGRES_APP_PASSWORD" -v owner="$POSTGRES_USER" \
    -f /sluice/app-role.sql
