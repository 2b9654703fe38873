#!/usr/bin/env bash
# nginx/nginx.conf tested for real: rendered the way the nginx image renders it (envsubst of
# its placeholders only), with a self-signed certificate made here, and run by Debian's nginx
# (installed when missing) in front of TWO sluice-api processes, on 127.0.0.1 only. Then,
# over TLS (curl --cacert):
#
#   - /api/health and /api/ready reach the API;
#   - both replicas answer: each runs with its own admin token, so an admin request answers
#     200 on one and 401 on the other — the API itself says which one served it;
#   - an API error (401, 404 chat_not_found) passes through unchanged: status, type and body
#     equal to the same request sent to a replica directly;
#   - the body limit: 256 KiB reaches the API, one byte more is nginx's 413 (the access log
#     shows no upstream for it);
#   - /metrics is a 404 from nginx, and the API's public port answers it with its own 404
#     (the API serves it on a port of its own, SLUICE__HTTP__METRICS_ADDR, which nginx never
#     reaches);
#   - the client's address reaches the API: with 3 logins per minute per address, a fourth
#     from 127.0.0.2 is 429 even with a forged X-Forwarded-For, while 127.0.0.3 is not limited;
#   - the event-stream route reaches the API, and an event stream passes through unbuffered
#     (its first event arrives while it is open) without its ?token= in the access log;
#   - TLS: HSTS on every answer (nginx's own too), no session tickets, a suite without
#     forward secrecy refused;
#   - a burst of sign-ins from one address gets nginx's 429 rate_limited (limit_req on
#     /api/auth/), while another address is still served;
#   - after a failed upstream (api-2 stopped), no ?token= is in nginx's access or error log.
#
# The APIs use the machine's PostgreSQL, Redis and RabbitMQ (scripts/ensure-services.sh) with
# a database, a RabbitMQ vhost and a Redis prefix of their own, all removed afterwards, with
# every process this started, whatever happens (trap). About half a minute.
# shellcheck disable=SC2317 # cleanup runs from a trap, probes from wait_until
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source scripts/lib.sh

with_sbin_on_path

