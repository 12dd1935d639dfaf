"""Several coordinators, one swarm: real nodes over HTTP on 127.0.0.1.

Two `swarm encode` coordinators (no local encoding) share the same two peers. Both jobs
progress at once, each peer works for both, a one-slot peer alternates between them, and
the first job's goodbye (DELETE) leaves the other's work alone. The rule itself is tested
in virtual time (test_share.py); the multi-host goal, with timings, in test_swarm_netns.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from chunker.tools import find_ffmpeg
from chunker.verify import check_output
from media import decode_errors, media_info
from peer.coordinator import run_encode
from peer.node import Node, NodeConfig
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings
from profiles import load_profile
from swarm.events import NodeEvent, SlotStart
from swarm.presence import has_room
from swarm.protocol import MAX_JOBS


async def _peer(nursery: trio.Nursery, name: str, starts: list[tuple[float, str]],
                slots: int = 1) -> Node:
    def seen(e: NodeEvent) -> None:
        if isinstance(e, SlotStart):
            starts.append((trio.current_time(), e.job_id))

    node = Node(NodeConfig(name=name, port=0, host="127.0.0.1", secret="k", advertise=False,
                           slots=slots, serve_pyz=False), find_ffmpeg(), on_event=seen)
    await nursery.start(node.run)
    return node


def _opts(src: Path, out: Path, name: str, peers: list[Node], priority: str = "normal"
          ) -> EncodeOptions:
    return EncodeOptions(
        JobIntent(str(src), str(out), load_profile("hd"), chunk_seconds=0.5),
        LocalSettings(no_local=True),
        NetworkSettings(enabled=True, discover=False, name=name, secret="k", priority=priority,
                        peers=tuple(f"127.0.0.1:{p.port}" for p in peers)))


async def test_two_coordinators_share_two_peers(corpus: dict[str, Path],
                                                tmp_path: Path) -> None:
    src = corpus["closed_gop"]  # 4 s: 8 chunks of 0.5 s per job
    starts: dict[str, list[tuple[float, str]]] = {"a": [], "b": []}
    reports: dict[str, dict[str, Any]] = {}
    working_for: dict[str, set[str]] = {"a": set(), "b": set()}
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            peers = [await _peer(nursery, f"peer-{k}", starts[k]) for k in ("a", "b")]

            async def watch() -> None:
                while True:
                    for k, p in zip("ab", peers, strict=True):
                        info = p.info()
                        assert len(info.working_for) <= MAX_JOBS
                        if len(info.working_for) == 2:
                            working_for[k] |= set(info.working_for.values())
                    await trio.sleep(0.05)

            async def job(name: str) -> None:
                reports[name] = await run_encode(
                    _opts(src, tmp_path / f"{name}.mp4", name, peers))

            nursery.start_soon(watch)
            async with trio.open_nursery() as jobs:
                jobs.start_soon(job, "anna")
                jobs.start_soon(job, "ben")
            nursery.cancel_scope.cancel()
    for name in ("anna", "ben"):
        out = tmp_path / f"{name}.mp4"
        check_output(media_info(out), media_info(src))
        assert decode_errors(out) == ""
        # Both peers worked for both coordinators: neither job had the swarm to itself.
        assert {c["peer"] for c in reports[name]["chunks"]} == {"peer-a", "peer-b"}, name
    # Each peer's NodeInfo named both coordinators while it held both jobs.
    assert working_for == {"a": {"anna", "ben"}, "b": {"anna", "ben"}}
    # A one-slot peer alternates: while both jobs had chunks to give, its chunks went to
    # one job and then the other, never a long run of one. Fair is in slot-seconds, not in
    # turns (swarm.share), and a Wait skips a turn: runs of three are common here (turns of
    # 1-2.5 s), and one run of four in about eight runs on an idle machine (anna, anna,
    # then four of ben's, the turn lengths unrecorded); five would be unfair.
    job_of = {r["job_id"]: name for name, r in reports.items()}
    for k in ("a", "b"):
        seq = [job_of[j] for _, j in starts[k]]
        both = min(len([j for j in seq if j == "anna"]), len([j for j in seq if j == "ben"]))
        assert both >= 2, (k, seq)
        head = seq[:2 * both]  # the stretch where both still came up
        longest = max(len(run) for run in _runs(head))
        assert longest <= 4, (k, seq)
    # Both progressed at once: each job's first chunk started before the other's last.
    times: dict[str, list[float]] = {"anna": [], "ben": []}
    for t, j in starts["a"] + starts["b"]:
        times[job_of[j]].append(t)
    assert min(times["anna"]) < max(times["ben"]) and min(times["ben"]) < max(times["anna"])


def _runs(seq: list[str]) -> list[list[str]]:
    out: list[list[str]] = []
    for x in seq:
        if out and out[-1][0] == x:
            out[-1].append(x)
        else:
            out.append([x])
    return out or [[]]


async def test_a_two_slot_peer_holds_chunks_of_both_jobs(corpus: dict[str, Path],
                                                         tmp_path: Path) -> None:
    src = corpus["closed_gop"]
    starts: list[tuple[float, str]] = []
    both_at_once = False
    advertised: list[tuple[int, bool]] = []
    reports: dict[str, dict[str, Any]] = {}
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            peer = await _peer(nursery, "wide", starts, slots=2)

            async def watch() -> None:
                nonlocal both_at_once
                while True:
                    running = [peer.turns.share.running(j) for j in peer.turns.share.jobs]
                    both_at_once |= len([r for r in running if r]) == 2
                    # What its mDNS record says meanwhile: a third coordinator's census
                    # counts it (swarm.presence.has_room).
                    advertised.append((peer.record().jobs, has_room(peer.record())))
                    await trio.sleep(0.02)

            async def job(name: str, priority: str) -> None:
                reports[name] = await run_encode(
                    _opts(src, tmp_path / f"{name}.mp4", name, [peer], priority))

            nursery.start_soon(watch)
            async with trio.open_nursery() as jobs:
                # One priority: a higher one would take both slots while it has chunks.
                jobs.start_soon(job, "one", "normal")
                jobs.start_soon(job, "two", "normal")
            nursery.cancel_scope.cancel()
    assert both_at_once  # one slot on each job at the same moment
    assert (2, True) in advertised and all(room for _, room in advertised)
    for name in reports:
        check_output(media_info(tmp_path / f"{name}.mp4"), media_info(src))
        assert {c["peer"] for c in reports[name]["chunks"]} == {"wide"}
