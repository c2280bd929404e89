#!/usr/bin/env bash
# Runs nightshift's whole test suite: unit tests, and integration tests that run the real binary against real
# git repositories, real SQLite, real agent processes and a fake GitHub. Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
missing=()
need git || missing+=(git)
need bwrap || missing+=(bubblewrap)
need npm || missing+=(npm)
need tar || missing+=(tar)
need curl || missing+=(curl)
need pgrep || missing+=(procps)
# The store's tests run against a real Postgres too (src/store/tests.rs starts one per test).
need initdb || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# The browser tests (tests/setup.rs) drive a real headless Chromium through chromedriver.
need chromium || missing+=(chromium)
need chromedriver || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The real agent CLIs (Codex, Claude Code) at the versions tests/agent-clis/package-lock.json pins; npm's
# cache (~/.npm) keeps the download between runs. The tests run them against a scripted model server on
# loopback, never the network.
clis=tests/agent-clis
if ! cmp -s "$clis/package-lock.json" "$clis/node_modules/.installed-lock" 2>/dev/null; then
  echo "installing the agent CLIs (npm ci)"
  npm ci --prefix "$clis" --no-audit --no-fund --loglevel=error
  cp "$clis/package-lock.json" "$clis/node_modules/.installed-lock"
fi

# The benchmarks must build (they run with `cargo bench`); the tests run last, so their summary closes the output.
cargo build --locked --benches
cargo test --locked --lib --bins --tests
