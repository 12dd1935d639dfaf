"""The source over TLS for a peer's ffmpeg, which cannot pin a certificate.

ffmpeg reads the coordinator's source over HTTP, with Range requests and reconnects on
every seek; its https protocol would check a CA, not our pinned fingerprint. So the peer's
own process serves that source on loopback (``Tunnel``): an ephemeral port on 127.0.0.1,
every path under a random token (another local user who finds the port cannot read the
job's source without it), and each request forwarded over the pinned TLS client
(``peer.tls.pinned_context``) to the coordinator, its answer streamed back as it comes.

Only ``GET`` and ``HEAD`` pass, and of the request only the target (below the token) and
its ``Range`` header; of the answer only the status and the headers a ranged file needs.
A request whose answer ffmpeg stops reading (it seeks away) closes its upstream response
at once, so the coordinator stops sending too. Cancelling ``run`` closes the listener and
every connection.
"""

from __future__ import annotations

import logging
import secrets

import h11
import httpx
import trio

__all__ = ["MAX_REQUEST_HEAD", "Tunnel"]

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 8192  # ffmpeg's request head is a few hundred bytes
_RECV = 64 * 1024
_PASSED_BACK = (b"content-length", b"content-range", b"content-type", b"accept-ranges")


class Tunnel:
    """Run with ``await nursery.start(tunnel.run)``; then ffmpeg reads ``tunnel.url(path)``.

    ``client`` reaches the coordinator (a pinned TLS client); ``upstream`` is its base URL.
    """

    def __init__(self, client: httpx.AsyncClient, upstream: str) -> None:
        self.client = client
        self.upstream = upstream.rstrip("/")
        self.token = secrets.token_urlsafe(18)
        self.port = 0
        self.forwarded = 0  # body bytes passed to ffmpeg, for tests and benches

    def url(self, path_with_query: str) -> str:
        """Where ffmpeg reads what the coordinator serves at ``path_with_query``."""
        return f"http://127.0.0.1:{self.port}/{self.token}{path_with_query}"

    async def run(self, *, task_status: trio.TaskStatus[Tunnel] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(self)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        async with stream:
            try:
                while await self._one(stream, conn):
                    conn.start_next_cycle()
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                pass  # ffmpeg closed it (a seek) or spoke nonsense: that connection is done

    async def _next_event(self, stream: trio.SocketStream, conn: h11.Connection) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await stream.receive_some(_RECV))

    async def _reply(self, stream: trio.SocketStream, conn: h11.Connection, status: int,
                     text: str) -> bool:
        body = text.encode() + b"\n"
        head = h11.Response(status_code=status, headers=[
            (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())])
        await stream.send_all(conn.send(head) + conn.send(h11.Data(data=body))
                              + conn.send(h11.EndOfMessage()))
        return False  # and close: nothing of ours needs it kept open

    async def _one(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        """Serve one request; whether the connection can take another."""
        event = await self._next_event(stream, conn)
        if not isinstance(event, h11.Request):
            return False  # closed, or no request at all
        target = event.target.decode("ascii", "replace")
        method = event.method.decode("ascii", "replace")
        prefix = f"/{self.token}/"
        if not secrets.compare_digest(target[:len(prefix)].encode(), prefix.encode()):
            return await self._reply(stream, conn, 404, "no such path")
        if method not in ("GET", "HEAD"):
            return await self._reply(stream, conn, 405, "GET or HEAD only")
        while not isinstance(await self._next_event(stream, conn), h11.EndOfMessage):
            pass  # a GET's body, if any, is not forwarded
        headers = {}
        for name, value in event.headers:
            if name == b"range":
                headers["range"] = value.decode("latin-1")
        path = target[len(prefix) - 1:]
        try:
            async with self.client.stream(method, self.upstream + path, headers=headers
                                          ) as resp:
                passed = [(k.encode(), v.encode()) for k, v in resp.headers.items()
                          if k.encode() in _PASSED_BACK]
                await stream.send_all(conn.send(h11.Response(status_code=resp.status_code,
                                                             headers=passed)))
                if method == "HEAD":
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    return conn.our_state is h11.DONE and conn.their_state is h11.DONE
                async for piece in resp.aiter_raw():
                    self.forwarded += len(piece)
                    await stream.send_all(conn.send(h11.Data(data=piece)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
        except httpx.HTTPError as exc:
            log.info("tunnel: %s %s: %s", method, path.split("?")[0], exc or type(exc).__name__)
            if conn.our_state is h11.SEND_RESPONSE:
                return await self._reply(stream, conn, 502, "the coordinator is unreachable")
            return False  # mid-answer: cut, so ffmpeg sees a short read, not a short file
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE
