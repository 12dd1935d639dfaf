"""The goal of several coordinators on one swarm, measured: real `swarm` processes on four
namespace hosts, two of them CPU-limited peers (tests/share_runs.py).

Each of two jobs, sharing both peers with the other job, finishes within 1.3x of the time
it takes with half the swarm (one peer) to itself; both halves run at once, side by side,
so that both measurements see this machine's load alike.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import pytest
from share_runs import NAMES, Blocked, Rig, cpu_groups, make_source
from swarm_hosts import Swarm

from netns import lan, requires_netns

pytestmark = [pytest.mark.netns, pytest.mark.slow, requires_netns]

GOAL = 1.3
SOURCE_S = 12  # 12 one-second chunks per job: a couple of seconds each on one 0.4-CPU peer
BUDGET_S = 300
ARGS = ("-p", "480p", "--chunk-seconds", "1")


def test_two_coordinators_each_finish_within_1_3x_of_half_the_swarm(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src.mp4", SOURCE_S)
    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as stack:
        try:
            procs = stack.enter_context(cpu_groups(f"swarm-share-{os.getpid()}", 2))
        except Blocked as exc:
            pytest.skip(f"no CPU quotas here: {exc}")
        net = stack.enter_context(lan(4, prefix="sh"))
        sw = stack.enter_context(Swarm(net, logs, budget_s=BUDGET_S))
        rig = Rig(net, sw, logs, procs)
        half = rig.half(src, *ARGS)
        shared = rig.shared(src, *ARGS)
    for name in NAMES:
        assert shared.peers(name) == {"p1", "p2"}, name  # both peers worked for both
        ratio = shared.wall(name) / half.wall(name)
        print(f"{name}: half {half.wall(name):.1f} s, shared {shared.wall(name):.1f} s, "
              f"ratio {ratio:.2f}")
        assert ratio <= GOAL, (name, half.wall(name), shared.wall(name))
    assert half.peers("anna") == {"p1"} and half.peers("ben") == {"p2"}
