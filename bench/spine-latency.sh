#!/usr/bin/env bash
# Measures the spine's two latencies on this machine, with the release binary:
#   1. cold start: from exec to the first successful GET /healthz (fresh data dir, migrations included);
#   2. 202 → agent: from the moment the webhook's 202 is received to the moment the agent process starts
#      (the agent records its own start time, inside its box: bubblewrap), for N sequential deliveries
#      against one local repository.
# The servers' data dirs are made under $TMPDIR (default /tmp): TMPDIR=/dev/shm measures the service without
# the disk's file creation (see docs/architecture.md, "Event to agent").
# Usage: bench/spine-latency.sh [N] [BASE_BINARY]
#   With BASE_BINARY (e.g. a release build of main), both binaries run side by side in this one run, each
#   delivery going to one and then the other, and the medians are compared as a ratio.
# Needs curl, jq, openssl, git, bwrap; builds the release binary (honours CARGO_TARGET_DIR).
set -euo pipefail
N=${1:-20}
base=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$root/target}/release/nightshift"
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

git clone --quiet --bare "$root" "$work/remote.git"
branch=$(git -C "$work/remote.git" symbolic-ref --short HEAD)
mkdir -p "$work/triggers" "$work/starts"
# The agent's first instruction takes the time, then says it on a pipe the bench waits on (no polling: a
# loop of `sleep`s would take the CPU the service needs on a small machine).
mkfifo "$work/starts/stamps"
exec 3<>"$work/starts/stamps"
cat > "$work/agent.sh" <<AGENT
#!/bin/sh
t=\$(date +%s%N)
echo "\$NIGHTSHIFT_JOB_ID \$t" > "$work/starts/stamps"
cat > /dev/null
echo ok
AGENT
chmod +x "$work/agent.sh"
cat > "$work/triggers/t.yml" <<'T'
on:
  issues:
    types: [opened]
agent: probe
prompt: "{{ event.issue.title }}"
T
jq --arg url "$work/remote.git" --arg b "$branch" '.repository.clone_url = $url | .repository.default_branch = $b' \
  "$root/tests/fixtures/webhooks/issues/opened.json" > "$work/payload.json"
sig="sha256=$(openssl dgst -sha256 -hmac bench -r < "$work/payload.json" | cut -d' ' -f1)"

# start NAME BINARY: a server of its own (data dir, port) on the one remote; sets $port_NAME.
start() {
  local name=$1 binary=$2 port=$((20000 + RANDOM % 20000))
  mkdir -p "$work/$name"
  cat > "$work/$name/nightshift.yml" <<C
listen: 127.0.0.1:$port
data_dir: $work/$name/data
store: sqlite://$work/$name/data/nightshift.db
triggers: $work/triggers
workers: 4
# One signed body is sent under many delivery ids: replay protection (on by default) would store it once.
ingest:
  replay_window: 0s
git:
  file_roots: [$work]
agents:
  probe: {command: [$work/agent.sh], sandbox: bubblewrap, shared: {writable: [$work/starts]}}
C
  local t0 t1
  t0=$(date +%s%N)
  NIGHTSHIFT_WEBHOOK_SECRET=bench RUST_LOG=warn,nightshift::source::webhook=info,nightshift::queue=info "$binary" --config "$work/$name/nightshift.yml" serve \
    2>"$work/$name/log" 3>&- &
  pids+=($!)
  until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do
    # A server that could not start (its port taken, a bad config) ends the bench with its log.
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then echo "$name: the server stopped:"; tail -5 "$work/$name/log"; exit 1; fi
    sleep 0.001
  done
  t1=$(date +%s%N)
  echo "$name: cold start to ready: $(( (t1 - t0) / 1000000 )) ms"
  eval "port_$name=$port"
}

