#!/usr/bin/env bash
# Claims per second on Postgres with 2 processes × 8 workers and a no-op agent (issue 11's target: ≥ 5,000,
# no job claimed twice), beside another build's claims bench in the same run for a ratio.
# Usage: bench/claims.sh [OTHER_CLAIMS_BINARY]   (CLAIMS_JOBS=N for another job count; default 10000)
# OTHER_CLAIMS_BINARY: a `claims` bench binary built from another commit (for instance main's, copied out of
# target/release/deps after `cargo bench --bench claims --no-run`); it is run first, then this tree's.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OTHER=${1:-}
cd "$ROOT"
cargo bench --bench claims --no-run --quiet 2>/dev/null
BIN=$(ls -t "${CARGO_TARGET_DIR:-$ROOT/target}"/release/deps/claims-* | grep -v '\.d$' | head -1)
rate() { awk -v shape="$1" '$0 ~ "^postgres" && (shape == "" || index($0, "(" shape ")")) && /claims\/s/ {for (i = 1; i <= NF; i++) if ($(i + 1) == "claims/s,") print $i}' | head -1; }
if [ -n "$OTHER" ]; then
  echo "other build ($OTHER):"
  # Its figures so far are kept if it fails later (main's SQLite shape has failed with "database is locked"
  # on a loaded machine).
  OUT_OTHER=$("$OTHER" --bench 2>/tmp/claims-other.err) || echo "  (the other build failed: $(grep -m1 panicked -A1 /tmp/claims-other.err | tail -1))"
  echo "$OUT_OTHER" | sed 's/^/  /'
fi
echo "this tree ($BIN):"
OUT=$("$BIN" --bench 2>/tmp/claims-this.err) || echo "  (this build failed: $(grep -m1 panicked -A1 /tmp/claims-this.err | tail -1))"
echo "$OUT" | sed 's/^/  /'
if [ -n "$OTHER" ]; then
  # The other build may predate the process shape: its first Postgres figure is 2 pools x 8 tasks.
  BASE=$(echo "$OUT_OTHER" | rate pools); [ -n "$BASE" ] || BASE=$(echo "$OUT_OTHER" | rate "")
  POOLS=$(echo "$OUT" | rate pools); PROCS=$(echo "$OUT" | rate processes)
  python3 -c "print('postgres claims/s: 2 processes x 8: %s (%.1fx the other build\'s 2 pools x 8, %s); 2 pools x 8: %s (%.1fx)' % ('$PROCS', $PROCS/$BASE, '$BASE', '$POOLS', $POOLS/$BASE))"
fi
