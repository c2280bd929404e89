#!/bin/sh
# A command agent that records each start in $1 and then waits until $1/release exists (at most 60 s), so a
# test can stop the service, or cancel the job, while it runs. A run that finishes records that too.
set -eu
gate=$1
n=$(ls "$gate" | grep -c '^started' || true)
n=$((n + 1))
touch "$gate/started-$n"
i=0
while [ ! -e "$gate/release" ] && [ $i -lt 600 ]; do
  sleep 0.1
  i=$((i + 1))
done
touch "$gate/finished-$n"
echo "finished after the release"
