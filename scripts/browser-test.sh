#!/usr/bin/env bash
# The web page tested in a real browser: Debian's headless Chromium (installed when missing)
# driven by Playwright for Python (from PyPI, in target/browser-venv; its own browser download
# is never used: `playwright install` cannot reach its servers here). It starts mock-gemini, a
# sluice-api and a sluice-worker on free loopback ports, with a database, a RabbitMQ vhost, a
# queue prefix and a Redis prefix of their own, and runs tests/browser/test_web.py against
# the API: register, create a chat, send and watch the reply stream in, reload and see the
# history, a reply failing once and retried, a slow reply stopped mid-stream, hostile HTML
# kept inert, a chat deleted, the phone layout, polling when the event stream is refused, the
# account panel (password change, sign-out, account deletion), and the chat front's tools
# (edit and branch arrows, regenerate, Up-arrow editing, a code block copied, Escape stopping
# a reply, a message deleted, rename in place, the scroll after a reload, search, exports).
# Screenshots go to target/browser/. Everything this started and created is removed on exit
# (trap). About two minutes.
# shellcheck disable=SC2317 # cleanup runs from a trap, probes from wait_until
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source scripts/lib.sh

with_sbin_on_path

# Pinned: the Python package and its driver; the browser is Debian's.
PLAYWRIGHT_VERSION=1.65.2
CHROMIUM=${SLUICE_CHROMIUM:-/usr/bin/chromium}
VENV=target/browser-venv
SHOTS=target/browser

missing=()
[[ -x $CHROMIUM ]] || missing+=(chromium)
have python3 || missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
have curl || missing+=(curl)
((${#missing[@]} == 0)) || install_packages browser-test "${missing[@]}"
[[ -x $CHROMIUM ]] || die "browser-test: $CHROMIUM is missing after installing chromium"

# The venv: made once, Playwright pinned; `pip install` only.
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('playwright') != '$PLAYWRIGHT_VERSION')" 2>/dev/null; then
    info "browser-test: installing playwright==$PLAYWRIGHT_VERSION into $VENV"
    python3 -m venv "$VENV" || die "browser-test: cannot create $VENV"
    "$VENV/bin/pip" install -q --no-cache-dir --disable-pip-version-check "playwright==$PLAYWRIGHT_VERSION" ||
        die "browser-test: pip install playwright==$PLAYWRIGHT_VERSION failed"
fi

scripts/ensure-services.sh
ADMIN_URL="${SLUICE_TEST_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
have psql || die "browser-test: psql (postgresql-client) is needed"

BIN=target/debug
if have cargo; then
    # The targets of scripts/test.sh's cargo test, so this is a no-op after it.
    info "browser-test: building the debug binaries (a no-op after cargo test)…"
    cargo build --locked --workspace --all-targets >&2
fi
for bin in sluice-api sluice-worker mock-gemini; do
    [[ -x $BIN/$bin ]] || die "browser-test: $BIN/$bin is missing and cargo is not installed"
done

# ---------------------------------------------------------------------------------------
# Own directories, ports, database, vhost and prefixes; all removed on exit.

scratch_stack browser api worker mock migrate
pick_port API_PORT
pick_port METRICS_PORT
pick_port WORKER_PORT
pick_port MOCK_PORT

# ---------------------------------------------------------------------------------------
# mock-gemini (a little latency, so a pending reply can be seen), the API and one worker.

MOCK_KEY="browser-key-$RUN_ID"
start mock "$BIN/mock-gemini" --addr "127.0.0.1:$MOCK_PORT" --keys "$MOCK_KEY" --latency-ms 300
wait_for_port 127.0.0.1 "$MOCK_PORT" 20 || die "browser-test: mock-gemini did not listen on :$MOCK_PORT"

export RUST_LOG=info,sqlx=warn
export SLUICE__DATABASE__URL="${ADMIN_URL%/*}/$DB"
export SLUICE__AMQP__URL="amqp://guest:guest@127.0.0.1:5672/$VHOST"
export SLUICE__QUEUES__PREFIX="sluice-browser-$RUN_ID."
export SLUICE__REDIS__URL=redis://127.0.0.1:6379
export SLUICE__REDIS__PREFIX=$REDIS_PREFIX
SLUICE__AUTH__JWT_SECRET=$(random_secret)
export SLUICE__AUTH__JWT_SECRET
export SLUICE__PROVIDER__BASE_URL="http://127.0.0.1:$MOCK_PORT"
export GEMINI_API_KEYS="browser=$MOCK_KEY"

"$BIN/sluice-api" migrate >"$WORK/migrate.log" 2>&1 || die "browser-test: sluice-api migrate failed"
SLUICE__HTTP__ADDR="127.0.0.1:$API_PORT" SLUICE__HTTP__METRICS_ADDR="127.0.0.1:$METRICS_PORT" \
    start api "$BIN/sluice-api"
api_ready() { curl --noproxy '*' -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$API_PORT/api/ready" 2>/dev/null; }
wait_until 60 api_ready || die "browser-test: the API was not ready within 60 s"
# After the API: it declares the topology the worker uses.
SLUICE__WORKER__HEALTH_ADDR="127.0.0.1:$WORKER_PORT" start worker "$BIN/sluice-worker"
wait_for_port 127.0.0.1 "$WORKER_PORT" 30 || die "browser-test: the worker did not listen on :$WORKER_PORT"
info "browser-test: API :$API_PORT, worker :$WORKER_PORT, mock-gemini :$MOCK_PORT"

# ---------------------------------------------------------------------------------------
# The browser test.

mkdir -p "$SHOTS"
SLUICE_WEB_URL="http://127.0.0.1:$API_PORT" SLUICE_CHROMIUM=$CHROMIUM SLUICE_SCREENSHOTS=$SHOTS \
    NO_PROXY='*' timeout 240 "$VENV/bin/python" tests/browser/test_web.py ||
    die "browser-test: FAILED (screenshots in $SHOTS)"
info "browser-test: passed (screenshots in $SHOTS)"
