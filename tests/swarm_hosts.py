"""Real `swarm` processes on simulated LAN hosts (tests/netns.py), for end-to-end tests.

    with lan(3) as net, Swarm(net, tmp_path, budget_s=60) as sw:
        a = sw.join(net[1], "alpha")              # `swarm join --no-bench --name alpha`
        a.wait_for("ready on port")               # advertised on mDNS by then
        enc = sw.encode(net[0], src, out, "--name", "coord", "--report", str(report))
        assert enc.wait() == 0

Every process is the real CLI (`python -c "import cli; cli.main()"`), started inside its host
with `ip netns exec`, its stderr and stdout going to files under the test's directory so
nothing can block on a full pipe and a failing test can show what each one said. All waits
are bounded by one absolute deadline per `Swarm` (`budget_s`); on exit, even after a
failure, every process still running is SIGKILLed and reaped (the LAN's teardown then kills
whatever they left in the namespaces).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from netns import Host, Lan

__all__ = ["Deadline", "Swarm", "SwarmProcess", "ffmpeg_pids", "processes"]

REPO = Path(__file__).resolve().parent.parent
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
# How often waits look again: fine enough to catch a chunk of a few hundred milliseconds.
POLL_S = 0.05
# A process asked to stop (SIGINT) that is not gone after this is reported as hung.
STOP_TIMEOUT_S = 15.0
T = TypeVar("T")


class Deadline:
    """One absolute time limit for a whole test; every wait takes what is left of it."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.end = time.monotonic() + budget_s

    def left(self, cap: float | None = None) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"test budget of {self.budget_s:.0f} s used up")
        return left if cap is None else min(left, cap)

    def until(self, what: str, check: Callable[[], T | None], cap: float | None = None) -> T:
        """Poll ``check`` until it returns something truthy; TimeoutError naming ``what``."""
        limit = time.monotonic() + self.left(cap)
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() >= limit:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(POLL_S)


@dataclass
class SwarmProcess:
    """One `swarm` command running inside a host."""

    host: Host
    label: str
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    stdout_path: Path
    deadline: Deadline

    @property
    def pid(self) -> int:
        return self.proc.pid  # `ip netns exec` execs the command: this is python itself

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, text: str, cap: float | None = None) -> None:
        """Until ``text`` is in stderr; fails at once if the process ends without it."""

        def seen() -> bool:
            if text in self.stderr():
                return True
            if not self.running():
                raise AssertionError(
                    f"{self.label} exited ({self.proc.returncode}) before saying {text!r}:\n"
                    f"{self.stderr()[-3000:]}")
            return False

        self.deadline.until(f"{self.label} to say {text!r}", seen, cap)

    def wait(self, cap: float | None = None) -> int:
        try:
            return self.proc.wait(timeout=self.deadline.left(cap))
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.label} still running:\n{self.stderr()[-3000:]}") from None

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        """Ctrl-C, as a user leaves; returns the exit status."""
        self.send_signal(signal.SIGINT)
        return self.wait(STOP_TIMEOUT_S)

    def children(self) -> list[tuple[int, list[str]]]:
        """Direct children (pid, argv) of this process that run an ffmpeg: its encoders
        (not, for a join, the Python child that builds its swarm.pyz)."""
        return [(pid, argv) for pid, argv in processes(self.host)
                if _ppid(pid) == self.pid and argv and "ffmpeg" in Path(argv[0]).name]


@dataclass
class Swarm:
    """Starts `swarm` commands in a LAN's hosts and kills them all on exit."""

    net: Lan
    folder: Path
    budget_s: float
    started: list[SwarmProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.deadline = Deadline(self.budget_s)

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for p in self.started:
            if p.running():
                p.proc.kill()
        for p in self.started:
            try:
                p.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass  # the LAN teardown kills everything left in the namespace
        if kind is not None:
            # What each process said is the first thing one needs to see a failure.
            for p in self.started:
                sys.stderr.write(f"--- {p.label} (exit {p.proc.returncode}) stderr ---\n"
                                 f"{p.stderr()[-4000:]}\n")

    def start(self, host: Host, label: str, args: Sequence[str],
              env: dict[str, str] | None = None, cgroup: Path | None = None) -> SwarmProcess:
        """``cgroup``: the ``cgroup.procs`` file of a CPU quota to run under."""
        n = len(self.started)
        err = self.folder / f"{n:02d}-{label}.stderr"
        out = self.folder / f"{n:02d}-{label}.stdout"
        full_env = _env() | (env or {})
        with open(err, "wb") as e, open(out, "wb") as o:
            kw: dict[str, Any] = dict(stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                      env=full_env, cwd=str(self.folder))
            if cgroup is None:
                proc = host.popen([*SWARM, *args], **kw)
            else:
                # Into the cgroup before `ip netns exec`, which remounts /sys and hides
                # /sys/fs/cgroup; each program execs the next, so the pid is still python's.
                proc = subprocess.Popen(["sh", "-c", 'echo $$ > "$1" && shift && exec "$@"',
                                         "sh", str(cgroup), *host.argv([*SWARM, *args])], **kw)
                host._children.append(proc)  # the LAN's teardown reaps it like the others
        sp = SwarmProcess(host, label, proc, err, out, self.deadline)
        self.started.append(sp)
        return sp

    def join(self, host: Host, name: str, *args: str, env: dict[str, str] | None = None,
             cgroup: Path | None = None, closed: bool = False) -> SwarmProcess:
        """`swarm join` without the benchmark (many seconds), named for the report; open
        (--open) unless it has a secret or the test wants it closed (then give each host
        its own SWARM_CONFIG_DIR: an identity is a device)."""
        return self.start(host, f"join-{name}",
                          ["join", "--no-bench", "--name", name, *_access(args, closed), *args],
                          env, cgroup)

    def encode(self, host: Host, src: Path, out: Path, *args: str,
               env: dict[str, str] | None = None, closed: bool = False) -> SwarmProcess:
        """`swarm encode`, open as ``join`` is unless given a secret or ``closed``."""
        return self.start(host, "encode", ["encode", str(src), "-o", str(out),
                                           *_access(args, closed), *args], env)

    def run(self, host: Host, *args: str, cap: float = 30.0) -> subprocess.CompletedProcess[str]:
        """A short command to completion (e.g. `peers`), bounded by the test's deadline."""
        return host.run([*SWARM, *args], timeout=self.deadline.left(cap), check=False,
                        env=_env(), cwd=str(self.folder))


def _access(args: Sequence[str], closed: bool) -> list[str]:
    """``--open``, for the tests of everything but the closed default (tests/test_closed)."""
    return [] if closed or "--secret" in args or "--open" in args else ["--open"]


def _env() -> dict[str, str]:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    env.pop("SWARM_SECRET", None)  # secrets are given per test, on the command line
    return env


def processes(host: Host) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every process in the host's namespace (gone ones are skipped)."""
    found = []
    for pid in host.pids():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if argv:
            found.append((pid, argv))
    return found


def ffmpeg_pids(host: Host) -> list[int]:
    """ffmpeg processes running in the host (the bundled binary is named ffmpeg-linux-...)."""
    return [pid for pid, argv in processes(host)
            if os.path.basename(argv[0]).startswith("ffmpeg")]


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])
