#!/usr/bin/env python3
"""Where a process's CPU went during a load, per thread, from /proc (no profiler, nothing attached).

  cpu.py snap FILE PID [PGPID]   writes a snapshot to FILE: each thread of PID (name, CPU ticks), PID's own
                                 total (which keeps the time of threads that ended), and, with PGPID (a
                                 Postgres postmaster), the server's total (its live processes and the ones
                                 it reaped)
  cpu.py server PGPID            prints a Postgres server's CPU seconds so far (live and reaped processes)
  cpu.py diff FILE1 FILE2 N      prints the CPU spent between the two snapshots per unit of work (N units:
                                 deliveries stored, jobs claimed), by thread name (digits dropped: match-0
                                 and match-1 are `match-`), the threads that ended in one line, and the
                                 server's.

Used by bench/ingest.sh to say where the CPU goes per request (issue 11): the HTTP handlers (the runtime's
worker threads: the body read, the signature, the event's fields, the payload's compression), the store's
writer thread (the insert and its commit), the dispatcher's matching threads and the store's connections.
"""
import json
import os
import re
import sys

TICK = os.sysconf("SC_CLK_TCK")


def stat(path):
    """(name, utime + stime, cutime + cstime) of /proc/.../stat, or None when the process is gone."""
    try:
        text = open(path).read()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return name, int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def server_ticks(pid):
    """A Postgres server's CPU: the postmaster's own and its reaped children's, and its live children's."""
    own = stat(f"/proc/{pid}/stat")
    if own is None:
        return 0
    total = own[1] + own[2]
    for child in os.listdir("/proc"):
        if not child.isdigit():
            continue
        try:
            ppid = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        if ppid == str(pid):
            s = stat(f"/proc/{child}/stat")
            if s:
                total += s[1]
    return total


def snap(out, pid, pgpid=None):
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        s = stat(f"/proc/{pid}/task/{tid}/stat")
        if s:
            threads[tid] = [s[0], s[1]]
    total = stat(f"/proc/{pid}/stat")[1]
    snapshot = {"threads": threads, "total": total}
    if pgpid:
        snapshot["server"] = server_ticks(pgpid)
    json.dump(snapshot, open(out, "w"))


def diff(before, after, units):
    a, b = json.load(open(before)), json.load(open(after))
    units = max(int(units), 1)
    per = lambda ticks: ticks / TICK / units * 1e6
    groups = {}
    live = 0
    for tid, (name, ticks) in b["threads"].items():
        spent = ticks - a["threads"].get(tid, [name, 0])[1]
        live += spent
        group = re.sub(r"[0-9]+$", "", name)
        groups[group] = groups.get(group, 0) + spent
    total = b["total"] - a["total"]
    parts = [f"{name} {per(t):.0f}" for name, t in sorted(groups.items(), key=lambda g: -g[1]) if t > 0]
    ended = total - live
    if ended > 0:
        parts.append(f"threads that ended {per(ended):.0f}")
    line = f"CPU per unit: {per(total):.0f} us ({', '.join(parts)})"
    if "server" in b and "server" in a:
        line += f"; Postgres server {per(b['server'] - a['server']):.0f} us"
    print(line)


if __name__ == "__main__":
    if sys.argv[1] == "snap":
        snap(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    elif sys.argv[1] == "server":
        print(server_ticks(sys.argv[2]) / TICK)
    elif sys.argv[1] == "diff":
        diff(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
