#!/usr/bin/env bash
# Regenerate the Go code of the persona.v1 contract, clients/go/personav1, from
# proto/persona/v1 (`make protos` runs this). Needs protoc, protoc-gen-go and
# protoc-gen-go-grpc: deploy/ensure-client-tools.sh installs Debian's (protobuf-compiler
# 3.21, protoc-gen-go 1.28, protoc-gen-go-grpc 1.33); other versions change the headers.
#
# Usage: clients/go/generate.sh [OUT]   (OUT: the module root to write into, default
#        clients/go; tests/clients/test_generated.py writes elsewhere and compares)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-${ROOT}/clients/go}"
MODULE="persona/clients/go"  # the go_package prefix in proto/persona/v1/*.proto

for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
    if ! command -v "${tool}" >/dev/null 2>&1; then
        echo "generate.sh: ${tool} missing: run deploy/ensure-client-tools.sh" >&2
        exit 1
    fi
done
mkdir -p "${OUT}"
protoc -I"${ROOT}/proto" \
    --go_out="${OUT}" --go_opt="module=${MODULE}" \
    --go-grpc_out="${OUT}" --go-grpc_opt="module=${MODULE}" \
    "${ROOT}"/proto/persona/v1/*.proto
