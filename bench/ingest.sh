#!/usr/bin/env bash
# Webhook ingest, side by side in one run: nightshift (SQLite, then Postgres) and Probot on octokit's 22 KB
# `pull_request.opened`, `wrk -t1 -c16 -d${SECS}s --latency`, unique X-GitHub-Delivery per request, and the
# disk's fdatasync limit for 22 KB writes measured on the same disk. Prints ratios.
# Usage: bench/ingest.sh [seconds]   (needs cargo, wrk, npm, python3, openssl; Postgres's initdb for the
# Postgres row: /usr/lib/postgresql/*/bin or PATH). A ceiling row runs the same load against the same HTTP
# stack with the signature checked and nothing stored (examples/ingest_ceiling.rs). Every request carries
# the same body under a new id, so replay protection is off for the run (ingest.replay_window: 0s): each
# 202 is a row written and fsynced.
# BASE=/path/to/an/older/nightshift adds its SQLite and Postgres rows to the same run (ratios against it).
# POSTGRES=0 leaves Postgres out, SQLITE=0 SQLite, KEEP_LOGS=PREFIX keeps the servers' logs. Each row also says, from /metrics, how the group commit went: batches
# written, deliveries per batch, and the batch insert+commit's mean and (bucketed) p99 time: where the
# requests' time went. Each nightshift row also says its memory once ready and idle (1 s after `ready`):
# VmRSS, and of it the anonymous memory (heap, stacks) and the file-backed (the binary's pages), and how
# many of the deliveries stored the dispatcher had matched when the load stopped (it shares the CPU).
# The binary's pages are dropped from the page cache before each start, so that they come in by page faults
# as after a reboot: a binary just written (or read whole) sits in the cache in large folios that the kernel
# maps whole, and measured 3.5 MB more file-backed memory than the same binary paged in by faults.
# And where the CPU went per delivery stored during the load (bench/cpu.py): by the service's threads (the
# runtime's workers: HTTP, signature, the event's fields, compression; the store's writer: the insert and its
# commit; the dispatcher's matching threads; the store's connections) and, for Postgres, by the server.
set -euo pipefail
SECS=${1:-15}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
D=$(mktemp -d); export D
# Postgres runs as its own user when the script runs as root: it must reach its folder under $D.
chmod 755 "$D"
# Everything the run wrote (databases of several GB after a long run) goes with it.
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${PGDATA_DIR:-}" ] && $PGBIN/pg_ctl -D "$PGDATA_DIR" stop -m fast >/dev/null 2>&1; wait 2>/dev/null; rm -rf "$D"' EXIT
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
# THIS=/path/to/nightshift runs that binary as this tree's (no build).
if [ -z "${THIS:-}" ]; then (cd "$ROOT" && cargo build --release --quiet); fi
BIN=${THIS:-${CARGO_TARGET_DIR:-$ROOT/target}/release/nightshift}

# Probot first: it also installs the payload (payload.json) and the wrk script (post.lua) into $D.
PROBOT=$(D=$D "$ROOT/bench/probot-baseline.sh" "$SECS")
echo "probot:"; echo "$PROBOT" | sed 's/^/  /'
rate() { awk '/Requests\/sec/ {print $2}'; }
p99() { awk '$1=="99%" {print $2}'; }

# The CPU's limit for this stack: the same HTTP server (axum, hyper), the signature checked, nothing stored
# (examples/ingest_ceiling.rs), under the same load. CEILING=0 leaves it out.
if [ "${CEILING:-1}" != 0 ]; then
  (cd "$ROOT" && cargo build --release --quiet --example ingest_ceiling)
  "${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/ingest_ceiling" 127.0.0.1:0 > "$D/ceiling.out" &
  CEILING_PID=$!
  wait_for $CEILING_PID "$D/ceiling.out" '^listening '
  WPATH=/webhooks/github wrk -t1 -c16 -d${SECS}s --latency -s "$D/post.lua" "http://$(awk '{print $2}' "$D/ceiling.out")" > "$D/ceiling.wrk"
  kill $CEILING_PID; wait $CEILING_PID 2>/dev/null || true
  echo "ceiling (HTTP + signature, nothing stored):"; grep -E 'Requests/sec|50%|99%|Non-2xx' "$D/ceiling.wrk" | sed 's/^/  /'
fi

