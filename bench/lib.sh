# Sourced by the bench scripts: what more than one of them does.

# Where initdb really lives (Debian links it into /usr/local/bin, without psql beside it).
PGBIN=$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")")

# pg_start DIR PORT [SETTINGS]: a fresh Postgres server of its own in DIR (data in DIR/data, log in DIR/log),
# on a Unix socket in DIR only, with SETTINGS ("-c name=value ...") added. It runs as the postgres user when
# the script runs as root (RUNAS, for the psql and pg_ctl calls that follow).
pg_start() {
  local dir=$1 port=$2 settings=${3:-}
  mkdir -p "$dir"; RUNAS=()
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; RUNAS=(runuser -u postgres --); fi
  "${RUNAS[@]}" "$PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust --no-instructions >/dev/null
  "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start \
    -o "-c listen_addresses='' -k $dir -p $port $settings" >/dev/null
}

# wait_for PID FILE PATTERN: until FILE has a line matching PATTERN; a process PID that ended first ends the
# bench with FILE's last lines (a server that could not start would be waited for forever).
wait_for() {
  until grep -q "$3" "$2" 2>/dev/null; do
    if ! kill -0 "$1" 2>/dev/null; then echo "the process waited for stopped:"; tail -5 "$2"; exit 1; fi
    sleep 0.01
  done
}
