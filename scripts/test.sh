#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (golden SQL, API, differential,
# robustness), CLI end-to-end, and doctests (including README.md's quickstart).
# No external services are needed by the current test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/laminardb-target}"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found; installing it" >&2
  cargo install --locked cargo-nextest
fi

# Doctests first, so the run closes on nextest's summary of every test.
cargo test --workspace --doc
cargo nextest run --workspace --no-fail-fast
