#!/usr/bin/env bash
# Runs the whole test suite: every crate's tests with nextest, the doc tests,
# and each criterion benchmark once (so they never rot).
# The object-store tests run against a local S3-compatible server started here
# (or against FLOWSTATE_S3_ENDPOINT if already set); it is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/s3-server.sh
source scripts/s3-server.sh
s3_server_install
trap s3_server_stop EXIT
s3_server_start

cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc
cargo test --benches -p flowstate-bench
