#!/usr/bin/env bash
# Build persona-front in GOPATH mode over Debian's packaged grpc-go and protobuf-go (no Go
# module proxy is reachable here; deploy/ensure-client-tools.sh installs them): front/go and
# clients/go appear at their import paths in front/go/.gopath (git-ignored).
#
# Usage: front/go/build.sh OUT        build the binary to OUT
#        front/go/build.sh --test     go test and go vet of every package
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GOPATH_DIR="${HERE}/.gopath"
mkdir -p "${GOPATH_DIR}/src/persona/front" "${GOPATH_DIR}/src/persona/clients"
ln -sfn "${HERE}" "${GOPATH_DIR}/src/persona/front/go"
ln -sfn "${HERE}/../../clients/go" "${GOPATH_DIR}/src/persona/clients/go"
export GOPATH="${GOPATH_DIR}:/usr/share/gocode" GO111MODULE=off GOFLAGS= \
    GOCACHE="${GOCACHE:-${GOPATH_DIR}/cache}"  # the caller's (the tests share the client's)
# `./...` does not follow the symlink: the packages by name
PACKAGES=(persona/front/go/resp persona/front/go/store persona/front/go/shortterm persona/front/go/metrics persona/front/go/kafka
          persona/front/go/front persona/front/go/cmd/persona-front)
if [ "${1:-}" = "--test" ]; then
    go test "${PACKAGES[@]}"
    go vet "${PACKAGES[@]}"
else
    go build -o "${1:?usage: build.sh OUT | --test}" persona/front/go/cmd/persona-front
fi
