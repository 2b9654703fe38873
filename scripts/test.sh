#!/usr/bin/env bash
# Runs every test of the workspace against the real PostgreSQL, RabbitMQ and Redis on
# 127.0.0.1 (started, or installed from Debian's packages, when missing). Each test makes its
# own database, queue prefix and Redis prefix and removes them afterwards. Then the Kubernetes
# manifests are validated offline (scripts/k8s-validate.sh), nginx runs in front of two API
# processes (scripts/nginx-test.sh), the web page in headless Chromium
# (scripts/browser-test.sh), then the chaos run (scripts/chaos.sh, about four minutes)
# on private instances of the three services.
#
# Usage: scripts/test.sh [extra cargo test arguments]
#   SLUICE_K8S=0: no manifest validation; SLUICE_NGINX=0: no nginx test; SLUICE_BROWSER=0: no
#   browser test; SLUICE_CHAOS=0: no chaos run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source scripts/lib.sh

have cargo || die "cargo is not installed: install the Rust toolchain (rustup) first"
scripts/ensure-services.sh

export SLUICE_TEST_ADMIN_URL="${SLUICE_TEST_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
cargo test --workspace --all-targets --locked "$@"

# The Kubernetes manifests in deploy/k8s, against the Kubernetes schemas (offline, seconds).
# SLUICE_K8S=0 skips it.
scripts/k8s-validate.sh

# Then nginx/nginx.conf for real, in front of two API processes (half a minute).
# SLUICE_NGINX=0 skips it.
if [[ ${SLUICE_NGINX:-1} != 0 ]]; then
    scripts/nginx-test.sh
fi

# Then the web page in Debian's headless Chromium, driven by Playwright for Python (under two
# minutes; screenshots in target/browser/). SLUICE_BROWSER=0 skips it.
if [[ ${SLUICE_BROWSER:-1} != 0 ]]; then
    scripts/browser-test.sh
fi

# Then the chaos run: its own PostgreSQL, Redis and RabbitMQ, processes killed and services
# restarted under load; it fails unless every accepted message got exactly one reply.
# SLUICE_CHAOS=0 skips it (e.g. while iterating on one test).
if [[ ${SLUICE_CHAOS:-1} != 0 ]]; then
    scripts/chaos.sh
fi