# The disk's limit: 22 KB writes, each fdatasync'ed, on the disk the store lives on.
DSYNC=$(dd if=/dev/zero of="$D/dsync" bs=22k count=2000 oflag=dsync 2>&1 | awk '/copied/ {print $(NF-3), $(NF-1)}')
DSYNC_RATE=$(python3 -c "
import os,time
fd=os.open('$D/fsync', os.O_WRONLY|os.O_CREAT); b=b'x'*22*1024; n=2000; t=time.perf_counter()
for _ in range(n): os.write(fd,b); os.fdatasync(fd)
print(round(n/(time.perf_counter()-t)))")
echo "disk: 22 KB write+fdatasync: $DSYNC_RATE/s (dd oflag=dsync: $DSYNC)"

run_nightshift() { # $1 = store URL, $2 = label, $3 = binary (default: this tree's)
  local dir="$D/$2" bin=${3:-$BIN}; mkdir -p "$dir/triggers"
  cat > "$dir/nightshift.yml" <<YML
listen: 127.0.0.1:0
store: $1
data_dir: $dir/data
triggers: $dir/triggers
workers: 1
github:
  webhook_secrets: [secret]
ingest:
  replay_window: 0s
# The ingest path alone: the payload's repository is not reachable from here, and reading its own triggers
# would start a failing git fetch per repository the dispatcher sees (REPO_TRIGGERS=true keeps it on).
repo_triggers: ${REPO_TRIGGERS:-false}
YML
  # What the runs before wrote (GBs of SQLite WAL) is on the disk first, not written back during this one's
  # fsyncs (measured: Postgres p99 62-66 ms after the SQLite rows, 18 ms alone).
  sync
  python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$bin"
  local started=$(date +%s%N)
  env -u NIGHTSHIFT_GITHUB_TOKEN RUST_LOG=info "$bin" --config "$dir/nightshift.yml" serve 2>"$dir/log" &
  local pid=$!
  wait_for $pid "$dir/log" ' ready '
  local ready_ms=$(( ($(date +%s%N) - started) / 1000000 ))
  local addr=$(grep -o 'address=[^ ]*' "$dir/log" | head -1 | cut -d= -f2)
  sleep 1
  local idle_kb=$(ps -o rss= -p $pid)
  local idle_split=$(awk '/^Anonymous:/ {a=$2} /^Rss:/ {r=$2} END {print "anonymous", a, "KB, file", r-a, "KB"}' /proc/$pid/smaps_rollup)
  # SQLite: the WAL file's largest size during the load (sampled every 100 ms), against its bound.
  local wal=""
  if [[ $1 == sqlite://* ]]; then
    wal="${1#sqlite://}-wal"
    (m=0; while kill -0 $pid 2>/dev/null; do s=$(stat -c %s "$wal" 2>/dev/null || echo 0)
       if [ "$s" -gt "$m" ]; then m=$s; echo "$m" > "$dir/walmax"; fi; sleep 0.1; done) &
  fi
  # Where the CPU goes per request (bench/cpu.py): the service's threads, and a Postgres server's processes.
  local pgpid=""; [ -n "${PGDATA_DIR:-}" ] && pgpid=$(head -1 "$PGDATA_DIR/postmaster.pid")
  python3 "$ROOT/bench/cpu.py" snap "$dir/cpu0" $pid $pgpid
  local out=$(WPATH=/webhooks/github wrk -t1 -c16 -d${SECS}s --latency -s "$D/post.lua" "http://$addr")
  python3 "$ROOT/bench/cpu.py" snap "$dir/cpu1" $pid $pgpid
  local codes=$(grep -c "delivery stored" "$dir/log" || true)
  # How far the dispatcher kept up: deliveries still waiting to be matched when the load stopped.
  local unmatched=$(curl -s "http://$addr/metrics" | awk '$1 == "nightshift_deliveries_unmatched" {print $2}')
  local commits=$(curl -s "http://$addr/metrics" | python3 -c "
import sys, re
b = {}; n = s = 0
for l in sys.stdin:
    if 'op=\"ingest_commit\"' not in l: continue
    m = re.match(r'nightshift_store_seconds_(bucket|count|sum)\{[^}]*?(?:le=\"([^\"]+)\")?[^}]*\} (\S+)', l)
    if not m: continue
    kind, le, v = m.groups()
    if kind == 'count': n = float(v)
    elif kind == 'sum': s = float(v)
    else: b[float(le)] = float(v)
p99 = next((le for le in sorted(b) if b[le] >= 0.99 * n), float('inf')) if n else 0
print('%d batches, %.1f deliveries each, commit mean %.2f ms, p99 <= %s ms' % (n, $codes / n if n else 0, 1000 * s / n if n else 0, '%g' % (1000 * p99)))
" 2>/dev/null || echo "no /metrics")
  echo "nightshift $2: start-to-ready ${ready_ms} ms (startup_ms $(grep -o 'startup_ms=[0-9]*' "$dir/log" | cut -d= -f2)), idle RSS ${idle_kb} KB ($idle_split), stored $codes"
  echo "$out" | grep -E 'Requests/sec|50%|99%|Non-2xx' | sed 's/^/  /'
  echo "  group commit: $commits (uptime:$(uptime | sed 's/.*load average//'))"
  echo "  matching: $((codes - ${unmatched:-0})) of $codes stored were matched against the triggers by the end of the load"
  echo "  $(python3 "$ROOT/bench/cpu.py" diff "$dir/cpu0" "$dir/cpu1" "$codes" | sed 's/per unit/per delivery stored/')"
  if [ -n "$wal" ]; then
    echo "  WAL: largest $(( $(cat "$dir/walmax" 2>/dev/null || echo 0) / 1000000 )) MB; copied whole at its bound $(grep -c 'reached its bound' "$dir/log" || true) times"
  fi
  kill $pid; wait $pid 2>/dev/null || true
  echo "$out" > "$dir/wrk"
  # KEEP_LOGS=PREFIX keeps each server's log as PREFIX-LABEL.log.
  if [ -n "${KEEP_LOGS:-}" ]; then cp "$dir/log" "$KEEP_LOGS-$2.log"; fi
  # Its database goes now: the kernel drops a deleted file's pages instead of writing them back later.
  rm -rf "$dir/state" "$dir/data"
}

if [ "${SQLITE:-1}" != 0 ]; then
  run_nightshift "sqlite://$D/sqlite/state/nightshift.db" sqlite
  [ -n "${BASE:-}" ] && run_nightshift "sqlite://$D/base/state/nightshift.db" base "$BASE"
fi
pg_run() { # $1 = label, $2 = binary: on a Postgres server of its own, fresh
  PGDATA_DIR="$D/$1-pg/data"
  # Durable: fsync and synchronous_commit stay on (the defaults). What the server did during the run is
  # logged and counted (checkpoints, autovacuum, WAL writes and their fsync time); PG_OPTS adds settings
  # ("-c name=value ...") to try.
  pg_start "$D/$1-pg" 5499 "-c log_checkpoints=on -c log_autovacuum_min_duration=0 -c track_wal_io_timing=on ${PG_OPTS:-}"
  run_nightshift "postgres://postgres@localhost/postgres?host=$D/$1-pg&port=5499" "$1" "${2:-}"
  "${RUNAS[@]}" "$PGBIN/psql" -h "$D/$1-pg" -p 5499 -U postgres -AtF ' ' -c "
    SELECT 'checkpoints', checkpoints_timed + checkpoints_req, 'written', buffers_checkpoint FROM pg_stat_bgwriter;
    SELECT 'wal MB', round(wal_bytes / 1e6), 'records', wal_records, 'full-page images', wal_fpi,
           'fsyncs', wal_sync, 'fsync ms mean', round((wal_sync_time / NULLIF(wal_sync, 0))::numeric, 2),
           'wal_buffers_full', wal_buffers_full FROM pg_stat_wal;
    SELECT relname, 'inserted', n_tup_ins, 'updated', n_tup_upd, 'hot', n_tup_hot_upd,
           'autovacuums', autovacuum_count, 'autoanalyzes', autoanalyze_count
    FROM pg_stat_user_tables WHERE relname IN ('deliveries', 'delivery_payloads', 'delivery_digests', 'jobs');" \
    | sed 's/^/  postgres: /' || true
  grep -E 'checkpoint (starting|complete)|automatic (vacuum|analyze)' "$D/$1-pg/log" | sed 's/^/  postgres log: /' | cut -c1-220 | head -12 || true
  "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA_DIR" stop -m fast >/dev/null; PGDATA_DIR=
  rm -rf "$D/$1-pg"
}
if [ "${POSTGRES:-1}" != 0 ] && [ -x "$PGBIN/initdb" ]; then
  pg_run postgres
  if [ -n "${BASE:-}" ]; then pg_run pgbase "$BASE"; fi
fi

PR=$(echo "$PROBOT" | rate)
for s in sqlite base postgres pgbase; do
  [ -f "$D/$s/wrk" ] || continue
  R=$(rate < "$D/$s/wrk")
  python3 -c "print('$s: %.2fx Probot (%s vs %s req/s), %.2f of the disk\'s fdatasync rate, p99 %s' % ($R/$PR, '$R', '$PR', $R/$DSYNC_RATE, '$(p99 < "$D/$s/wrk")'))"
done
if [ -f "$D/ceiling.wrk" ]; then
  C=$(rate < "$D/ceiling.wrk")
  python3 -c "print('ceiling: %.2fx Probot (%s req/s)' % ($C/$PR, '$C'))"
  for s in sqlite base postgres pgbase; do
    [ -f "$D/$s/wrk" ] && python3 -c "print('$s: %.2f of the ceiling' % ($(rate < "$D/$s/wrk")/$C))"
  done
fi
if [ -f "$D/base/wrk" ]; then
  python3 -c "print('sqlite vs base: %.2fx the requests/s' % ($(rate < "$D/sqlite/wrk")/$(rate < "$D/base/wrk")))"
fi
if [ -f "$D/pgbase/wrk" ]; then
  python3 -c "print('postgres vs base: %.2fx the requests/s' % ($(rate < "$D/postgres/wrk")/$(rate < "$D/pgbase/wrk")))"
fi
