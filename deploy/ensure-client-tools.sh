#!/usr/bin/env bash
# Make sure the toolchains of the client tests (tests/clients) are present. Idempotent, and
# quick when everything is already there (no network, no apt). `make test` runs it.
#
#   Go   - Debian 12's golang-go (1.19) and the packaged Go sources of grpc-go and
#          protobuf-go (golang-google-grpc-dev, golang-google-protobuf-dev, under
#          /usr/share/gocode), protoc and its Go plugins (protobuf-compiler, protoc-gen-go,
#          protoc-gen-go-grpc): no Go module proxy is reachable, so clients/go builds in
#          GOPATH mode from those sources. grpc-dev accepts either packaged
#          github.com/golang/protobuf and apt picks 1.3, which cannot decode messages from
#          protoc-gen-go 1.28 (it panics: "protobuf tag not enough fields"); 1.5 (APIv2
#          underneath) is asked for by name.
#   Node - @grpc/grpc-js and @grpc/proto-loader from npm, `npm ci` in clients/node (pinned
#          with integrity hashes by its package-lock.json); Node.js and npm from apt if absent.
#
# Exit status: 0 when the toolchains are ready, or when installing them is impossible here
# (no apt-get, or not root and no passwordless sudo): the client tests then skip and say
# why. 1 when an install was possible and failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GO_PACKAGES=(golang-go golang-google-grpc-dev golang-google-protobuf-dev protobuf-compiler
             protoc-gen-go protoc-gen-go-grpc golang-github-golang-protobuf-1-5-dev)
GOCODE=/usr/share/gocode/src

log() { printf 'ensure-client-tools: %s\n' "$*" >&2; }

have_go() {
    command -v go >/dev/null 2>&1 && command -v protoc-gen-go >/dev/null 2>&1 \
        && command -v protoc-gen-go-grpc >/dev/null 2>&1 && command -v protoc >/dev/null 2>&1 \
        && [ -d "${GOCODE}/google.golang.org/grpc" ] && [ -d "${GOCODE}/google.golang.org/protobuf" ] \
        && [ -f "${GOCODE}/github.com/golang/protobuf/proto/registry.go" ]  # 1.4+, not 1.3
}
have_node_deps() {
    command -v node >/dev/null 2>&1 \
        && [ -f "${ROOT}/clients/node/node_modules/@grpc/grpc-js/package.json" ] \
        && [ -f "${ROOT}/clients/node/node_modules/@grpc/proto-loader/package.json" ]
}

# The apt runner, or "" with the reason logged when apt cannot run here.
apt_runner() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "no apt-get here: install $* by hand, or the client tests skip"
        return 1
    fi
    if [ "$(id -u)" -eq 0 ]; then
        echo "apt-get"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        echo "sudo -n apt-get"
    else
        log "installing $* needs root (apt-get): the client tests skip"
        return 1
    fi
}

apt_wanted=()
have_go || apt_wanted+=("${GO_PACKAGES[@]}")
command -v npm >/dev/null 2>&1 || apt_wanted+=(nodejs npm)
if [ "${#apt_wanted[@]}" -gt 0 ]; then
    if apt="$(apt_runner "${apt_wanted[@]}")"; then
        log "installing (apt-get install ${apt_wanted[*]})"
        export DEBIAN_FRONTEND=noninteractive
        $apt update -qq >/dev/null
        $apt install -y -qq --no-install-recommends "${apt_wanted[@]}" >/dev/null
        have_go || { log "the Go packages installed but go / protoc-gen-go do not run"; exit 1; }
    fi
fi

if ! have_node_deps && command -v npm >/dev/null 2>&1; then
    log "installing the Node client's dependencies (npm ci in clients/node)"
    (cd "${ROOT}/clients/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    have_node_deps || { log "npm ci ran but @grpc/grpc-js is not there"; exit 1; }
fi

status=()
have_go && status+=("$(go version | cut -d' ' -f3), protoc $(protoc --version | cut -d' ' -f2)")
have_node_deps && status+=("node $(node --version), @grpc/grpc-js")
(IFS=";"; log "ready: ${status[*]:-nothing (see above; the client tests will say why they skip)}")
