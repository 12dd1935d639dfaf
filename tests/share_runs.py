"""Two coordinators and two CPU-limited peers in network namespaces, measured side by side.

Used by tests/test_sharing_netns.py (the goal) and bench/share (the figures). Four hosts of
one LAN (tests/netns.py): two `swarm encode --no-local` coordinators and two `swarm join`
peers, each peer held to a CPU quota by the cgroup cpu controller (bench/hetero's
``CpuGroups``), so that the encoders are the bottleneck and the load of this shared
machine matters less.

    half     coordinator A with peer 1 only, and at the same time B with peer 2 only: each
             job has half the swarm to itself (both run at once, so both see the same load)
    shared   A and B at once, each naming both peers: the peers share their slots
    ratio    wall(shared) / wall(half), per job: the goal is <= 1.3

With ``priority`` ("high" or "low"), A's job asks for that priority in the shared run.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

from swarm_hosts import Swarm, SwarmProcess

from media import FFMPEG
from netns import Lan

REPO = Path(__file__).resolve().parent.parent
PORT = 7800
FPS = 25
# Each peer's CPU: small enough that the encoders, not this 2-core shared machine's other
# work, bind; large enough that a 1 s chunk of 480p takes about a second.
PEER_CPUS = 0.4
NAMES = ("anna", "ben")


def _load_hetero() -> ModuleType:
    """bench/hetero (a script, no .py): its cgroup quotas, as bench/lan loads them."""
    path = str(REPO / "bench" / "hetero")
    spec = importlib.util.spec_from_loader("bench_hetero", SourceFileLoader("bench_hetero",
                                                                             path))
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


Blocked: type[Exception] = _load_hetero().Blocked  # no root, namespaces or cpu controller


def make_source(path: Path, seconds: int) -> Path:
    subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate={FPS}:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
         "-c:v", "libx264", "-preset", "veryfast", "-g", str(FPS), "-bf", "2",
         "-c:a", "aac", "-shortest", str(path)],
        check=True, timeout=120)
    return path


@dataclass
class Pair:
    """One run of both jobs: each one's report (wall_s, chunks and their peers)."""

    reports: dict[str, dict[str, Any]]

    def wall(self, name: str) -> float:
        return float(self.reports[name]["wall_s"])

    def peers(self, name: str) -> set[str]:
        return {c["peer"] for c in self.reports[name]["chunks"]}


@contextmanager
def cpu_groups(tag: str, n: int, cpus: float = PEER_CPUS) -> Iterator[list[Path]]:
    """``n`` cgroups of ``cpus`` each; their ``cgroup.procs`` files. Removed on exit."""
    hetero = _load_hetero()
    groups = hetero.CpuGroups(tag)
    try:
        yield [groups.make(f"peer{i}", cpus, True) for i in range(n)]
    finally:
        groups.remove()


class Rig:
    """The four hosts: ``net[0]``, ``net[1]`` coordinate; ``net[2]``, ``net[3]`` join."""

    def __init__(self, net: Lan, sw: Swarm, folder: Path, procs: list[Path]) -> None:
        self.net, self.sw, self.folder = net, sw, folder
        self.joins: list[SwarmProcess] = []
        for i, procs_file in enumerate(procs):
            j = sw.join(net[2 + i], f"p{i + 1}", "--port", str(PORT),
                        cgroup=procs_file)
            self.joins.append(j)
        for j in self.joins:
            j.wait_for("ready on port", cap=60)
        self.runs = 0

    def _peer(self, i: int) -> str:
        return f"{self.net[2 + i].address}:{PORT}"

    def run(self, src: Path, peers: dict[str, list[int]], priority: dict[str, str],
            *args: str) -> Pair:
        """Both coordinators at once, each naming ``peers[name]``; waits for both."""
        self.runs += 1
        started: dict[str, tuple[SwarmProcess, Path]] = {}
        for k, name in enumerate(NAMES):
            report = self.folder / f"{self.runs:02d}-{name}.json"
            out = self.folder / f"{self.runs:02d}-{name}.mp4"
            who = [a for i in peers[name] for a in ("--peer", self._peer(i))]
            proc = self.sw.encode(self.net[k], src, out, "--name", name, "--no-local",
                                  "--no-mdns", *who, "--report", str(report),
                                  "--priority", priority.get(name, "normal"), "--quiet",
                                  *args)
            started[name] = (proc, report)
        reports: dict[str, dict[str, Any]] = {}
        for name, (proc, report) in started.items():
            rc = proc.wait()
            assert rc == 0, f"{name}: exit {rc}\n{proc.stderr()[-3000:]}"
            reports[name] = json.loads(report.read_text())
            (self.folder / f"{self.runs:02d}-{name}.mp4").unlink()
        return Pair(reports)

    def half(self, src: Path, *args: str) -> Pair:
        return self.run(src, {"anna": [0], "ben": [1]}, {}, *args)

    def shared(self, src: Path, *args: str, priority: dict[str, str] | None = None) -> Pair:
        return self.run(src, {"anna": [0, 1], "ben": [0, 1]}, priority or {}, *args)
