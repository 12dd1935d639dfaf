"""The node's web page over real HTTP on 127.0.0.1 (peer.web on a peer.node.Node): the page,
server-sent events, an upload that becomes a job, its download and HLS files, the secret's
sign-in, and every refusal a 4xx with the node still serving."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import trio

from chunker.tools import find_ffmpeg
from media import FFMPEG, media_info
from peer.node import Node, NodeConfig
from peer.options import LocalSettings, NetworkSettings
from peer.web import Web, WebConfig
from screens.web_assets import web_assets
from swarm.board import MAX_JOBS
from swarm.events import JobEnd
from swarm.websession import COOKIE

HLSJS = Path("/var/cache/swarm-ci/hls.js-1.7.4/hls.min.js")
HAVE_HLSJS = HLSJS.is_file()


def _video(path: Path, seconds: int = 4) -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=320x240:rate=25:duration={seconds}", "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={seconds}", "-c:v", "libx264", "-preset",
                    "ultrafast", "-g", "25", "-c:a", "aac", "-shortest", str(path)],
                   check=True, timeout=60)
    return path


async def _serve(nursery: trio.Nursery, tmp: Path, secret: str | None = None,
                 uploads: bool = True, max_upload_bytes: int = 50 * 2**20) -> tuple[str, Web]:
    node = Node(NodeConfig(name="web<node>", port=0, host="127.0.0.1", secret=secret,
                           advertise=False, serve_pyz=False), find_ffmpeg())
    web = Web(WebConfig(web_assets(), secret=secret,
                        uploads=tmp / "up" if uploads else None,
                        max_upload_bytes=max_upload_bytes, hls_root=tmp / "hls",
                        hlsjs=HLSJS if HAVE_HLSJS else None,
                        job_net=NetworkSettings(enabled=False),
                        job_local=LocalSettings(workers=1)), node)
    node.web, node.on_event = web, web.tee(node.on_event)
    await nursery.start(web.run)
    await nursery.start(node.run)
    return f"http://127.0.0.1:{node.port}", web


async def _snapshots(client: httpx.AsyncClient, base: str):  # type: ignore[no-untyped-def]
    async with client.stream("GET", f"{base}/web/events") as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"] == "text/event-stream"
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])


async def test_open_swarm_page_upload_job_download_and_stream(tmp_path: Path) -> None:
    src = _video(tmp_path / "src.mp4")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
            base, web = await _serve(nursery, tmp_path)
            page = await client.get(f"{base}/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert "web&lt;node&gt;" in page.text and "<node>" not in page.text
            assert 'class=" open"' in page.text  # open swarm: the page says so (app.js)
            for asset in ("app.js", "style.css"):
                assert (await client.get(f"{base}/web/{asset}")).status_code == 200
            first = await _snapshots(client, base).__anext__()
            assert first["secret"] is False and first["jobs"] == []
            assert first["devices"][0]["name"] == "web<node>" and first["devices"][0]["here"]
            assert "480p" in first["profiles"] and first["uploads"] is True

            up = await client.post(f"{base}/web/upload",
                                   params={"name": "Holiday ü.mp4", "profile": "480p"},
                                   content=src.read_bytes())
            assert up.status_code == 201, up.text
            job = up.json()["job"]
            maps: list[str] = []
            async for snap in _snapshots(client, base):
                card = next(j for j in snap["jobs"] if j["id"] == job)
                assert card["title"] == "Holiday ü.mp4"
                maps.append(card["chunks"])
                if card["state"] in ("done", "failed"):
                    break
            assert card["state"] == "done", card
            assert card["download"] and card["hls"] and card["hls_ended"]
            # The map was drawn while the job ran: pending or running chunks before all done.
            assert any(m and set(m) != {"d"} for m in maps), maps
            assert maps[-1] == "d" * len(maps[-1])

            result = await client.get(f"{base}/web/jobs/{job}/result")
            assert result.status_code == 200
            assert "attachment" in result.headers["content-disposition"]
            out = tmp_path / "downloaded.mp4"
            out.write_bytes(result.content)
            assert media_info(out).video.frames == media_info(src).video.frames
            assert media_info(out).video.height == 240  # 480p never upscales
            master = await client.get(f"{base}/web/jobs/{job}/hls/master.m3u8")
            assert master.status_code == 200 and master.text.startswith("#EXTM3U")
            assert master.headers["content-type"] == "application/vnd.apple.mpegurl"
            seg = await client.get(f"{base}/web/jobs/{job}/hls/v00000.m4s")
            assert seg.status_code == 200 and len(seg.content) > 1000
            # The upload is spent: only the result stays in the uploads folder.
            assert sorted(p.name for p in (tmp_path / "up").iterdir()) == [f"{job}.480p.mp4"]

            # Once the board drops the job (MAX_JOBS newer ones), its files go with it.
            for n in range(MAX_JOBS):
                web.board.queued(f"other{n:04d}", "x.mp4", "480p", 1e6 + n)
                web.board.job_event(f"other{n:04d}", JobEnd("x", 1.0), 1e6 + n)
            again = await client.post(f"{base}/web/upload",
                                      params={"name": "b.mp4", "profile": "480p"},
                                      content=_video(tmp_path / "b.mp4", 1).read_bytes())
            assert again.status_code == 201, again.text
            assert (await client.get(f"{base}/web/jobs/{job}/result")).status_code == 404
            assert not (tmp_path / "up" / f"{job}.480p.mp4").exists()
            assert not (tmp_path / "hls" / job).exists()
            nursery.cancel_scope.cancel()


async def test_bad_requests_are_refused_and_the_node_serves_on(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
            base, _web = await _serve(nursery, tmp_path, max_upload_bytes=10_000)
            up = f"{base}/web/upload"
            cases = [
                (client.post(up, params={"name": "a.mp4", "profile": "../../etc/x"},
                             content=b"x"), 422),
                (client.post(up, params={"name": "a.mp4", "profile": "/tmp/p.toml"},
                             content=b"x"), 422),
                (client.post(up, params={"name": "a.exe", "profile": "480p"},
                             content=b"x"), 415),
                (client.post(up, params={"name": "a.mp4", "profile": "480p"},
                             content=b"x" * 20_000), 413),
                (client.post(up, params={"name": "a.mp4", "profile": "480p"}, content=b""),
                 400),
                (client.get(up), 405),
                (client.get(f"{base}/web/jobs/0123456789abcdef/result"), 404),
                (client.get(f"{base}/web/jobs/0123456789abcdef/hls/master.m3u8"), 404),
                (client.get(f"{base}/web/jobs/0123456789abcdef/hls/..%2F..%2Fx"), 404),
                (client.get(f"{base}/web/jobs/0123456789abcdef/hls/.c0.mp4"), 404),
                (client.get(f"{base}/web/nothing"), 404),
                (client.post(f"{base}/"), 405),
                (client.post(f"{base}/web/login", content=b"x" * 5000), 413),
            ]
            for request, status in cases:
                r = await request
                assert r.status_code == status, (r.request.url, r.status_code, r.text)

            async def chunked() -> object:
                yield b"x" * 100
            r = await client.post(up, params={"name": "a.mp4", "profile": "480p"},
                                  content=chunked())
            assert r.status_code == 411  # no length, no upload: it must be bounded up front

            # An upload cut off half-way: refused, and no partial file stays behind.
            stream = await trio.open_tcp_stream("127.0.0.1", int(base.rsplit(":", 1)[1]))
            await stream.send_all(b"POST /web/upload?name=a.mp4&profile=480p HTTP/1.1\r\n"
                                  b"host: x\r\ncontent-length: 9000\r\n\r\n" + b"y" * 4000)
            await trio.sleep(0.3)
            assert list((tmp_path / "up").iterdir())  # it was being written ...
            await stream.aclose()
            for _ in range(50):
                if not list((tmp_path / "up").iterdir()):
                    break
                await trio.sleep(0.1)
            assert list((tmp_path / "up").iterdir()) == []  # ... and is gone
            assert (await client.get(f"{base}/")).status_code == 200
            nursery.cancel_scope.cancel()


async def test_a_closed_swarm_shows_only_the_name_until_signed_in(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
            base, web = await _serve(nursery, tmp_path, secret="s3cret")
            web.board.queued("job00001", "private-name.mp4", "480p", 0.0)
            page = await client.get(f"{base}/")
            assert page.status_code == 200 and "locked" in page.text
            assert "web&lt;node&gt;" in page.text and "private-name" not in page.text
            guarded = [client.get(f"{base}/web/events"),
                       client.post(f"{base}/web/upload", params={"name": "a.mp4",
                                                                  "profile": "480p"},
                                   content=b"x"),
                       client.get(f"{base}/web/jobs/job00001/result"),
                       client.get(f"{base}/web/jobs/job00001/hls/master.m3u8"),
                       client.get(f"{base}/web/hls.min.js")]
            for request in guarded:
                r = await request
                assert r.status_code == 401, (r.request.url, r.status_code)
            forged = {"cookie": f"{COOKIE}=4102444800.{'0' * 64}"}
            assert (await client.get(f"{base}/web/events", headers=forged)).status_code == 401
            wrong = await client.post(f"{base}/web/login", data={"secret": "guess"})
            assert wrong.status_code == 403 and "set-cookie" not in wrong.headers
            right = await client.post(f"{base}/web/login", data={"secret": "s3cret"})
            assert right.status_code == 204
            cookie = right.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            # httpx keeps the cookie, as a browser does.
            page = await client.get(f"{base}/")
            assert "locked" not in page.text
            first = await _snapshots(client, base).__anext__()
            assert first["secret"] is True
            assert [j["title"] for j in first["jobs"]] == ["private-name.mp4"]
            nursery.cancel_scope.cancel()


async def test_no_uploads_leaves_the_page_read_only(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
            base, _web = await _serve(nursery, tmp_path, uploads=False)
            r = await client.post(f"{base}/web/upload", params={"name": "a.mp4",
                                                                 "profile": "480p"},
                                  content=b"x")
            assert r.status_code == 403
            first = await _snapshots(client, base).__anext__()
            assert first["uploads"] is False
            nursery.cancel_scope.cancel()


async def test_an_encode_node_serves_the_page_of_its_job(tmp_path: Path) -> None:
    from peer.coordinator import run_encode
    from peer.options import EncodeOptions, JobIntent
    from profiles import load_profile
    from swarm.events import HlsSegment, JobStart, Listening

    src = _video(tmp_path / "src.mp4", seconds=8)
    hls = tmp_path / "hls"
    web = Web(WebConfig(web_assets()))  # no uploads: `swarm encode`'s page shows its job
    listening: list[int] = []
    job_ids: list[str] = []
    heard, segment = trio.Event(), trio.Event()

    def emit(e: object) -> None:
        web.watch(e, str(hls))  # type: ignore[arg-type]
        if isinstance(e, JobStart):
            job_ids.append(e.job_id)
        if isinstance(e, Listening):
            listening.append(e.port)
            heard.set()
        if isinstance(e, HlsSegment):
            segment.set()

    opts = EncodeOptions(JobIntent(str(src), str(tmp_path / "out.mp4"), load_profile("480p"),
                                   hls=str(hls)),
                         LocalSettings(workers=1),
                         NetworkSettings(enabled=True, discover=False, name="encoder",
                                         page=web.attach))
    seen: list[dict[str, object]] = []
    played: list[str] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
            done = trio.Event()

            async def job() -> None:
                await run_encode(opts, emit)
                done.set()

            async def stream() -> None:
                # Asked for once the first segment is out, while the job (and with it the
                # node) still runs: the page's snapshots may come too late for that on a
                # fast machine, as the node ends with the job.
                await segment.wait()
                m = await client.get(f"{base}/web/jobs/{job_ids[0]}/hls/master.m3u8")
                assert m.status_code == 200
                played.append(m.text)
            nursery.start_soon(job)
            await heard.wait()
            base = f"http://127.0.0.1:{listening[0]}"
            nursery.start_soon(stream)
            assert "encoder" in (await client.get(f"{base}/")).text
            try:
                async for snap in _snapshots(client, base):
                    seen.append(snap)
                    card = snap["jobs"][0] if snap["jobs"] else {}  # type: ignore[index]
                    if card.get("state") == "done":
                        break
            except httpx.HTTPError:
                pass  # the job ended and its node with it
            await done.wait()
    here = seen[0]["devices"][0]  # type: ignore[index]
    assert here["name"] == "encoder" and here["here"] and here["state"] == "busy"
    maps = [str(s["jobs"][0]["chunks"]) for s in seen if s["jobs"]]  # type: ignore[index]
    assert any(m and set(m) != {"d"} for m in maps), maps
    assert played and played[0].startswith("#EXTM3U")  # its stream, from the page's route


def test_the_page_calls_paired_what_devices_json_pins(tmp_path: Path) -> None:
    import os

    from peer.identity import Devices, load_identity
    from peer.pairing import PairingService
    from swarm.pairing import Paired
    from swarm.presence import PeerRecord

    folder = tmp_path / "me"
    friend, stranger = "ab" * 16, "cd" * 16
    Devices(folder).add(Paired(friend, "pi-kitchen", os.urandom(32), ""))
    service = PairingService(folder, load_identity(folder), door=False)

    def record(device: str, fp: str = "") -> PeerRecord:
        return PeerRecord(node_id="n" + device[:8], name="x", host="10.0.0.2", port=7800,
                          protocol=5, arch="aarch64", cpus=4, device=device, closed=True,
                          fingerprint=fp)

    node = Node(NodeConfig(pairing=service, closed=True), find_ffmpeg())
    closed = Web(WebConfig(web_assets(), closed=True), node)
    assert closed._paired(record(friend), "")
    assert not closed._paired(record(stranger), "") and not closed._paired(record(""), "")
    # With a secret: its holders too, and pinned devices still.
    ours = "0123456789abcdef"
    node = Node(NodeConfig(pairing=service, secret="s"), find_ffmpeg())
    secret = Web(WebConfig(web_assets(), secret="s"), node)
    assert secret._paired(record(stranger, ours), ours)
    assert not secret._paired(record(stranger, "fedcba9876543210"), ours)
    assert secret._paired(record(friend, "fedcba9876543210"), ours)
