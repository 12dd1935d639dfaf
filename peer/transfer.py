"""Moving chunk bytes: the source file out to a peer's ffmpeg, an encoded chunk in.

Only the bytes: which attempt may read or upload is ``peer.jobserver``'s decision, and the
Range arithmetic is ``swarm.ranges.parse_range``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from swarm.ranges import parse_range

from .http import Receive, Send, iter_body, respond

__all__ = ["FIRST_PIECE", "SEND_BUFFER", "SOURCE_PIECE", "receive_file", "send_file", "unlink"]

# Source bytes per read and per body message: a quarter of what the response has sent so
# far, from FIRST_PIECE up to SOURCE_PIECE. A peer's ffmpeg reads a few kB to a MB of most
# requests (the index, the stream probe) before it seeks away, and the piece read beyond
# that is wasted; a chunk's long read goes in large pieces, which is what the CPU per GB
# depends on (bench/transfer).
FIRST_PIECE = 64 * 1024
# The kernel's send buffer on the node's sockets (Linux doubles it). Left to autotuning it
# grew to 4 MB, all of it gone to waste each time a peer's ffmpeg closes a connection; a
# LAN needs far less to stay busy: at 1 ms round trip, 512 kB is 4 Gbit/s.
SEND_BUFFER = 256 * 1024
SOURCE_PIECE = 1024 * 1024


def _ignore(n: int) -> None:
    pass


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def send_file(send: Send, receive: Receive, path: str, size: int,
                    range_header: str | None, head: bool,
                    sent: Callable[[int], None], read: Callable[[int], None] = _ignore
                    ) -> None:
    """Answer with the bytes of ``path`` (``size`` long) that the Range header asks for,
    and stop reading the file the moment the client has gone.

    ``read`` is told every piece's length as it is read from the file, ``sent`` as the
    connection takes it: a piece handed to a connection found closed is not counted. What
    still counts is what the kernel had taken when the client closed (at most its socket
    buffers).

    Why the watch: a peer's ffmpeg opens the source without a Range and reads only the
    index, then seeks (a new request) and closes after its chunk's last frame. hypercorn
    drops the pieces sent after a connection has closed without a word to the sender, and
    says so only as an ``http.disconnect`` on ``receive``: unwatched, every request read
    the file to its end (issue 14 measured 32x the file per job).
    """
    rng = parse_range(range_header, size)
    if rng is None:
        await respond(send, 416, headers=[(b"content-range", f"bytes */{size}".encode())])
        return
    headers = [(b"content-type", b"application/octet-stream"),
               (b"content-length", str(rng.length).encode()), (b"accept-ranges", b"bytes")]
    if rng.partial:
        headers.append((b"content-range", rng.content_range(size).encode()))
    await send({"type": "http.response.start", "status": 206 if rng.partial else 200,
                "headers": headers})
    if head:
        await send({"type": "http.response.body", "body": b""})
        return
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True

    fd = await trio.to_thread.run_sync(os.open, path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            offset, left = rng.start, rng.length
            while left > 0 and not gone:
                piece = min(SOURCE_PIECE, max(FIRST_PIECE, (offset - rng.start) // 4))
                data = await trio.to_thread.run_sync(os.pread, fd, min(piece, left), offset)
                if not data:
                    break
                read(len(data))
                offset += len(data)
                left -= len(data)
                await send({"type": "http.response.body", "body": data, "more_body": left > 0})
                # A send into a closed connection returns as if it went out; the watcher
                # learns of it from the same step. Two checkpoints let it run whichever
                # order trio picks, so that piece is not counted. The last piece is counted
                # all the same: a response that ended is told http.disconnect too.
                await trio.lowlevel.checkpoint()
                await trio.lowlevel.checkpoint()
                if not gone or left == 0:
                    sent(len(data))
            nursery.cancel_scope.cancel()
    finally:
        os.close(fd)
    if left > 0 and not gone:
        await send({"type": "http.response.body", "body": b""})


async def receive_file(receive: Receive, path: str, limit: int,
                       received: Callable[[int], None] = _ignore) -> None:
    """Stream a request body of at most ``limit`` bytes into ``path``, in one pass;
    ``received`` is told each piece's length once it is written. On any failure (a body
    cut off or too long, cancellation) the partial file is removed."""
    try:
        async with await trio.open_file(path, "wb") as fh:
            async for piece in iter_body(receive, limit):
                await fh.write(piece)
                received(len(piece))
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(unlink, path)
        raise
