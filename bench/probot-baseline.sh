#!/usr/bin/env bash
# Copied from the team's shared bench folder (probot-baseline.sh, issue 11 baseline): Probot 14.3.2 on the same
# payload, signature and wrk settings as bench/ingest.sh. Usage: probot-baseline.sh [seconds]
# Peer baseline: Probot's webhook ingest on this machine, same payload and signature as nightshift's bench.
# The same load against another server on the same payload: after a run with D=DIR set,
#   WPATH=/webhooks/github wrk -t1 -c16 -d15s --latency -s DIR/post.lua http://127.0.0.1:PORT
# (the signature uses the secret "secret"; each request carries a unique X-GitHub-Delivery).
# Usage: probot-baseline.sh [seconds]   (needs npm, wrk, python3; installs probot into $D, a temp dir unless given)
set -euo pipefail
D=${D:-$(mktemp -d)}; SECS=${1:-15}; PORT=${PORT:-3900}
mkdir -p "$D" && cd "$D"
[ -d node_modules/probot ] || npm install --no-audit --no-fund probot@14.3.2 @octokit/webhooks-examples@7.6.1 >/dev/null 2>&1
echo '{"type":"module"}' > package.json
printf 'export default (app) => { let n = 0; app.on("pull_request.opened", async () => { n++; }); };\n' > app.mjs
[ -f key.pem ] || openssl genrsa -out key.pem 2048 2>/dev/null
python3 - <<'PY'
import json
d=json.load(open('node_modules/@octokit/webhooks-examples/api.github.com/index.json'))
ex=[e for e in d if e['name']=='pull_request'][0]['examples']
open('payload.json','w').write(json.dumps([x for x in ex if x.get('action')=='opened'][0]))
PY
SIG=$(python3 -c "import hmac,hashlib;print('sha256='+hmac.new(b'secret',open('payload.json','rb').read(),hashlib.sha256).hexdigest())")
cat > post.lua <<LUA
wrk.method = "POST"
local f = io.open("$D/payload.json", "rb"); wrk.body = f:read("*all"); f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "pull_request"
wrk.headers["X-Hub-Signature-256"] = "$SIG"
counter = 0
request = function()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = string.format("%08x-0000-4000-8000-%012d", math.random(0, 0x7fffffff), counter)
  return wrk.format(nil, os.getenv("WPATH") or "/api/github/webhooks")
end
LUA
APP_ID=1 PRIVATE_KEY="$(cat key.pem)" WEBHOOK_SECRET=secret PORT=$PORT LOG_LEVEL=warn node_modules/.bin/probot run ./app.mjs >probot.log 2>&1 &
PID=$!; trap 'kill $PID 2>/dev/null' EXIT; sleep 4
wrk -t1 -c16 -d${SECS}s --latency -s post.lua http://127.0.0.1:$PORT | grep -E 'Requests/sec|50%|99%'
echo "rss_kb $(ps -o rss= -p $PID)"
