#!/usr/bin/env bash
# Runs one bench/run.sh scenario several times, each on a fresh stack, and prints the medians
# of the figures (every run's value beside each median).
#
# Usage:
#   bench/repeat.sh RUNS SCENARIO ARG ARG [sluice-bench options…]   e.g. bench/repeat.sh 3 paced 400 30
#
# The runs' JSON lines go to stdout as run.sh prints them (and to $BENCH_OUT/runs.jsonl),
# then one line {"runs": N, "median": {…}}. Environment as bench/run.sh; BENCH_WAIT_IDLE
# defaults to 60 here (wait up to 60 s for quiet CPUs before each run), and BENCH_MEDIAN_ONLY
# picks the figures to summarise (comma-separated parts of their paths; `all` for every one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
source scripts/lib.sh

(($# >= 4)) || {
    sed -n '5,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
RUNS=$1
shift
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive whole number, not '$RUNS'"
export BENCH_WAIT_IDLE=${BENCH_WAIT_IDLE:-60}

LINES=$(mktemp "${TMPDIR:-/tmp}/sluice-bench-runs.XXXXXX")
trap 'rm -f "$LINES"' EXIT
for ((i = 1; i <= RUNS; i++)); do
    info "=== run $i of $RUNS: bench/run.sh $*"
    bench/run.sh "$@" | tee -a "$LINES"
done

ONLY=${BENCH_MEDIAN_ONLY:-per_s,_ms,p50,p95,p99,us_per_message,us_per_reply,core_percent,peak_rss_mib,outside_stack_percent,machine_busy_percent,completed,failed,pending,not_accepted,rejected,whole,ratio}
[[ $ONLY == all ]] && ONLY=""
"${CARGO_TARGET_DIR:-target}/release/sluice-bench" median --json ${ONLY:+--only "$ONLY"} "$LINES"
