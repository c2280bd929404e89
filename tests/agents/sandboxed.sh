#!/bin/sh
# A command agent meant to run in the bubblewrap sandbox: it edits the worktree, then tries to write
# outside it ($1) and to reach the network, and reports what happened.
set -eu
cat > /dev/null
echo "edited in the sandbox" >> README.md
git status --porcelain >&2
(echo x > "$1/escaped") 2>/dev/null && echo "wrote outside" || echo "could not write outside"
echo "home=$HOME tmp=$TMPDIR"
