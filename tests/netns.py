"""Simulated LAN hosts built from Linux network namespaces, for multi-host tests.

`lan(n)` makes n "hosts" (namespaces) plugged into one bridge, which lives in a namespace of
its own so the root namespace is never touched. Each host has a veth `eth0` with address
10.77.0.(10+i)/24, loopback up, and a 224.0.0.0/4 route through eth0, as a real host has
(without a default route, multicast sends would fail with ENETUNREACH). The bridge has
multicast snooping off: with snooping on, it drops mDNS until it has seen IGMP joins.

    with lan(2) as net:
        a, b = net.hosts
        b.run(["ip", "-4", "addr"])                  # blocking, with a timeout
        proc = a.popen(["python", "-c", "..."])      # killed at teardown if still running
        trio.run_process(a.argv([...]))              # or any runner, via argv()

A host's link can be held to a real speed, both ways, with `tc` (tbf on each end of its veth:
the host's eth0 sends, the bridge's port delivers to it), as a switch port of that speed does:

        net.shape(b, FAST_ETHERNET)                  # a Pi 3: 100 Mbit/s up and down
        net.shape(b, None)                           # back to the veth's GB/s
        tcp_rate(a, b, 10_000_000)                   # measured raw TCP bytes/s, a -> b

Names carry the pid and a counter, so parallel runs and nested LANs never collide.
Teardown (also on failure or Ctrl-C) kills every process left in the namespaces and deletes
the namespaces; the veths and the bridge die with them. Needs root and iproute2:
`netns_unavailable_reason()` says why not, `requires_netns` skips with that reason.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "FAST_ETHERNET",
    "GIGABIT",
    "WIFI_PHONE",
    "Host",
    "Lan",
    "lan",
    "netns_unavailable_reason",
    "requires_netns",
    "skip_unless_netns",
    "tcp_rate",
]

SUBNET = "10.77.0"
PREFIX_LEN = 24
FIRST_HOST = 10
# 10.77.0.10 .. 10.77.0.254: the addresses we allow ourselves on the test LAN.
MAX_HOSTS = 245
# `ip` itself is quick; a namespace creation stuck longer than this means something is wrong.
IP_TIMEOUT_S = 10.0
# After SIGKILL, how long to wait for the kernel to reap processes before deleting namespaces.
KILL_WAIT_S = 2.0

_lan_counter = itertools.count()

# Link speeds (bits/s) of the devices swarm runs on: a wired PC, a Raspberry Pi 3 (Fast
# Ethernet), a phone on Wi-Fi (what one gets in practice, not the radio's nominal rate).
GIGABIT = 1_000_000_000
FAST_ETHERNET = 100_000_000
WIFI_PHONE = 20_000_000
# tbf's bucket: 4 ms of the rate (the kernel's timer granularity at HZ=250, so the bucket
# refills between ticks without starving), at least a few full-size frames. Its queue holds
# 50 ms of the rate: enough for TCP to keep the link busy, not a second of bufferbloat.
SHAPE_BUCKET_S = 0.004
SHAPE_MIN_BURST = 16 * 1024
SHAPE_LATENCY_MS = 50


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=IP_TIMEOUT_S)


@functools.cache
def netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None; probes once by creating a namespace."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (run as root or skip -m 'not netns')"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` command"
    probe = f"swprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return f"cannot create a network namespace: {detail.decode(errors='replace').strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=IP_TIMEOUT_S)
    return None


def skip_unless_netns() -> None:
    """Skip the calling test, saying why, where namespace hosts cannot be built."""
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


# For `pytestmark`: probes when the test module is imported (about 10 ms, once per process).
requires_netns = pytest.mark.skipif(
    netns_unavailable_reason() is not None, reason=netns_unavailable_reason() or ""
)


@dataclass
class Host:
    """One simulated machine: a network namespace with one LAN card."""

    name: str  # the namespace name
    address: str  # its IPv4 address on the LAN
    port: str = ""  # its veth's far end, a port of the bridge
    _children: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """`cmd` as run inside this host (for trio.run_process and friends)."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(
        self, cmd: Sequence[str], *, timeout: float = 30.0, check: bool = True, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion inside the host, capturing text output."""
        kwargs.setdefault("capture_output", True)
        return subprocess.run(self.argv(cmd), timeout=timeout, check=check, text=True, **kwargs)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start inside the host; the LAN's teardown kills and reaps it if it still runs."""
        proc = subprocess.Popen(self.argv(cmd), **kwargs)
        self._children.append(proc)
        return proc

    def pids(self) -> list[int]:
        """Every process currently inside this host's namespace, whoever started it."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.name],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT_S,
        )
        return [int(p) for p in out.stdout.split()]


@dataclass
class Lan:
    hosts: list[Host]
    bridge_namespace: str

    @property
    def namespaces(self) -> list[str]:
        return [self.bridge_namespace, *(h.name for h in self.hosts)]

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def shape(self, host: Host, rate_bit: int | None) -> None:
        """Hold ``host``'s link to ``rate_bit`` bits/s in each direction (None: unshaped).

        Egress is what tc shapes, so both ends of the veth get a tbf: the host's eth0 (what
        it sends) and its bridge port (what it receives). Traffic between two shaped hosts
        goes at the slower one's rate, and every download from a host shares its uplink.
        """
        for namespace, dev in ((host.name, "eth0"), (self.bridge_namespace, host.port)):
            if rate_bit is None:
                subprocess.run(["tc", "-n", namespace, "qdisc", "del", "dev", dev, "root"],
                               capture_output=True, timeout=IP_TIMEOUT_S)  # none: fine
                continue
            if rate_bit <= 0:
                raise ValueError(f"rate must be positive, not {rate_bit}")
            burst = max(SHAPE_MIN_BURST, round(rate_bit / 8 * SHAPE_BUCKET_S))
            subprocess.run(["tc", "-n", namespace, "qdisc", "replace", "dev", dev, "root",
                            "tbf", "rate", f"{rate_bit}bit", "burst", str(burst),
                            "latency", f"{SHAPE_LATENCY_MS}ms"],
                           check=True, capture_output=True, timeout=IP_TIMEOUT_S)


@contextmanager
def lan(n_hosts: int, prefix: str = "sw") -> Iterator[Lan]:
    """Build n hosts on one bridge; tear everything down on exit, whatever happened."""
    if not 1 <= n_hosts <= MAX_HOSTS:
        raise ValueError(f"n_hosts must be 1..{MAX_HOSTS}, not {n_hosts}")
    _sweep_orphans()
    tag = f"{prefix}{os.getpid()}-{next(_lan_counter)}"
    net = Lan(hosts=[], bridge_namespace=f"{tag}-lan")
    # Recorded before creation, so an interruption mid-way still cleans up; deleting a
    # namespace that was never made is a harmless error.
    created: list[str] = []
    try:
        created.append(net.bridge_namespace)
        _ip("netns", "add", net.bridge_namespace)
        bridge = ("-n", net.bridge_namespace, "link")
        _ip(*bridge, "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip(*bridge, "set", "br0", "up")
        for i in range(n_hosts):
            host = Host(name=f"{tag}-h{i}", address=f"{SUBNET}.{FIRST_HOST + i}",
                        port=f"v{i}")
            created.append(host.name)
            _ip("netns", "add", host.name)
            net.hosts.append(host)
            # Made inside the bridge namespace and its far end moved straight into the host:
            # no interface ever appears in the root namespace.
            _ip("-n", net.bridge_namespace, "link", "add", host.port, "type", "veth",
                "peer", "name", "eth0", "netns", host.name)  # fmt: skip
            _ip("-n", net.bridge_namespace, "link", "set", host.port, "master", "br0", "up")
            _ip("-n", host.name, "link", "set", "lo", "up")
            _ip("-n", host.name, "addr", "add", f"{host.address}/{PREFIX_LEN}", "dev", "eth0")
            _ip("-n", host.name, "link", "set", "eth0", "up")
            _ip("-n", host.name, "route", "add", "224.0.0.0/4", "dev", "eth0")
        yield net
    finally:
        _teardown(net, created)


def _sweep_orphans() -> None:
    """Remove the namespaces of test processes that died without their ``finally`` (a
    SIGKILLed pytest): the pid in each name says whose they were."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=IP_TIMEOUT_S).stdout
    for name in (line.split()[0] for line in out.splitlines() if line.strip()):
        m = re.fullmatch(r"[a-z]+(\d+)-\d+-(lan|h\d+)", name)  # any test's prefix
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _kill_inside(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True,
                           timeout=IP_TIMEOUT_S)


