#!/bin/sh
# A command agent that answers: its final message (stdout) quotes the prompt it was given on stdin.
set -eu
prompt=$(cat)
echo "reading the issue" >&2
printf 'Agent reply for %s (job %s, event %s.%s):\n%s\n' \
  "$NIGHTSHIFT_REPO" "$NIGHTSHIFT_JOB_ID" "$NIGHTSHIFT_EVENT" "$NIGHTSHIFT_ACTION" "$prompt"
