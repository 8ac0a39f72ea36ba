#!/usr/bin/env bash
# Runs Flotilla's checks and tests. Needs the Rust toolchain; the partition
# tests need root (network namespaces), and scripts/test-deps.sh installs
# the Debian packages they use.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== test dependencies"
./scripts/test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked
