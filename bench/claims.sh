#!/usr/bin/env bash
# Claims per second on Postgres with 2 processes × 8 workers and a no-op agent (issue 11's target: ≥ 5,000,
# no job claimed twice), beside another build's claims bench in the same run for a ratio, and the textbook
# SKIP LOCKED queue on a server of the same settings for a ceiling (pgbench; see the end).
# Usage: bench/claims.sh [OTHER_CLAIMS_BINARY]   (CLAIMS_JOBS=N for another job count; default 10000)
# OTHER_CLAIMS_BINARY: a `claims` bench binary built from another commit (for instance main's, copied out of
# target/release/deps after `cargo bench --bench claims --no-run`); it is run first, then this tree's.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
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

# The textbook queue on the same machine and server settings, for a ceiling: one table, a claim that takes
# the oldest queued row with FOR UPDATE SKIP LOCKED, and a finish, each its own statement; 16 clients, as
# many as the bench's workers. No fairness, limits, leases or wake-ups: what Postgres itself does here.
# A second line adds fairness by repository to it (below). TEXTBOOK=0 leaves both out.
if [ "${TEXTBOOK:-1}" != 0 ]; then
  Q=$(mktemp -d); chmod 755 "$Q"
  trap '"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$Q/data" stop -m fast >/dev/null 2>&1; rm -rf "$Q"' EXIT
  pg_start "$Q" 5496 "-c fsync=off -c synchronous_commit=off"
  "$PGBIN/psql" -h "$Q" -p 5496 -U postgres -q -c "
    CREATE TABLE q (id bigserial PRIMARY KEY, repo text, state text NOT NULL, owner text, lease bigint);
    CREATE INDEX q_queued ON q (id) WHERE state = 'queued';
    INSERT INTO q (repo, state) SELECT 'r' || (g / 20), 'queued' FROM generate_series(1, 200000) g;"
  cat > "$Q/claim.sql" <<'SQL'
UPDATE q SET state = 'running', owner = 'w', lease = 1
WHERE id = (SELECT id FROM q WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id \gset
UPDATE q SET state = 'done' WHERE id = :id;
SQL
  # The same with fairness: one lane row per repository (its queued and running jobs, its last start, its
  # oldest queued job), the claim taking the head of the lane with the fewest running jobs, then served
  # least recently (SKIP LOCKED on the lane), and the claim and the finish keeping the lane in the same
  # statement, with no trigger and no plpgsql: what a fair queue costs Postgres itself, against which the
  # rest of ours (installations, limits, leases, the wide `jobs` row and its triggers) is measured.
  "$PGBIN/psql" -h "$Q" -p 5496 -U postgres -q -c "
    CREATE TABLE fq (id bigint PRIMARY KEY, repo text NOT NULL, state smallint NOT NULL, owner text, lease bigint)
      WITH (fillfactor = 80);
    CREATE INDEX fq_queued ON fq (repo, id) WHERE state = 0;
    CREATE TABLE lanes (repo text PRIMARY KEY, queued bigint NOT NULL, running bigint NOT NULL,
                        last_started bigint NOT NULL, head bigint) WITH (fillfactor = 50);
    CREATE INDEX lanes_fair ON lanes (running, last_started, head) WHERE queued > 0;
    INSERT INTO fq SELECT g, 'r' || (g % 10000), 0 FROM generate_series(1, 200000) g;
    INSERT INTO lanes SELECT repo, count(*), 0, 0, min(id) FROM fq GROUP BY repo;" -c "VACUUM ANALYZE"
  cat > "$Q/fair.sql" <<'SQL'
WITH pick AS (SELECT l.repo, l.head FROM lanes l WHERE l.queued > 0
              ORDER BY l.running, l.last_started, l.head LIMIT 1 FOR UPDATE SKIP LOCKED),
     c AS (UPDATE fq SET state = 1, owner = 'w', lease = 1 FROM pick
           WHERE fq.id = pick.head AND fq.state = 0 RETURNING fq.id, fq.repo)
UPDATE lanes l SET running = l.running + 1, queued = l.queued - 1,
       last_started = (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
       head = (SELECT min(n.id) FROM fq n WHERE n.repo = c.repo AND n.state = 0 AND n.id > c.id)
FROM c WHERE l.repo = c.repo RETURNING c.id \gset
WITH f AS (UPDATE fq SET state = 2, owner = NULL, lease = NULL WHERE id = :id AND owner = 'w' AND state = 1
           RETURNING repo)
UPDATE lanes l SET running = l.running - 1 FROM f WHERE l.repo = f.repo;
SQL
  PM=$(head -1 "$Q/data/postmaster.pid")
  PROCS=$(echo "$OUT" | rate processes)
  # queue_run NAME SCRIPT: 16 clients for 10 s; the rate, the server's CPU per job, ours as a fraction.
  queue_run() {
    local cpu0=$(python3 "$ROOT/bench/cpu.py" server "$PM")
    local out=$("$PGBIN/pgbench" -h "$Q" -p 5496 -U postgres -n -M prepared -c 16 -j 2 -T 10 -f "$2" postgres 2>/dev/null)
    local cpu1=$(python3 "$ROOT/bench/cpu.py" server "$PM")
    local tps=$(echo "$out" | awk '/^tps/ {print int($3)}') done=$(echo "$out" | awk '/actually processed/ {print $NF}')
    python3 -c "print('%s (pgbench, 16 clients, claim + finish): %s/s, Postgres server CPU %.0f us per job; this tree\'s 2 processes x 8: %s (%.2f of it)' % ('$1', '$tps', ($cpu1 - $cpu0) / $done * 1e6, '$PROCS', $PROCS/$tps))"
  }
  queue_run "textbook queue" "$Q/claim.sql"
  queue_run "fair textbook queue" "$Q/fair.sql"
fi
