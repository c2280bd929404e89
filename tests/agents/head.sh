#!/bin/sh
# A command agent that reports which commit its worktree is at and what README.md says there.
set -eu
cat > /dev/null
echo "HEAD $(git rev-parse HEAD)"
cat README.md
