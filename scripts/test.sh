#!/usr/bin/env bash
# Runs every test of the workspace against the real PostgreSQL, RabbitMQ and Redis on
# 127.0.0.1 (started, or installed from Debian's packages, when missing). Each test makes its
# own database, queue prefix and Redis prefix and removes them afterwards.
#
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source scripts/lib.sh

have cargo || die "cargo is not installed: install the Rust toolchain (rustup) first"
scripts/ensure-services.sh

export SLUICE_TEST_ADMIN_URL="${SLUICE_TEST_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
cargo test --workspace --all-targets --locked "$@"
