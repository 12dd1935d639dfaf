"""Moving chunk bytes: the source file out to a peer's ffmpeg, an encoded chunk in.

Only the bytes: which attempt may read or upload is ``peer.jobserver``'s decision, and the
Range arithmetic is ``swarm.ranges.parse_range``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from swarm.ranges import ByteRange, parse_range

from .http import Receive, Send, iter_body, respond

__all__ = ["FIRST_PIECE", "SEND_BUFFER", "SOURCE_PIECE", "UPLOAD_WRITE", "receive_file",
           "send_file", "unlink"]

# Source bytes per read and per body message: a quarter of what the response has sent so
# far, from FIRST_PIECE up to SOURCE_PIECE. A peer's ffmpeg reads a few kB to a MB of most
# requests (the index, the stream probe) before it seeks away, and the piece read beyond
# that is wasted. 1 MB pieces were no cheaper in CPU per GB than 256 kB (bench/transfer).
FIRST_PIECE = 64 * 1024
SOURCE_PIECE = 256 * 1024
# The kernel's send buffer on the node's sockets (Linux doubles it). Left to autotuning it
# grew to megabytes, all gone to waste each time a peer's ffmpeg closes a connection (a 55
# MB job sent 1.28x the file, against 1.05x with this); a LAN needs far less to stay busy:
# at 1 ms round trip, 512 kB is 4 Gbit/s. The cost: more wake-ups per GB (README).
SEND_BUFFER = 256 * 1024
# A result upload is written in batches of this many bytes (or WRITE_BATCH pieces).
UPLOAD_WRITE = 1024 * 1024
WRITE_BATCH = 64


def _ignore(n: int) -> None:
    pass


# Linux 4.14+: read only what the page cache holds, without blocking (else EAGAIN).
_NOWAIT = getattr(os, "RWF_NOWAIT", None)


def _cached(fd: int, n: int, offset: int) -> bytes | None:
    """Up to ``n`` bytes at ``offset`` if the page cache has them, read in the event loop;
    None when the disk would be needed (then a thread reads them, as it must on a Pi's SD
    card). A thread hop per piece was a third of the source GET's CPU (bench/transfer)."""
    if _NOWAIT is None:
        return None
    buf = bytearray(n)
    try:
        got = os.preadv(fd, [buf], offset, _NOWAIT)
    except OSError:
        return None  # not cached, or a file system without RWF_NOWAIT (EOPNOTSUPP)
    if got == 0:
        return None  # the thread's read says whether this is the end
    return bytes(memoryview(buf)[:got])


def _write_all(fd: int, pieces: list[bytes]) -> None:
    views = [memoryview(p) for p in pieces]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def send_file(send: Send, receive: Receive, path: str, size: int,
                    range_header: str | None, head: bool,
                    sent: Callable[[int], None], read: Callable[[int], None] = _ignore,
                    cap: Callable[[int], int | None] | None = None) -> None:
    """Answer with the bytes of ``path`` (``size`` long) that the Range header asks for,
    and stop reading the file the moment the client has gone.

    ``read`` is told every piece's length as it is read from the file, ``sent`` as the
    connection takes it: a piece handed to a connection found closed is not counted. What
    still counts is what the kernel had taken when the client closed (at most its socket
    buffers).

    ``cap`` tells, for a request's first byte, the end (exclusive) of what it may be
    answered with (None: nothing, a 416): a range asking for more gets up to there, as a
    206 whose Content-Range says so, sent chunked (no Content-Length). Why chunked: ffmpeg
    5.1 and 7 hold a plain body to the file's size from Content-Range and fail a shorter
    one ("Stream ends prematurely"), but take a chunked body's last chunk as the file's
    end. ffmpeg 9 asks for the rest in a new request, and takes its refusal as the end.
    The coordinator knows where each chunk's bytes lie (``chunker.mp4index``).

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
    capped = False
    if cap is not None and not head:
        limit = cap(rng.start)
        if limit is None or limit <= rng.start:
            await respond(send, 416, headers=[(b"content-range", f"bytes */{size}".encode())])
            return
        if limit <= rng.end:
            rng, capped = ByteRange(rng.start, limit - 1, partial=True), True
    headers = [(b"content-type", b"application/octet-stream"), (b"accept-ranges", b"bytes")]
    if not capped:  # a cut answer is chunked (above)
        headers.append((b"content-length", str(rng.length).encode()))
    if rng.partial:
        headers.append((b"content-range", rng.content_range(size).encode()))
    await send({"type": "http.response.start", "status": 206 if rng.partial else 200,
                "headers": headers})
    if head:
        await send({"type": "http.response.body", "body": b""})
        return
    gone = False
    # The last piece waits until the watcher has the request's end: a response's end is
    # held until then (``http.end_after_request``), and two tasks waiting on ``receive``
    # at once could leave that one waiting for a disconnect that never comes (a one-piece
    # answer to a capped range hung its ffmpeg).
    request_read = trio.Event()

    async def watch() -> None:
        nonlocal gone
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                gone = True
                request_read.set()
                return
            if not msg.get("more_body", False):
                request_read.set()

    fd = await trio.to_thread.run_sync(os.open, path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            offset, left = rng.start, rng.length
            while left > 0 and not gone:
                piece = min(SOURCE_PIECE, max(FIRST_PIECE, (offset - rng.start) // 4))
                data = _cached(fd, min(piece, left), offset)
                if data is None:
                    data = await trio.to_thread.run_sync(os.pread, fd, min(piece, left),
                                                         offset)
                if not data:
                    break
                read(len(data))
                offset += len(data)
                left -= len(data)
                if left == 0:
                    await request_read.wait()
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
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = await trio.to_thread.run_sync(os.open, path, flags, 0o600)
        try:
            # hypercorn hands the body over in pieces of at most 64 kB, and a thread hop
            # per piece cost more CPU than the writes (bench/transfer): they are written
            # together, once UPLOAD_WRITE bytes have come (or WRITE_BATCH pieces: a client
            # sending tiny pieces must not outgrow writev's IOV_MAX of 1024).
            batch: list[bytes] = []
            batched = 0
            async for piece in iter_body(receive, limit):
                batch.append(piece)
                batched += len(piece)
                if batched >= UPLOAD_WRITE or len(batch) >= WRITE_BATCH:
                    await trio.to_thread.run_sync(_write_all, fd, batch)
                    received(batched)
                    batch, batched = [], 0
            if batch:
                await trio.to_thread.run_sync(_write_all, fd, batch)
                received(batched)
        finally:
            os.close(fd)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(unlink, path)
        raise
