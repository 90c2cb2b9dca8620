#!/usr/bin/env bash
# Runs the whole test suite: every crate's tests with nextest, then the doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc
