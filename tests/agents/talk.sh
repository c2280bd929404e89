#!/bin/sh
# A command agent that says something on stderr (the job log), waits until $1/go exists (at most 60 s), says
# something more (with a terminal escape in it), and exits with status $2: a job to follow as it runs
# (`nightshift jobs --follow`).
set -eu
gate=$1
echo "started, waiting for go" >&2
i=0
while [ ! -e "$gate/go" ] && [ $i -lt 600 ]; do
  sleep 0.1
  i=$((i + 1))
done
printf 'went on \033[31mred\033[0m\n' >&2
echo "done"
exit "$2"
