#!/bin/sh
# A command agent that records each start in $1 and then waits until $1/release exists (at most 60 s), so a
# test can stop the service while the job is running.
set -eu
gate=$1
n=$(ls "$gate" | grep -c '^started' || true)
touch "$gate/started-$((n + 1))"
i=0
while [ ! -e "$gate/release" ] && [ $i -lt 600 ]; do
  sleep 0.1
  i=$((i + 1))
done
echo "finished after the release"
