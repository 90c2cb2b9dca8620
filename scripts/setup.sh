#!/usr/bin/env bash
# Installs what building and testing flowstate needs on a fresh machine.
# Idempotent: installs only what is missing.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is not installed; install a Rust toolchain (rustup) first" >&2
    exit 1
fi

# RocksDB is compiled from source; its Rust bindings are generated with libclang.
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo_cmd=""
        if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
        export DEBIAN_FRONTEND=noninteractive
        $sudo_cmd apt-get update -q >/dev/null || true
        $sudo_cmd apt-get install -y -q libclang-dev >/dev/null
    else
        echo "setup: install libclang (libclang-dev) for the RocksDB bindings" >&2
        exit 1
    fi
fi

for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done

if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi

# The S3-compatible server the object-store tests run against (cached outside the clone).
# shellcheck source=scripts/s3-server.sh
source "$(dirname "$0")/s3-server.sh"
s3_server_install
