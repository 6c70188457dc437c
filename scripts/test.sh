#!/usr/bin/env bash
# Runs every test of the workspace with every feature: unit, integration (golden SQL, API,
# differential, robustness), CLI end-to-end, and doctests (including README.md's
# quickstart). Starts the services the tests need first (scripts/services.sh: an
# S3-compatible object store).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/laminardb-target}"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found; installing it" >&2
  cargo install --locked cargo-nextest
fi

source scripts/services.sh

# Doctests first, so the run closes on nextest's summary of every test.
cargo test --workspace --all-features --doc
cargo nextest run --workspace --all-features --no-fail-fast
