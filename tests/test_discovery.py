"""Discovery between real hosts: network namespaces on one bridge, mDNS over real multicast.

Each node runs tests/_discovery_helper.py in its own namespace, so nothing but the simulated
LAN connects them: no configured peer address, no DNS, no default route.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from netns import Host, lan, requires_netns
from swarm.presence import PeerRecord, classify

pytestmark = [pytest.mark.netns, requires_netns]

REPO = Path(__file__).resolve().parent.parent
HELPER = str(Path(__file__).with_name("_discovery_helper.py"))
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
OUR_FP = "00112233445566778899aabbccddeeff"
OTHER_FP = "ffeeddccbbaa99887766554433221100"
PROTOCOL = 1
# Registration is ~1.7 s of RFC 6762 probing and announcing, plus interpreter start-up.
STEP_TIMEOUT_S = 10
TEST_TIMEOUT_S = 25


@dataclass
class Node:
    """A helper process inside a host, read as JSON lines."""

    process: trio.Process
    buffer: bytes = field(default=b"")

    async def next_json(self) -> Any:
        assert self.process.stdout is not None
        with trio.fail_after(STEP_TIMEOUT_S):
            while b"\n" not in self.buffer:
                chunk = await self.process.stdout.receive_some()
                assert chunk, f"helper exited early with status {await self.process.wait()}"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    async def send_line(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")


async def start(nursery: trio.Nursery, host: Host, *args: str) -> Node:
    # run_process under nursery.start kills the helper if the test is cancelled or fails.
    process = await nursery.start(
        partial(
            trio.run_process,
            host.argv([sys.executable, HELPER, *args]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            check=False,
            env=ENV,
            cwd=REPO,
        )
    )
    return Node(process)


def advertise_args(node_id: str, name: str, fp: str, proto: int = PROTOCOL) -> list[str]:
    identity = ["--node-id", node_id, "--name", name, "--port", "8471"]
    return ["advertise", *identity, "--fp", fp, "--proto", str(proto)]


async def find(host: Host, wait_s: float) -> list[PeerRecord]:
    result = await trio.run_process(
        host.argv([sys.executable, HELPER, "find", "--wait", str(wait_s)]),
        capture_stdout=True,
        env=ENV,
        cwd=REPO,
    )
    first_line = result.stdout.decode().splitlines()[0]
    return [PeerRecord(**r) for r in json.loads(first_line)]


def test_lan_is_torn_down_even_when_the_test_fails() -> None:
    with pytest.raises(RuntimeError), lan(2) as net:
        names = net.namespaces
        route = net[1].run(["ip", "-4", "route"]).stdout
        assert "224.0.0.0/4 dev eth0" in route and "default" not in route
        assert net[1].run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.count("10.77.0.11/24")
        net[0].popen(["sleep", "60"])
        raise RuntimeError("boom")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not set(names) & {line.split()[0] for line in listed.splitlines() if line}


async def test_find_peers_sees_advertised_record_over_multicast_only() -> None:
    with lan(2) as net, trio.fail_after(TEST_TIMEOUT_S):
        a, b = net.hosts
        async with trio.open_nursery() as nursery:
            node = await start(nursery, a, *advertise_args("a1b2c3d4e5f6", "alpha", OUR_FP))
            ready = await node.next_json()
            assert ready["event"] == "ready" and ready["addresses"] == [a.address]

            records = await find(b, wait_s=2.0)
            nursery.cancel_scope.cancel()

    # Exactly A: the simulated LAN is isolated from the machine running the tests.
    assert records == [
        PeerRecord(
            node_id="a1b2c3d4e5f6",
            name="alpha",
            host=a.address,
            port=8471,
            protocol=PROTOCOL,
            arch="x86_64",
            cpus=4,
            score=123.5,
            state="idle",
            fingerprint=OUR_FP,
            version="0.1.0",
        )
    ]


async def test_browser_sees_update_and_goodbye_on_ctrl_c() -> None:
    with lan(2) as net, trio.fail_after(TEST_TIMEOUT_S):
        a, b = net.hosts
        async with trio.open_nursery() as nursery:
            watcher = await start(nursery, b, "watch")
            assert (await watcher.next_json())["event"] == "ready"
            node = await start(nursery, a, *advertise_args("feedc0ffee00", "alpha", OUR_FP))
            assert (await node.next_json())["event"] == "ready"

            added = await watcher.next_json()
            assert added["event"] == "added"
            assert added["record"]["node_id"] == "feedc0ffee00"
            assert added["record"]["host"] == a.address
            assert added["record"]["state"] == "idle"

            await node.send_line("state busy")
            assert (await node.next_json())["event"] == "updated"
            updated = await watcher.next_json()
            assert (updated["event"], updated["name"]) == ("updated", added["name"])
            assert updated["record"]["state"] == "busy"

            # Ctrl-C: the node must say goodbye; without it B would keep A for the records'
            # TTL (75 minutes), far beyond this test's timeout.
            node.process.send_signal(signal.SIGINT)
            assert (await node.next_json())["event"] == "bye"
            with trio.fail_after(STEP_TIMEOUT_S):
                assert await node.process.wait() == 0
            removed = await watcher.next_json()
            assert (removed["event"], removed["name"]) == ("removed", added["name"])
            assert removed["record"]["state"] == "busy"
            nursery.cancel_scope.cancel()


async def test_foreign_nodes_are_seen_and_classified() -> None:
    with lan(4) as net, trio.fail_after(TEST_TIMEOUT_S):
        ours, other_swarm, old_protocol, looker = net.hosts
        async with trio.open_nursery() as nursery:
            nodes = [
                # All three named "box": the instance names must still not collide.
                await start(nursery, ours, *advertise_args("0a0a0a0a0a0a", "box", OUR_FP)),
                await start(nursery, other_swarm, *advertise_args("0b0b0b0b0b0b", "box", OTHER_FP)),
                await start(
                    nursery, old_protocol, *advertise_args("0c0c0c0c0c0c", "box", OUR_FP, proto=2)
                ),
            ]
            for node in nodes:
                ready = await node.next_json()
                assert ready["event"] == "ready"
                assert "-2." not in ready["service"]  # no rename after a name clash
            records = await find(looker, wait_s=2.0)
            nursery.cancel_scope.cancel()

    verdicts = {(r.node_id, r.host): classify(r, OUR_FP, PROTOCOL) for r in records}
    assert verdicts == {
        ("0a0a0a0a0a0a", ours.address): "ok",
        ("0b0b0b0b0b0b", other_swarm.address): "foreign-secret",
        ("0c0c0c0c0c0c", old_protocol.address): "foreign-protocol",
    }


async def test_browsers_stopping_mid_callback_neither_crash_nor_hang() -> None:
    rounds = 20
    with lan(1) as net, trio.fail_after(TEST_TIMEOUT_S):
        result = await trio.run_process(
            net[0].argv([sys.executable, HELPER, "churn", "--rounds", str(rounds)]),
            capture_stdout=True,
            capture_stderr=True,
            env=ENV,
            cwd=REPO,
        )
    done = json.loads(result.stdout.decode().splitlines()[0])
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr
    assert done["seen"] == rounds // 2  # every round that waited saw our own record
    # Each round's browser thread was joined: a leak would leave one per round.
    assert done["threads"] < rounds // 2
