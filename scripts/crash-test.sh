#!/usr/bin/env bash
# The crash test at full length: 100 kill -9 of `nightshift serve` at random moments under a steady stream of
# signed webhooks, with SQLite and with Postgres (tests/crash.rs; CI runs it at 10 rounds).
# Usage: scripts/crash-test.sh [ROUNDS] [SEED]    (a seed replays the kill moments a run printed)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export NIGHTSHIFT_CRASH_ROUNDS=${1:-100}
if [ -n "${2:-}" ]; then export NIGHTSHIFT_CRASH_SEED=$2; fi
cd "$root"
cargo nextest run --test crash --no-capture --test-threads 1 --slow-timeout 60s
