#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s offline (no cluster, no kubectl): every
# built-in resource against the Kubernetes JSON schemas that the `kubernetes-validate` PyPI
# package ships, KEDA's CRDs by a structural check, and every SLUICE__* variable against
# config/default.toml — see scripts/k8s-check.py for the list.
#
# The package lives in a venv under target/ (made on first use; needs python3 with venv and
# ensurepip, installed from Debian's packages when missing, as scripts/ensure-services.sh does
# for the services). Called by scripts/test.sh; SLUICE_K8S=0 skips it.
#
# Usage: scripts/k8s-validate.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source scripts/lib.sh

if [[ ${SLUICE_K8S:-1} == 0 ]]; then
    info "k8s: skipped (SLUICE_K8S=0)"
    exit 0
fi

# Pinned, so the schemas (and what passes) change only when this line does.
readonly PACKAGE="kubernetes-validate==1.37.0"
readonly VENV=target/k8s-validate/venv

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif have sudo; then
        sudo -n -- "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# Debian splits venv and ensurepip out of python3 (python3-venv).
python_can_make_venvs() { have python3 && python3 -c 'import ensurepip, venv' 2>/dev/null; }

if ! python_can_make_venvs; then
    have apt-get || die "python3 with the venv module is needed; install it (Debian: python3-venv)"
    info "k8s: installing python3-venv"
    log=$(mktemp "${TMPDIR:-/tmp}/sluice-k8s.XXXXXX")
    install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
        python3 python3-venv)
    # Refresh the package lists only when the install fails with the ones there are.
    if ! as_root "${install[@]}" </dev/null >"$log" 2>&1; then
        as_root apt-get update </dev/null >>"$log" 2>&1 &&
            as_root "${install[@]}" </dev/null >>"$log" 2>&1 ||
            { sed 's/^/    /' "$log" >&2; rm -f "$log"; die "apt-get install python3-venv failed"; }
    fi
    rm -f "$log"
    python_can_make_venvs || die "python3 still cannot make venvs after installing python3-venv"
fi

# scripts/k8s-check.py reads config/default.toml with tomllib (Python 3.11, Debian 12's).
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "python3 is $(python3 --version 2>&1); scripts/k8s-check.py needs 3.11 or later"

marker="$VENV/.installed"
if [[ ! -x $VENV/bin/python || ! -f $marker || $(cat "$marker") != "$PACKAGE" ]]; then
    info "k8s: installing $PACKAGE into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$PACKAGE" ||
        die "pip could not install $PACKAGE"
    printf '%s\n' "$PACKAGE" >"$marker"
fi

"$VENV/bin/python" scripts/k8s-check.py deploy/k8s