# deliver NAME I: one delivery, and the wait for its agent; appends the latency (µs) to $work/NAME.lat.
deliver() {
  local name=$1 i=$2 port ack job stamp
  port=$(eval "echo \$port_$name")
  curl -sf -o /dev/null -H "X-GitHub-Event: issues" -H "X-GitHub-Delivery: bench-$i" \
    -H "X-Hub-Signature-256: $sig" -H "Content-Type: application/json" \
    --data-binary "@$work/payload.json" "http://127.0.0.1:$port/webhooks/github"
  ack=$(date +%s%N)
  # Each server numbers its jobs from 1, one per delivery.
  if ! read -r -t 20 job stamp <&3 || [ "$job" != "$i" ]; then
    echo "$name: delivery $i never started its agent (${job:-nothing} started):"; tail -5 "$work/$name/log"; exit 1
  fi
  echo "$stamp" > "$work/starts/$i.$name"
  echo $(( (stamp - ack) / 1000 )) >> "$work/$name.lat"
}

# report NAME: the first delivery (which clones the mirror) alone, then the median and p90 of the rest.
report() {
  local name=$1 first count
  first=$(head -1 "$work/$name.lat")
  sort -n <(tail -n +2 "$work/$name.lat") > "$work/$name.rest"
  count=$(wc -l < "$work/$name.rest")
  median=$(sed -n "$(( (count + 1) / 2 ))p" "$work/$name.rest")
  p90=$(sed -n "$(( (count * 9 + 9) / 10 ))p" "$work/$name.rest")
  echo "$name: 202 -> agent start, first delivery (clones the mirror): $(( first / 1000 )) ms"
  echo "$name: 202 -> agent start, next $count deliveries: median $(( median / 1000 )) ms, p90 $(( p90 / 1000 )) ms"
  grep -E "WARN|ERROR" "$work/$name/log" | sort | uniq -c | sort -rn | head -5 >&2 || true
  phases "$name"
}

# phases NAME: where the time goes, from the server's log lines and the agent's own stamp (medians over
# the deliveries after the first, ms): stored (the 202's commit) -> matched -> worktree ready -> agent
# process spawned -> the agent's first instruction inside its box.
phases() {
  local name=$1
  for f in "$work/starts/"*".$name"; do
    i=$(basename "$f" ".$name"); echo "agent bench-$i $(cat "$f")"
  done | cat - "$work/$name/log" | awk '
    function secs(ts) { split(substr(ts, 12, 15), t, ":"); return t[1] * 3600 + t[2] * 60 + t[3] }
    function id(line) { if (match(line, /bench-[0-9]+/)) return substr(line, RSTART, RLENGTH); return "" }
    $1 == "agent" { a[$2] = ($3 / 1e9) % 86400; next }
    /delivery stored/ { s[id($0)] = secs($1) }
    /matched triggers/ { m[id($0)] = secs($1) }
    /worktree ready at/ { r[id($0)] = secs($1) }
    /starting agent/ { g[id($0)] = secs($1) }
    function median(arr,   n, k, v, i, j, t) {
      n = 0; for (k in arr) v[++n] = arr[k]
      for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j > 0 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
      return n ? v[int((n + 1) / 2)] : 0
    }
    END {
      for (k in s) if (k != "bench-1" && (k in m) && (k in r) && (k in g) && (k in a)) {
        p1[k] = (m[k] - s[k]) * 1000; p2[k] = (r[k] - m[k]) * 1000; p3[k] = (g[k] - r[k]) * 1000; p4[k] = (a[k] - g[k]) * 1000
      }
      printf "'"$name"': medians, ms: stored -> matched %.1f, matched -> worktree ready %.1f, ready -> agent spawned %.1f, spawned -> agent running in its box %.1f\n", median(p1), median(p2), median(p3), median(p4)
    }'
}

names=(new)
start new "$bin"
if [ -n "$base" ]; then
  names=(base new)
  start base "$base"
fi
for i in $(seq 1 "$N"); do
  for name in "${names[@]}"; do deliver "$name" "$i"; done
done
for name in "${names[@]}"; do report "$name"; eval "median_$name=$median"; done
if [ -n "$base" ]; then
  # shellcheck disable=SC2154
  echo "median new/base: $(awk -v n="$median_new" -v b="$median_base" 'BEGIN { printf "%.2f", n / b }')"
fi
