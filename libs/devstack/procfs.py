"""What /proc tells about processes (Linux): children, liveness, CPU time and memory, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name, from the state on (field 3 of proc(5))."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The running children of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    with contextlib.suppress(OSError, IndexError):
        return _stat(pid)[0] != "Z"
    return False


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process and of its children still running."""
    total = 0.0
    for each in [pid, *children(pid)]:
        with contextlib.suppress(OSError, IndexError):
            fields = _stat(each)
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and of its children still running."""
    total = 0
    for each in [pid, *children(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total