missing=()
have nginx || missing+=(nginx)
have openssl || missing+=(openssl)
have envsubst || missing+=(gettext-base)
have curl || missing+=(curl)
((${#missing[@]} == 0)) || install_packages nginx-test "${missing[@]}"

scripts/ensure-services.sh
ADMIN_URL="${SLUICE_TEST_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
have psql || die "nginx-test: psql (postgresql-client) is needed"

BIN=target/debug
if have cargo; then
    # The targets of scripts/test.sh's cargo test, so this is a no-op after it.
    info "nginx-test: building the debug binaries (a no-op after cargo test)…"
    cargo build --locked --workspace --all-targets >&2
fi
[[ -x $BIN/sluice-api ]] || die "nginx-test: $BIN/sluice-api is missing and cargo is not installed"

# ---------------------------------------------------------------------------------------
# Own directories, ports, database, vhost and prefix; all removed on exit.

scratch_stack nginx nginx api-1 api-2 migrate
chmod 755 "$WORK" # nginx's workers (another user when started as root) use its temp dir
pick_port API1_PORT
pick_port API2_PORT
pick_port METRICS1_PORT
pick_port METRICS2_PORT
pick_port NGINX_PORT

# ---------------------------------------------------------------------------------------
# Two API replicas. Each has its own admin token (how a reply shows which one served it);
# both trust 127.0.0.1 (nginx) for the client's address and share the per-address limit.

export RUST_LOG=info,sqlx=warn
export SLUICE__DATABASE__URL="${ADMIN_URL%/*}/$DB"
export SLUICE__AMQP__URL="amqp://guest:guest@127.0.0.1:5672/$VHOST"
export SLUICE__REDIS__URL=redis://127.0.0.1:6379
export SLUICE__REDIS__PREFIX=$REDIS_PREFIX
SLUICE__AUTH__JWT_SECRET=$(random_secret)
export SLUICE__AUTH__JWT_SECRET
export SLUICE__HTTP__TRUSTED_PROXIES=127.0.0.1
export SLUICE__USERS__LOGINS_PER_MINUTE_PER_ADDRESS=3
TOKEN_1=$(random_secret)
TOKEN_2=$(random_secret)

"$BIN/sluice-api" migrate >"$WORK/migrate.log" 2>&1 || die "nginx-test: sluice-api migrate failed"
SLUICE__HTTP__ADDR="127.0.0.1:$API1_PORT" SLUICE__HTTP__METRICS_ADDR="127.0.0.1:$METRICS1_PORT" \
    SLUICE__ADMIN__TOKEN=$TOKEN_1 start api-1 "$BIN/sluice-api"
SLUICE__HTTP__ADDR="127.0.0.1:$API2_PORT" SLUICE__HTTP__METRICS_ADDR="127.0.0.1:$METRICS2_PORT" \
    SLUICE__ADMIN__TOKEN=$TOKEN_2 start api-2 "$BIN/sluice-api"
api_ready() { curl --noproxy '*' -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$1/api/ready" 2>/dev/null; }
wait_until 60 api_ready "$API1_PORT" || die "nginx-test: api-1 was not ready within 60 s"
wait_until 60 api_ready "$API2_PORT" || die "nginx-test: api-2 was not ready within 60 s"

# ---------------------------------------------------------------------------------------
# nginx: the template rendered like the image does, a certificate for localhost/127.0.0.1.

NGX=$WORK/nginx
mkdir -p "$NGX/temp"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
    -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
    -keyout "$NGX/tls.key" -out "$NGX/tls.crt" >/dev/null 2>&1 || die "nginx-test: openssl failed"
export API_UPSTREAMS="server 127.0.0.1:$API1_PORT; server 127.0.0.1:$API2_PORT;"
export LISTEN_ADDR="127.0.0.1:$NGINX_PORT" TLS_CERT=$NGX/tls.crt TLS_KEY=$NGX/tls.key
export NGINX_TEMP_DIR=$NGX/temp
# shellcheck disable=SC2016 # the names envsubst may replace, literally
envsubst '${API_UPSTREAMS} ${LISTEN_ADDR} ${TLS_CERT} ${TLS_KEY} ${NGINX_TEMP_DIR}' \
    <nginx/nginx.conf >"$NGX/nginx.conf"
if grep -nE '\$\{[A-Z_]+\}' "$NGX/nginx.conf" >&2; then
    die "nginx-test: placeholders left unrendered (above)"
fi
NGINX=(nginx -p "$NGX/" -e "$NGX/error.log" -c "$NGX/nginx.conf" -g "pid $NGX/nginx.pid; daemon off;")
"${NGINX[@]}" -t -q >"$WORK/nginx.log" 2>&1 || { show_log "$WORK/nginx.log"; die "nginx-test: nginx -t refused the configuration"; }
start nginx "${NGINX[@]}"
wait_for_port 127.0.0.1 "$NGINX_PORT" 20 || die "nginx-test: nginx did not listen on :$NGINX_PORT"
info "nginx-test: nginx :$NGINX_PORT in front of api-1 :$API1_PORT and api-2 :$API2_PORT"

# ---------------------------------------------------------------------------------------
# The checks.

EDGE="https://localhost:$NGINX_PORT"
# get OUT [curl args…] URL: the body into OUT, prints "status content-type".
CURL=(curl --noproxy '*' -sS --max-time 10 --cacert "$NGX/tls.crt" --resolve "localhost:$NGINX_PORT:127.0.0.1")
fetch() {
    local out=$1
    shift
    "${CURL[@]}" -o "$out" -w '%{http_code} %{content_type}' "$@"
}
CHECKS=0
ok() {
    CHECKS=$((CHECKS + 1))
    info "nginx-test: ok: $*"
}
fail() { die "nginx-test: FAILED: $*"; }
expect() { # WHAT EXPECTED ACTUAL
    [[ $3 == "$2" ]] || fail "$1: expected '$2', got '$3'"
}

# Routing of health and readiness.
r=$(fetch "$WORK/b" "$EDGE/api/health")
expect "GET /api/health" "200 application/json" "$r"
expect "GET /api/health body" '{"status":"ok"}' "$(cat "$WORK/b")"
r=$(fetch "$WORK/b" "$EDGE/api/ready")
expect "GET /api/ready" "200 application/json" "$r"
grep -q '"database"' "$WORK/b" || fail "GET /api/ready body: $(cat "$WORK/b")"
ok "/api/health and /api/ready are served through nginx over TLS"

# Both replicas serve: the admin token of api-1 is valid on api-1 only.
served_1=0 served_2=0
for _ in $(seq 8); do
    r=$(fetch "$WORK/b" -H "authorization: Bearer $TOKEN_1" "$EDGE/api/admin/dlq?limit=1")
    case ${r%% *} in
        200) served_1=$((served_1 + 1)) ;;
        401) served_2=$((served_2 + 1)) ;;
        *) fail "GET /api/admin/dlq: $r $(cat "$WORK/b")" ;;
    esac
done
((served_1 > 0 && served_2 > 0)) || fail "one replica served everything (api-1: $served_1, api-2: $served_2)"
upstreams=$(grep -c "GET /api/admin/dlq" "$WORK/nginx.log" || true)
ok "both replicas serve requests (api-1 answered $served_1, api-2 $served_2 of 8; $upstreams logged)"

# API errors pass through unchanged.
same_as_direct() { # WHAT PATH [curl args…]
    local what=$1 path=$2
    shift 2
    local via direct
    via=$(fetch "$WORK/via" "$@" "$EDGE$path")
    direct=$("${CURL[@]}" -o "$WORK/direct" -w '%{http_code} %{content_type}' "$@" "http://127.0.0.1:$API1_PORT$path")
    expect "$what (status, type)" "$direct" "$via"
    cmp -s "$WORK/via" "$WORK/direct" || fail "$what: body differs: '$(cat "$WORK/via")' vs '$(cat "$WORK/direct")'"
    echo "${via%% *} $(cat "$WORK/via")"
}
unknown=00000000-0000-4000-8000-000000000000
r=$(same_as_direct "GET a chat without a token" "/api/chats/$unknown")
[[ $r == 401* && $r == *'"error"'* ]] || fail "expected a 401 JSON error, got $r"
user_token=$("${CURL[@]}" "$EDGE/api/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"nginx-$RUN_ID@example.com\",\"password\":\"correct horse battery\"}" |
    sed -nE 's/.*"token":"([^"]+)".*/\1/p')
[[ -n $user_token ]] || fail "registering through nginx gave no token"
r=$(same_as_direct "GET an unknown chat" "/api/chats/$unknown" -H "authorization: Bearer $user_token")
[[ $r == 404*chat_not_found* ]] || fail "expected 404 chat_not_found, got $r"
ok "API errors (401, 404 chat_not_found) pass through with the same status, type and body"

# The body limit: 256 KiB reaches the API, one byte more is refused by nginx.
head -c 262144 /dev/zero | tr '\0' x >"$WORK/256k"
head -c 262145 /dev/zero | tr '\0' x >"$WORK/256k+1"
head -c 307200 /dev/zero | tr '\0' x >"$WORK/300k"
r=$(fetch "$WORK/b" -H 'content-type: application/json' -H 'Expect:' --data-binary @"$WORK/256k" "$EDGE/api/auth/login")
[[ $r == 400* ]] && grep -q malformed_json "$WORK/b" || fail "a 256 KiB body: expected the API's 400 malformed_json, got $r $(cat "$WORK/b")"
for size in 256k+1 300k; do
    r=$(fetch "$WORK/b" -H 'content-type: application/json' -H 'Expect:' --data-binary @"$WORK/$size" "$EDGE/api/auth/login")
    expect "a $size body" "413 application/json" "$r"
    grep -q body_too_large "$WORK/b" || fail "a $size body: $(cat "$WORK/b")"
done
wait_until 5 grep -q '"POST /api/auth/login HTTP/1.1" 413 .* upstream=- ' "$WORK/nginx.log" ||
    fail "the 413 did not come from nginx (access log: $(grep 'auth/login' "$WORK/nginx.log"))"
ok "a 256 KiB body reaches the API; 256 KiB + 1 and 300 KiB are nginx's 413 body_too_large"

# /metrics is not exposed.
for path in /metrics /metrics/x; do
    r=$(fetch "$WORK/b" "$EDGE$path")
    expect "GET $path" "404 application/json" "$r"
done
wait_until 5 grep -q '"GET /metrics HTTP/1.1" 404 .* upstream=- ' "$WORK/nginx.log" ||
    fail "/metrics reached an upstream"
# Behind nginx too: the API's public port answers it with its ordinary 404, and serves it
# only on the metrics port.
r=$(curl --noproxy '*' -sS -o "$WORK/b" -w '%{http_code} %{content_type}' "http://127.0.0.1:$API1_PORT/metrics")
expect "GET /metrics on the API's public port" "404 application/json" "$r"
grep -q '"not_found"' "$WORK/b" || fail "GET /metrics on the API's public port: $(cat "$WORK/b")"
# Into a file first: `grep -q` stops reading at its match, and under pipefail a curl cut off
# mid-page would fail the check.
curl --noproxy '*' -fsS -o "$WORK/metrics" "http://127.0.0.1:$METRICS1_PORT/metrics" ||
    fail "the API's metrics port does not answer"
grep -q '^# TYPE sluice_http_requests_total counter' "$WORK/metrics" ||
    fail "the API's metrics port does not serve sluice_http_requests_total"
ok "/metrics is a 404 from nginx and on the API's public port; the metrics port serves it"

# The client's address reaches the API. 3 logins per minute per address: from 127.0.0.2 the
# fourth is refused, also when the client forges X-Forwarded-For; 127.0.0.3 is not limited.
login_from() { # ADDRESS N [curl args…]: prints the status
    local from=$1 n=$2
    shift 2
    "${CURL[@]}" --interface "$from" -o /dev/null -w '%{http_code}' "$@" "$EDGE/api/auth/login" \
        -H 'content-type: application/json' \
        -d "{\"email\":\"nobody-$n-$RUN_ID@example.com\",\"password\":\"wrong password\"}"
}
for n in 1 2 3; do
    expect "login $n from 127.0.0.2" 401 "$(login_from 127.0.0.2 "$n")"
done
expect "login 4 from 127.0.0.2" 429 "$(login_from 127.0.0.2 4)"
expect "login 5 from 127.0.0.2 with a forged X-Forwarded-For" 429 \
    "$(login_from 127.0.0.2 5 -H 'X-Forwarded-For: 198.51.100.7')"
expect "login 1 from 127.0.0.3" 401 "$(login_from 127.0.0.3 6)"
ok "the client's address reaches the API (per-address limit per client, not per nginx; a forged X-Forwarded-For does not help)"

# The event-stream route is proxied to the API.
r=$(fetch "$WORK/b" -H "authorization: Bearer $user_token" "$EDGE/api/chats/$unknown/events")
[[ $r == 404* ]] && grep -q '"error"' "$WORK/b" || fail "GET …/events: $r $(cat "$WORK/b")"
wait_until 5 grep -qE "GET /api/chats/$unknown/events HTTP/1.1\" 404 .* upstream=127\.0\.0\.1:" "$WORK/nginx.log" ||
    fail "…/events did not reach an upstream"
ok "the event-stream route reaches the API"

# An event stream passes through unbuffered: a post's message.created arrives while the stream
# is still open (no worker runs here, so it stays open). Opened with ?token=, which no access
# log line may show.
chat=$("${CURL[@]}" -X POST "$EDGE/api/chats" -H "authorization: Bearer $user_token" | sed -E 's/.*"id":"([^"]+)".*/\1/')
events_token=$("${CURL[@]}" -X POST "$EDGE/api/chats/$chat/events/token" -H "authorization: Bearer $user_token" |
    sed -E 's/.*"token":"([^"]+)".*/\1/')
[[ -n $events_token ]] || fail "POST …/events/token gave no token"
"${CURL[@]}" -N --max-time 60 -D "$WORK/events.headers" -o "$WORK/events" \
    "$EDGE/api/chats/$chat/events?token=$events_token" &
PID[events]=$!
wait_until 10 grep -qs '^HTTP/[0-9.]* 200' "$WORK/events.headers" ||
    fail "the event stream was not opened: $(cat "$WORK/events.headers" "$WORK/events" 2>/dev/null)"
r=$(fetch "$WORK/b" -H "authorization: Bearer $user_token" -H 'content-type: application/json' \
    -d '{"content":"hello through nginx"}' "$EDGE/api/chats/$chat/messages")
[[ $r == 202* ]] || fail "POST a message: $r $(cat "$WORK/b")"
wait_until 10 grep -qs '^event: message.created' "$WORK/events" ||
    fail "no message.created came through nginx: $(cat "$WORK/events")"
kill -0 "${PID[events]}" 2>/dev/null || fail "the event stream ended early"
kill "${PID[events]}" && wait "${PID[events]}" 2>/dev/null || true
unset 'PID[events]'
! grep -q "$events_token" "$WORK/nginx.log" || fail "nginx logged the event-stream token"
ok "an event stream passes through nginx unbuffered, and its token is not logged"

# TLS: HSTS on the API's answers and on nginx's own, no session tickets, old protocols and
# CBC suites refused.
"${CURL[@]}" -o /dev/null -D "$WORK/h" "$EDGE/api/health"
grep -qi '^strict-transport-security: max-age=31536000; includeSubDomains' "$WORK/h" ||
    fail "no HSTS header on /api/health: $(cat "$WORK/h")"
"${CURL[@]}" -o /dev/null -D "$WORK/h" "$EDGE/metrics"
grep -qi '^strict-transport-security:' "$WORK/h" || fail "no HSTS header on nginx's own 404"
# s_client's output, whatever its status (a refused handshake exits 1; pipefail is on).
tls() { openssl s_client -connect "127.0.0.1:$NGINX_PORT" -servername localhost "$@" </dev/null 2>&1 || true; }
handshake=$(tls -tls1_2)
grep -q 'Protocol *: TLSv1.2' <<<"$handshake" || fail "TLS 1.2 handshake failed: $(tail -5 <<<"$handshake")"
grep -q 'Cipher is ECDHE-' <<<"$handshake" || fail "TLS 1.2 without ECDHE: $(grep 'Cipher is' <<<"$handshake")"
! grep -qi 'TLS session ticket:' <<<"$handshake" || fail "nginx issues TLS session tickets"
grep -q 'Cipher is (NONE)' <<<"$(tls -tls1_2 -cipher AES128-SHA)" ||
    fail "a CBC suite without forward secrecy was accepted"
ok "HSTS on every answer; TLS 1.2+ with forward-secret AEAD suites only; no session tickets"

# limit_req on /api/auth/: 2 a second per address, bursts of 10. 30 sign-ins at once (in
# parallel, so the bucket's refill lets few extra through) from 127.0.0.4: nginx refuses the
# excess itself (429 rate_limited, no upstream); 127.0.0.5 is still served.
burst=()
for n in $(seq 30); do
    "${CURL[@]}" --interface 127.0.0.4 -o "$WORK/burst-$n.body" -D "$WORK/burst-$n.headers" \
        -w '%{http_code}\n' "$EDGE/api/auth/login" -H 'content-type: application/json' \
        -d "{\"email\":\"burst-$n-$RUN_ID@example.com\",\"password\":\"wrong password\"}" \
        >"$WORK/burst-$n.status" &
    burst+=($!)
done
wait "${burst[@]}" || true
codes=$(cat "$WORK"/burst-*.status | tr '\n' ' ')
# nginx's own refusals are those with no upstream (the API's per-address login limit, 3 a
# minute here, answers 429 too, for the few nginx lets through).
limited=$(grep -c '^127\.0\.0\.4 "POST /api/auth/login HTTP/1.1" 429 .* upstream=- ' "$WORK/nginx.log" || true)
((limited >= 10)) || fail "a burst of 30 sign-ins from one address: nginx refused only $limited ($codes)"
# nginx's 429 speaks the API's error shape, with Retry-After.
refusal=$(grep -l '"code":"rate_limited".*"limit":"edge"' "$WORK"/burst-*.body | head -1)
[[ -n $refusal ]] || fail "no answer of the burst has nginx's 429 body: $(cat "$WORK"/burst-1.body)"
grep -qi '^retry-after:' "${refusal%.body}.headers" || fail "nginx's 429 has no Retry-After"
expect "a sign-in from another address" 401 "$(login_from 127.0.0.5 other)"
ok "a burst of sign-ins from one address gets nginx's 429 rate_limited ($limited of 30); another address is served"

# A failed upstream with an event-stream token in the query. api-2 stops; first a plain route
# shows that the error log does record a failed upstream (so the check below reads a log that
# works). nginx then rests api-2 for fail_timeout (10 s); event-stream requests carrying
# ?token= are sent until one has tried api-2 and failed over to api-1. Neither the access log
# nor the error log (stderr, in nginx.log; and error.log) holds the token.
kill "${PID[api-2]}" && wait "${PID[api-2]}" 2>/dev/null || true
unset 'PID[api-2]'
probe_failed_upstream() {
    "${CURL[@]}" -o /dev/null --max-time 3 "$EDGE/api/health?probe=$RUN_ID" || true
    grep -q "connect() failed.*/api/health?probe=$RUN_ID" "$WORK/nginx.log"
}
wait_until 10 probe_failed_upstream ||
    fail "the error log did not record the failed upstream of /api/health"
secret_token="nginx-test-token-$RUN_ID-$(random_secret)"
events_failed_over() {
    "${CURL[@]}" -o /dev/null --max-time 3 "$EDGE/api/chats/$chat/events?token=$secret_token" || true
    grep -qE "GET /api/chats/$chat/events HTTP/1.1\" [0-9]+ .* upstream=127\.0\.0\.1:$API2_PORT, 127\.0\.0\.1:$API1_PORT " "$WORK/nginx.log"
}
wait_until 25 events_failed_over ||
    fail "no event-stream request failed over from api-2: $(grep "/events" "$WORK/nginx.log" | tail -3)"
for log in "$WORK/nginx.log" "$NGX/error.log"; do
    [[ ! -e $log ]] || ! grep -q "$secret_token" "$log" || fail "$log holds the event-stream token"
done
ok "after a failed upstream, no event-stream token is in nginx's access or error log"

info "nginx-test: $CHECKS passed, 0 failed"
