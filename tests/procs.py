"""What a test sees of a process's children: which exist, and whether one is still running."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["alive", "children", "ffmpeg_children"]


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(x) for x in out.split()]


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def ffmpeg_children() -> list[int]:
    """This process's children that run an ffmpeg (by their program's path)."""
    me = str(os.getpid())
    found = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, IndexError):
            continue
        if ppid == me and b"ffmpeg" in argv0:
            found.append(int(proc.name))
    return found
