#!/usr/bin/env bash
# Runs every check and test of Strata on a fresh machine: formatting, lints,
# then the whole workspace's tests (unit, integration against a real server on
# an ephemeral port, and end-to-end tests of the `strata` binary, including
# SIGKILL crash tests). Installs nothing beyond the Rust toolchain today; the
# cold-tier tests will start their S3-compatible server from here.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust from https://rustup.rs first" >&2
  exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked "$@"
