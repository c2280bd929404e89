#!/bin/sh
# A command agent for verification stories. $1 = fixes: its first run writes a wrong answer, and given the
# verify step's failure (in its follow-up prompt) it writes the right one. $1 = never: always wrong.
set -eu
prompt=$(cat)
case "$1:$prompt" in
  fixes:*"expected 42, got 41"*)
    echo 42 > answer.txt
    echo "Fixed the answer after the failing check." ;;
  *)
    echo 41 > answer.txt
    echo "Wrote the answer." ;;
esac
