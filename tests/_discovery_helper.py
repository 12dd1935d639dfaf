"""A swarm node's discovery, alone in a process, for tests that run it inside a netns host.

Speaks JSON lines on stdout so a test can follow it:

    advertise --node-id ID --name N --port P [--fp HEX] [--proto N]
        {"event": "ready", "service": ..., "addresses": [...]} once announced;
        each stdin line "state busy" re-announces with that state -> {"event": "updated"};
        stdin EOF or Ctrl-C (SIGINT) -> goodbye packets, {"event": "bye"}, exit status 0.
    find --wait S
        one line: the list of records seen after S seconds.
    watch
        {"event": "ready"}, then one {"event": kind, "name": ..., "record": {...}} per change.
    churn --rounds N
        start and cancel N browsers against our own advertisement, then
        {"event": "done", "seen": how many rounds saw it, "threads": live threads}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, cast

import trio

from peer.discovery import Advertiser, advertise, browse, find_peers, open_zeroconf
from swarm.presence import PeerEvent, PeerRecord, State


def emit(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


async def run_advertise(args: argparse.Namespace) -> None:
    record = PeerRecord(
        node_id=args.node_id,
        name=args.name,
        host="",
        port=args.port,
        protocol=args.proto,
        arch="x86_64",
        cpus=4,
        score=123.5,
        state="idle",
        fingerprint=args.fp,
        version="0.1.0",
    )
    async with trio.open_nursery() as nursery:
        advertiser: Advertiser = await nursery.start(advertise, record)
        emit(
            {
                "event": "ready",
                "service": advertiser.service_name,
                "addresses": advertiser.addresses,
            }
        )
        async for line in stdin_lines():
            words = line.split()
            if words[:1] == ["state"] and len(words) == 2:
                record = dataclasses.replace(record, state=cast(State, words[1]))
                await advertiser.update(record)
                emit({"event": "updated"})
        nursery.cancel_scope.cancel()


async def stdin_lines() -> AsyncIterator[str]:
    # An FdStream, not trio.wrap_file: a readline blocked in a worker thread cannot be
    # cancelled, and would keep Ctrl-C from ever reaching advertise().
    buffer = b""
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stream:
        while chunk := await stream.receive_some():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                yield line.decode()


async def run_find(args: argparse.Namespace) -> None:
    records = await find_peers(args.wait)
    emit([dataclasses.asdict(r) for r in records])


async def run_watch(args: argparse.Namespace) -> None:
    send, recv = trio.open_memory_channel[PeerEvent](0)
    async with trio.open_nursery() as nursery:
        await nursery.start(browse, send)
        emit({"event": "ready"})
        async for event in recv:
            record = dataclasses.asdict(event.record)
            emit({"event": event.kind, "name": event.name, "record": record})


async def run_churn(args: argparse.Namespace) -> None:
    """Start and stop browsers while our own announcements are arriving.

    zeroconf calls back from its browser thread whenever it likes; rounds that cancel at
    once, or right after the first event, make callbacks race with the trio side closing.
    """
    record = PeerRecord("c0ffee000000", "churn", "", 8471, 1, "x86_64", 1)
    async with open_zeroconf() as zc, trio.open_nursery() as nursery:
        await nursery.start(partial(advertise, record, zc=zc))
        seen = 0
        for round_ in range(args.rounds):
            send, recv = trio.open_memory_channel[PeerEvent](0)
            async with trio.open_nursery() as inner:
                await inner.start(partial(browse, send, zc=zc))
                if round_ % 2:
                    seen += (await recv.receive()).record.node_id == record.node_id
                inner.cancel_scope.cancel()
            await recv.aclose()
        emit({"event": "done", "seen": seen, "threads": threading.active_count()})
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    adv = sub.add_parser("advertise")
    adv.add_argument("--node-id", required=True)
    adv.add_argument("--name", required=True)
    adv.add_argument("--port", type=int, required=True)
    adv.add_argument("--fp", default="")
    adv.add_argument("--proto", type=int, default=1)
    find = sub.add_parser("find")
    find.add_argument("--wait", type=float, default=2.0)
    sub.add_parser("watch")
    churn = sub.add_parser("churn")
    churn.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    # A node is stopped with Ctrl-C as if started at a terminal. A test run started as a
    # background job of a non-interactive shell inherits SIGINT ignored (bash does that to
    # `cmd &`), and Python then never raises KeyboardInterrupt: the goodbye test failed so.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    command = {
        "advertise": run_advertise,
        "find": run_find,
        "watch": run_watch,
        "churn": run_churn,
    }[args.command]
    try:
        trio.run(command, args)
    except* KeyboardInterrupt:
        pass  # Ctrl-C is how a node is stopped; advertise() has said goodbye by now
    emit({"event": "bye"})


if __name__ == "__main__":
    main()
