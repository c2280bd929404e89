#!/bin/sh
# A stand-in agent for trying nightshift without a model: it reads the prompt, looks at the worktree, and
# answers with what it was asked and what it saw. Replace it with a real agent profile in nightshift.yml.
set -eu
prompt=$(cat)
echo "demo agent: job $NIGHTSHIFT_JOB_ID for $NIGHTSHIFT_REPO ($NIGHTSHIFT_EVENT.$NIGHTSHIFT_ACTION)" >&2
printf 'I was asked:\n\n%s\n\n' "$prompt" | sed 's/^/> /; s/^> $/>/'
printf 'The repository at %s has %s tracked files.\n' \
  "$(git rev-parse --short HEAD)" "$(git ls-files | wc -l | tr -d ' ')"
