"""The source of a prefetched chunk, fetched ahead into a file while the slot still encodes.

A slot that holds a queued chunk (``Assignment.prefetch_bytes`` set) starts a copy of that
chunk's source at once: ffmpeg reads the coordinator's URL from the chunk's seek point and
copies the video packets, unchanged, into a NUT file in the slot's work directory
(``chunker.commands.copy_source_argv``). So the transfer overlaps the encode before it.
When the chunk starts, its encoder reads that file through a pipe (``feed``), following it
as the copy goes on: the copy never has to be complete, and nothing waits for it.

Bounds: before the chunk starts the copy stops (its output is simply not read, so its
download stalls) once the file holds ``prefetch_bytes``: all of the chunk where the
coordinator serves its source capped to the chunk (an MP4 it can index), else its estimate
of the chunk's share. A copy held there for ``stall_s`` (a lease) is given up, before the
coordinator's kernel cuts the stalled connection, which the copy would take for the
source's end; the chunk then streams from the source. After the start, the copy runs at
most ``AHEAD_BYTES`` ahead of what the encoder has read (past the budget), so it reads
little past the chunk's end before the encoder is done and the copy is killed.
``close`` kills the copy and removes the file; the slot calls it as soon as the chunk is
done, refused, stolen or the job ends.
"""

from __future__ import annotations

import logging
import math
import os
import shutil

import trio

from chunker.commands import copy_source_argv
from swarm.errors import EncodeError
from swarm.protocol import Assignment

from .proc import run_ffmpeg
from .transfer import unlink

__all__ = ["AHEAD_BYTES", "PREFETCH_DIR_PREFIX", "Prefetch", "sweep_stale_dirs"]

log = logging.getLogger(__name__)

# How far the copy may run ahead of a started encoder: a few pipe reads, so the encoder
# never waits on the network for data that was ready, and little is read past the chunk.
AHEAD_BYTES = 1 << 20
# Pieces the encoder's stdin is fed in.
FEED_PIECE = 256 * 1024
# A slot's directory is named PREFIX<pid>-<job>-<slot>-<random>: a node SIGKILLed mid-job
# cannot remove its own, so the next one to prefetch removes those of dead processes.
PREFETCH_DIR_PREFIX = "swarm-prefetch-"


def sweep_stale_dirs(parent: str) -> None:
    """Remove the prefetch directories in ``parent`` whose process is gone."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFETCH_DIR_PREFIX):
            continue
        pid = name[len(PREFETCH_DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


class Prefetch:
    """One queued chunk's source, copied ahead. ``run`` in a nursery; ``close`` when done."""

    def __init__(self, a: Assignment, ffmpeg: str, source_url: str, workdir: str, *,
                 recv_buffer: int | None = None, stall_s: float | None = None) -> None:
        assert a.seek_s is not None and a.prefetch_bytes is not None
        self.assignment = a
        self.budget = a.prefetch_bytes
        # How long the copy may wait at its budget. The coordinator's kernel cuts a
        # download held still for two leases (peer.node's TCP_USER_TIMEOUT), and the copy's
        # ffmpeg would take that cut for the source's end: before then the copy is given up
        # (``error``), and the chunk streams from the source when it starts.
        self.stall_s = a.lease_s if stall_s is None else stall_s
        # The attempt id is the coordinator's token (validated: [A-Za-z0-9_-]), safe in a name.
        self.path = os.path.join(workdir, f"prefetch_{a.attempt}.nut")
        self._argv = copy_source_argv(ffmpeg, source_url, a.seek_s,
                                      recv_buffer=recv_buffer)
        self.written = 0
        self.fed = 0
        self.error: str | None = None
        self.started = trio.Event()  # the encode reads: the budget no longer applies
        self.ended = trio.Event()  # the copy is over (finished, failed or cancelled)
        self._scope = trio.CancelScope()
        self._wake = trio.Event()  # set at every write, and when the copy ends
        self._room = trio.Event()  # set whenever the encoder has read more

    def _allowed(self) -> int:
        return max(self.budget, self.fed + AHEAD_BYTES) if self.started.is_set() else self.budget

    def _poke(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    def _make_room(self) -> None:
        # A fresh event each time: a copy waiting for room must block until the next read,
        # not spin on an event that is already set.
        self._room.set()
        self._room = trio.Event()

    async def run(self) -> None:
        """Copy until the source ends, the copy fails or ``close`` cancels it."""
        with self._scope:
            try:
                async with await trio.open_file(self.path, "wb", buffering=0) as fh:

                    async def sink(data: bytes) -> None:
                        while self.written + len(data) > self._allowed() and self.written:
                            room = self._room
                            # The copy stalls, and so does its download. Only the wait
                            # for the chunk's start is bounded: after it the encoder sets
                            # the pace, which a slow device's keeps below a piece a lease.
                            bound = math.inf if self.started.is_set() else self.stall_s
                            with trio.move_on_after(bound) as held:
                                await room.wait()
                            if held.cancelled_caught:
                                self.error = (f"held at its budget for {self.stall_s:g} s; "
                                              "given up before the coordinator cuts it")
                                log.info("chunk %d: prefetch %s", self.assignment.chunk,
                                         self.error)
                                self._scope.cancel()
                                await trio.lowlevel.checkpoint()
                        await fh.write(data)
                        self.written += len(data)
                        self._poke()

                    await run_ffmpeg(self._argv, stdout_sink=sink,
                                     what=f"prefetch of chunk {self.assignment.chunk}")
            except EncodeError as exc:
                self.error = str(exc)
                log.info("chunk %d: %s", self.assignment.chunk, exc)
            except OSError as exc:  # the work directory is full or gone
                self.error = f"prefetch file: {exc.strerror}"
            finally:
                self.ended.set()
                self._poke()

    async def feed(self, stdin: trio.abc.SendStream) -> None:
        """Give the encoder the copy from its start, then whatever arrives, until it ends.

        Raises EncodeError if the copy failed: the encoder must not see a cut-off source as
        the source's end (a short chunk)."""
        self.started.set()
        self._make_room()
        async with await trio.open_file(self.path, "rb", buffering=0) as fh:
            while True:
                wake, over = self._wake, self.ended.is_set()
                data = await fh.read(FEED_PIECE)
                if data:
                    await stdin.send_all(data)
                    self.fed += len(data)
                    self._make_room()
                    continue
                if over:
                    if self.error is not None:
                        raise EncodeError(f"chunk {self.assignment.chunk}: {self.error}")
                    return
                await wake.wait()

    async def close(self) -> None:
        """Stop the copy now (its ffmpeg is killed and reaped) and remove its file."""
        self._scope.cancel()
        with trio.CancelScope(shield=True):
            await self.ended.wait()
            await trio.to_thread.run_sync(unlink, self.path)
