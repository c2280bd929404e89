#!/usr/bin/env bash
# Measures the spine's two latencies on this machine, with the release binary:
#   1. cold start: from exec to the first successful GET /healthz (fresh data dir, migrations included);
#   2. 202 → agent: from the moment the webhook's 202 is received to the moment the agent process starts
#      (the agent records its own start time), for N sequential deliveries against one local repository.
# Usage: bench/spine-latency.sh [N]    (needs curl, jq, openssl, git; builds the release binary)
set -euo pipefail
N=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin="$root/target/release/nightshift"
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))

git clone --quiet --bare "$root" "$work/remote.git"
branch=$(git -C "$work/remote.git" symbolic-ref --short HEAD)
mkdir -p "$work/triggers" "$work/starts"
cat > "$work/agent.sh" <<AGENT
#!/bin/sh
date +%s%N > "$work/starts/\$NIGHTSHIFT_JOB_ID"
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
cat > "$work/nightshift.yml" <<C
listen: 127.0.0.1:$port
data_dir: $work/data
store: sqlite://$work/data/nightshift.db
triggers: $work/triggers
workers: 4
agents:
  probe: {command: [$work/agent.sh]}
C

t0=$(date +%s%N)
NIGHTSHIFT_WEBHOOK_SECRET=bench RUST_LOG=warn "$bin" --config "$work/nightshift.yml" serve 2>"$work/log" &
pid=$!
until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.001; done
t1=$(date +%s%N)
echo "cold start to ready: $(( (t1 - t0) / 1000000 )) ms"

jq --arg url "$work/remote.git" --arg b "$branch" '.repository.clone_url = $url | .repository.default_branch = $b' \
  "$root/tests/fixtures/webhooks/issues/opened.json" > "$work/payload.json"
sig="sha256=$(openssl dgst -sha256 -hmac bench -r < "$work/payload.json" | cut -d' ' -f1)"
: > "$work/acks"
for i in $(seq 1 "$N"); do
  curl -sf -o /dev/null -H "X-GitHub-Event: issues" -H "X-GitHub-Delivery: bench-$i" \
    -H "X-Hub-Signature-256: $sig" -H "Content-Type: application/json" \
    --data-binary "@$work/payload.json" "http://127.0.0.1:$port/webhooks/github"
  echo "$i $(date +%s%N)" >> "$work/acks"
  waited=0
  while [ ! -s "$work/starts/$i" ]; do
    sleep 0.001
    waited=$((waited + 1))
    if [ $waited -gt 20000 ]; then echo "delivery $i never started its agent:"; tail -5 "$work/log"; exit 1; fi
  done
done
while read -r job ack; do
  echo $(( ($(cat "$work/starts/$job") - ack) / 1000 ))
done < "$work/acks" > "$work/latencies"
first=$(head -1 "$work/latencies")
sort -n <(tail -n +2 "$work/latencies") > "$work/rest"
count=$(wc -l < "$work/rest")
median=$(sed -n "$(( (count + 1) / 2 ))p" "$work/rest")
p90=$(sed -n "$(( (count * 9 + 9) / 10 ))p" "$work/rest")
echo "202 -> agent start, first delivery (clones the mirror): $(( first / 1000 )) ms"
grep -E "WARN|ERROR" "$work/log" | sort | uniq -c | sort -rn | head -5 >&2
echo "202 -> agent start, next $count deliveries (fetch + worktree): median $(( median / 1000 )) ms, p90 $(( p90 / 1000 )) ms"
