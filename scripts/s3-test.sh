#!/usr/bin/env bash
# Runs only the object-store tests (flowstate-object and the conformance suite)
# against a local S3-compatible server, started here and stopped on exit.
# Arguments go to nextest, e.g. `bash scripts/s3-test.sh -E 'test(/object/)'`.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/s3-server.sh
source scripts/s3-server.sh
s3_server_install
trap s3_server_stop EXIT
s3_server_start

cargo nextest run -p flowstate-object -p flowstate-conformance "$@"
