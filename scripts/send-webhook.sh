#!/usr/bin/env bash
# Sends a signed GitHub webhook to a running nightshift, the way GitHub would.
#
#   scripts/send-webhook.sh EVENT PAYLOAD.json [URL]
#
# Signs with $NIGHTSHIFT_WEBHOOK_SECRET (HMAC-SHA256, X-Hub-Signature-256) and gives the delivery a fresh
# X-GitHub-Delivery id. With LOCAL_REPO=1 the payload's repository is pointed at a local bare clone of this
# checkout, so the job can run here without reaching GitHub.
set -euo pipefail
event=${1:?usage: send-webhook.sh EVENT PAYLOAD.json [URL]}
payload=${2:?usage: send-webhook.sh EVENT PAYLOAD.json [URL]}
url=${3:-http://127.0.0.1:3000/webhooks/github}
secret=${NIGHTSHIFT_WEBHOOK_SECRET:?set NIGHTSHIFT_WEBHOOK_SECRET to the secret nightshift was started with}
root=$(cd "$(dirname "$0")/.." && pwd)

body=$(mktemp)
trap 'rm -f "$body"' EXIT
if [ "${LOCAL_REPO:-0}" = 1 ]; then
  remote="$root/.nightshift/demo-remote.git"
  if [ ! -d "$remote" ]; then
    git clone --quiet --bare "$root" "$remote"
  fi
  branch=$(git -C "$remote" symbolic-ref --short HEAD)
  jq --arg url "$remote" --arg branch "$branch" \
    '.repository.clone_url = $url | .repository.default_branch = $branch' "$payload" > "$body"
else
  cp "$payload" "$body"
fi

signature="sha256=$(openssl dgst -sha256 -hmac "$secret" -r < "$body" | cut -d' ' -f1)"
delivery=$(cat /proc/sys/kernel/random/uuid)
echo "delivering $event ($delivery) to $url"
curl --silent --show-error --write-out '\nHTTP %{http_code}\n' \
  -H "Content-Type: application/json" \
  -H "X-GitHub-Event: $event" \
  -H "X-GitHub-Delivery: $delivery" \
  -H "X-Hub-Signature-256: $signature" \
  --data-binary "@$body" "$url"
