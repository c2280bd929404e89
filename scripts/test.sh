#!/usr/bin/env bash
# Runs nightshift's whole test suite: unit tests, and integration tests that run the real binary against real
# git repositories, real SQLite, real agent processes and a fake GitHub. Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
missing=()
need git || missing+=(git)
need bwrap || missing+=(bubblewrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The benchmarks must build (they run with `cargo bench`); the tests run last, so their summary closes the output.
cargo build --locked --benches
cargo test --locked --lib --bins --tests
