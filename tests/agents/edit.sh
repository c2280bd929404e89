#!/bin/sh
# A command agent that changes the worktree: it appends the prompt's first line to README.md.
set -eu
head -n 1 >> README.md
echo "edited README.md" >&2
echo "Appended the requested line to README.md."
