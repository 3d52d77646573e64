"""What ``/proc`` says about a process from outside it: where its descriptors point, which TCP
sockets it can see, and the CPU time of the process tree it heads.

The soak counts the gateway's descriptors by kind with these; the bench charges each server
the CPU its process tree spent.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def open_files(pid: int) -> list[str]:
    """Where each of the process's descriptors points (``socket:[inode]``, a path, ...)."""
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except FileNotFoundError:
            continue  # closed while we looked
    return targets


def tcp_sockets(pid: int) -> dict[str, tuple[int, int, str]]:
    """``socket:[inode]`` -> (local port, remote port, state) for the TCP sockets pid can see."""
    sockets: dict[str, tuple[int, int, str]] = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = (int(a.rpartition(":")[2], 16) for a in fields[1:3])
                sockets[f"socket:[{fields[9]}]"] = (local, remote, fields[3])
    return sockets


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of process ``root`` and its descendants (nginx's worker), from ``/proc``."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # the process ended meanwhile
        # After "pid (comm) ": state, ppid, ... utime and stime are fields 14 and 15 of stat(5).
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid], ticks[pid] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, grown = {root}, True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grown = bool(children)
    return sum(ticks.get(pid, 0) for pid in tree) / _TICKS