def _teardown(net: Lan, namespaces: list[str]) -> None:
    # Kill first: a namespace with live processes would outlive `ip netns del` (it only
    # unmounts the name) and keep its veth, and so the bridge, alive.
    for host in net.hosts:
        for proc in host._children:
            with suppress(ProcessLookupError):
                proc.kill()
    for name in namespaces:
        _kill_inside(name)
    for host in net.hosts:
        for proc in host._children:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_WAIT_S)
    for name in reversed(namespaces):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=IP_TIMEOUT_S)


def _kill_inside(namespace: str) -> None:
    deadline = time.monotonic() + KILL_WAIT_S
    while True:
        out = subprocess.run(
            ["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=IP_TIMEOUT_S
        )
        pids = [int(p) for p in out.stdout.split() if int(p) != os.getpid()]
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


# Receives one connection on TCP_PORT and prints the bytes it got and the seconds from its
# first byte to the sender's close: the transfer's rate, without connection set-up.
_SINK = """
import socket, sys, time
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
conn, _ = srv.accept()
first = conn.recv(1 << 20)
t0, got = time.monotonic(), 0
while data := conn.recv(1 << 20):
    got += len(data)
print(got, time.monotonic() - t0, flush=True)
"""
_SOURCE = """
import socket, sys
piece, left = bytes(1 << 18), int(sys.argv[3])
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60) as s:
    while left > 0:
        s.sendall(piece[:min(left, len(piece))])
        left -= len(piece)
"""
TCP_PORT = 7799


def tcp_rate(sender: Host, receiver: Host, nbytes: int, timeout: float = 60.0) -> float:
    """Bytes/s of one raw TCP transfer of ``nbytes`` from ``sender`` to ``receiver``,
    timed by the receiver from its first piece (so not counting the first 1 MiB at most)."""
    sink = receiver.popen([sys.executable, "-c", _SINK, str(TCP_PORT)],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        if sink.stdout.readline().strip() != "listening":
            raise RuntimeError("the TCP sink did not start")
        sender.run([sys.executable, "-c", _SOURCE, receiver.address, str(TCP_PORT),
                    str(nbytes)], timeout=timeout)
        out, _ = sink.communicate(timeout=timeout)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    got, seconds = out.split()
    return int(got) / float(seconds)
