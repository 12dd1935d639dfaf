"""`swarm slideshow`: the frame plan (plain tests), chunked renders against a single one
(real ffmpeg, frame checksums), and the command as a real process over images made here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chunker.slides import plan_slides, slide_argv, slide_runs
from media import FFMPEG, decode_errors, media_info
from profiles import load_profile

SWARM = [sys.executable, "-c", "import cli; cli.main()"]
REPO = Path(__file__).resolve().parent.parent
PROFILE = load_profile("480p")


def swarm(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([*SWARM, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _image(path: Path, size: str, pattern: str = "testsrc2") -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", f"{pattern}=size={size}",
                    "-frames:v", "1", "-y", str(path)], check=True, timeout=30)
    return path


@pytest.fixture(scope="module")
def album(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images of different sizes and shapes (landscape, portrait, square, tiny), as JPEG
    and PNG, and three that cannot be shown."""
    root = tmp_path_factory.mktemp("album")
    specs = [("01.jpg", "640x360", "testsrc2"), ("02.png", "240x480", "smptebars"),
             ("03.jpg", "300x300", "rgbtestsrc"), ("04.png", "96x54", "testsrc"),
             ("05.jpg", "800x450", "smptehdbars"), ("06.png", "360x640", "testsrc2")]
    for name, size, pattern in specs:
        _image(root / name, size, pattern)
    (root / "07-empty.jpg").write_bytes(b"")
    (root / "08-text.png").write_text("not an image\n")
    good = (root / "05.jpg").read_bytes()
    (root / "09-truncated.jpg").write_bytes(good[: len(good) // 4])
    (root / "notes.txt").write_text("not taken: not an image by its name\n")
    return root


def _good(album: Path) -> list[str]:
    return [str(album / f"0{i}.{'jpg' if i % 2 else 'png'}") for i in range(1, 7)]


# -- the plan ----------------------------------------------------------------------------------
def test_each_image_lasts_exactly_its_frames_and_the_fade_fits_inside() -> None:
    plan = plan_slides(["a", "b", "c"], 1.2, 0.4, PROFILE)
    assert (plan.per_image, plan.fade, plan.frames) == (30, 10, 90)
    assert plan.duration_s == pytest.approx(3.6)
    assert (plan.width, plan.height) == (PROFILE.video.width, PROFILE.video.height)
    with pytest.raises(ValueError, match="needs more than"):
        plan_slides(["a"], 0.5, 0.5, PROFILE)
    with pytest.raises(ValueError, match="no images"):
        plan_slides([], 1.0, 0.0, PROFILE)


@pytest.mark.parametrize(("images", "slots"), [(1, 4), (7, 1), (60, 2), (160, 16), (5, 8)])
def test_chunks_are_runs_of_whole_images_covering_the_show(images: int, slots: int) -> None:
    runs = slide_runs(images, slots)
    assert [f for f, _ in runs] == [sum(c for _, c in runs[:i]) for i in range(len(runs))]
    assert sum(c for _, c in runs) == images and all(c > 0 for _, c in runs)
    assert len(runs) <= max(1, 3 * slots)
    assert max(c for _, c in runs) - min(c for _, c in runs) <= max(1, images // len(runs))


def test_a_chunk_reads_its_own_images_and_only_the_next_ones_first() -> None:
    from chunker.slides import slide_graph

    plan = plan_slides([f"/i/{n}.jpg" for n in range(6)], 1.0, 0.4, PROFILE)
    assert slide_graph(plan, 2, 2)[0] == ["/i/2.jpg", "/i/3.jpg", "/i/4.jpg"]
    assert slide_graph(plan, 4, 2)[0] == ["/i/4.jpg", "/i/5.jpg"]  # the last: no next one
    cuts = plan_slides([f"/i/{n}.jpg" for n in range(6)], 1.0, 0.0, PROFILE)
    assert slide_graph(cuts, 2, 2)[0] == ["/i/2.jpg", "/i/3.jpg"]  # no fade, no neighbour


def test_a_spot_check_renders_each_sample_from_its_own_image_on() -> None:
    """Rendering the chunk up to its last sample cost 45 % of its render and encode (the
    fades' per-pixel blends); each sample is rendered from a run of its own instead."""
    from chunker.spotcheck import slide_check_argv
    from chunker.tools import FFmpeg

    plan = plan_slides([f"/i/{n}.jpg" for n in range(12)], 1.0, 0.4, PROFILE)
    ff = FFmpeg("ffmpeg", "5.1", frozenset(), frozenset())
    argv = slide_check_argv(ff, "/c.nut", plan, 2, 8, [30, 125, 174])  # 25 frames an image
    inputs = [argv[i + 1] for i, x in enumerate(argv) if x == "-i"]
    # Chunk frames 29-31 lie in image 3 (which fades into 4); 124-126 are the end of image 6
    # fading into 7 and the start of 7 (which fades into 8); 173-175 the end of image 8 and
    # the start of 9 (into 10). Nothing before a sample's image is read or rendered.
    assert inputs == ["/i/3.jpg", "/i/4.jpg", "/i/6.jpg", "/i/7.jpg", "/i/8.jpg",
                      "/i/8.jpg", "/i/9.jpg", "/i/10.jpg", "/c.nut"]


# -- chunked renders against one ---------------------------------------------------------------
def _checksums(path: Path) -> list[str]:
    return [line.rsplit(",", 1)[1].strip() for line in path.read_text().splitlines()
            if not line.startswith("#")]


@pytest.mark.parametrize("slots", [1, 2])
def test_fades_across_chunk_boundaries_come_out_as_in_a_single_render(
        album: Path, tmp_path: Path, slots: int) -> None:
    plan = plan_slides(_good(album), 0.8, 0.32, PROFILE)  # 20 frames, 8 of them fading
    whole = tmp_path / "whole.md5"
    subprocess.run(slide_argv(FFMPEG, plan, 0, len(plan.images), PROFILE, str(whole),
                              raw=True), check=True, timeout=120)
    runs = slide_runs(len(plan.images), slots)
    assert len(runs) > 1  # fades cross chunk boundaries
    chunked: list[str] = []
    for i, (first, count) in enumerate(runs):
        out = tmp_path / f"c{i}.md5"
        subprocess.run(slide_argv(FFMPEG, plan, first, count, PROFILE, str(out), raw=True),
                       check=True, timeout=120)
        chunked += _checksums(out)
    single = _checksums(whole)
    assert len(single) == plan.frames == len(chunked)
    assert chunked == single
    # The fades are really there: every fade frame differs from both its images' stills.
    for k in range(len(plan.images) - 1):
        end = (k + 1) * plan.per_image
        fading = single[end - plan.fade:end]
        assert len(set(fading)) == plan.fade
        assert single[end - plan.fade - 1] not in fading and single[end] not in fading


# -- the content check of a peer's chunk -------------------------------------------------------
# How a lying peer alters its render (the render's argv, as built for it): a box over 1/64 of
# the picture, or each frame swapped with its neighbour (frame count kept), on the graph's
# output; or another run's images shown instead (test below).
BOX = "drawbox=x=iw*3/16:y=ih*3/16:w=iw/8:h=ih/8:color=red:t=fill"
SHIFT = "shuffleframes=1 0,tpad=stop=1:stop_mode=clone"


def _lying(argv: list[str], how: str) -> list[str]:
    i = argv.index("-filter_complex") + 1
    extra = {"box": BOX, "shift": SHIFT}[how]
    graph, tail = argv[i].rsplit("[v]", 1)
    assert tail == ""
    return [*argv[:i], f"{graph},{extra}[v]", *argv[i + 1:]]


def _slide_verdict(chunk: Path, plan: Any, first: int, count: int, ks: list[int]
                   ) -> str | None:
    from chunker.spotcheck import parse_compared, slide_check_argv
    from chunker.tools import find_ffmpeg
    from swarm.spotcheck import verdict

    out = subprocess.run(slide_check_argv(find_ffmpeg(), str(chunk), plan, first, count, ks),
                         check=True, capture_output=True, text=True, timeout=120).stdout
    compared = parse_compared(out, 0, ks, count * plan.per_image)
    return verdict(ks, [(c.own, c.others, c.changes) for c in compared])


def test_a_slideshow_chunk_is_checked_against_our_own_render(album: Path,
                                                             tmp_path: Path) -> None:
    plan = plan_slides(_good(album), 0.8, 0.32, PROFILE)  # 20 frames, 8 of them fading
    first, count = 2, 2
    ks = [0, 13, 15, 39]  # a still, two frames of the fade, the fade into the next run
    chunk = tmp_path / "c.nut"
    subprocess.run(slide_argv(FFMPEG, plan, first, count, PROFILE, str(chunk)), check=True,
                   timeout=120)
    assert _slide_verdict(chunk, plan, first, count, ks) is None
    # The same file held against another run: caught.
    assert _slide_verdict(chunk, plan, first + 1, count, ks) is not None
    for how in ("box", "shift"):
        wrong = tmp_path / f"{how}.nut"
        subprocess.run(_lying(slide_argv(FFMPEG, plan, first, count, PROFILE, str(wrong)),
                              how), check=True, timeout=120)
        # Box: every frame. Shift: a fading frame (a still swapped with the same still
        # is the same picture, and passes).
        for k in ((0, 15, 39) if how == "box" else (13, 15)):
            assert _slide_verdict(wrong, plan, first, count, [k]) is not None, (how, k)


async def test_a_peer_rendering_other_pictures_is_benched_and_its_chunks_redone(
        album: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trio

    import peer.worker
    from chunker.tools import find_ffmpeg
    from peer.node import Node, NodeConfig
    from peer.options import NetworkSettings
    from peer.slideshow import SlideshowOptions, run_slideshow
    from swarm.events import ChunkFailed, PeerBenched

    # The liar's encoder is the real ffmpeg under another name (a symlink), so that the
    # wrapped argv builder tells its calls from the honest node's in this one process.
    ff = find_ffmpeg()
    liar = tmp_path / "liar-ffmpeg"
    liar.symlink_to(ff.path)
    real: Callable[..., list[str]] = peer.worker.render_argv

    def tampered(ffmpeg: str, *args: Any, **kwargs: Any) -> list[str]:
        argv = real(ffmpeg, *args, **kwargs)
        return _lying(argv, "box") if ffmpeg == str(liar) else argv

    monkeypatch.setattr(peer.worker, "render_argv", tampered)
    events: list[Any] = []
    images = tuple(_good(album))
    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            peers = []
            for name, binary in (("honest", ff), ("liar", replace(ff, path=str(liar)))):
                node = Node(NodeConfig(name=name, port=0, host="127.0.0.1", secret="k",
                                       advertise=False), binary)
                await nursery.start(node.run)
                peers.append(f"127.0.0.1:{node.port}")
            opts = SlideshowOptions(
                images, str(tmp_path / "show.mp4"), PROFILE, 0.8, 0.32, no_local=True,
                net=NetworkSettings(enabled=True, discover=False, name="coord", secret="k",
                                    peers=tuple(peers)))
            report = await run_slideshow(opts, events.append)
            nursery.cancel_scope.cancel()
    benched = {e.peer: e.reason for e in events if isinstance(e, PeerBenched)}
    assert list(benched) == ["liar"] and "content check" in benched["liar"], events
    failed = [e for e in events if isinstance(e, ChunkFailed) and e.peer == "liar"]
    assert failed and all("content check" in e.reason for e in failed), failed
    assert {c["peer"] for c in report["rendered"]} == {"honest"}
    assert len(_decoded(tmp_path / "show.mp4")) == len(images) * 20
    assert decode_errors(tmp_path / "show.mp4") == ""


# -- the command -------------------------------------------------------------------------------
def _music(path: Path, seconds: float) -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i",
                    f"sine=frequency=330:duration={seconds}", "-c:a", "aac", "-y", str(path)],
                   check=True, timeout=30)
    return path


@pytest.mark.parametrize("music_s", [2.0, 20.0], ids=["music-short", "music-long"])
def test_a_slideshow_of_a_folder_with_bad_images_and_music(album: Path, tmp_path: Path,
                                                           music_s: float) -> None:
    music = _music(tmp_path / "music.m4a", music_s)
    res = swarm("slideshow", str(album), "-o", "show.mp4", "--seconds-per-image", "0.6",
                "--fade", "0.2", "--audio", str(music), "-p", "480p", "-w", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for bad, why in (("07-empty.jpg", "empty file"), ("08-text.png", ""),
                     ("09-truncated.jpg", "")):
        assert f"swarm: skipped image {album / bad} ({why}" in res.stderr, res.stderr
    assert "notes.txt" not in res.stderr
    out = tmp_path / "show.mp4"
    info = media_info(out)
    assert info.video.frames == 6 * 15
    assert (info.video.width, info.video.height) == (PROFILE.video.width,
                                                     PROFILE.video.height)
    assert decode_errors(out) == ""
    assert info.audio is not None
    assert info.audio.end_s - info.video.start_s == pytest.approx(3.6, abs=0.05)
    assert sorted(os.listdir(tmp_path)) == ["music.m4a", "show.mp4"]  # no work directory


def test_images_keep_their_aspect_and_are_padded_black(album: Path, tmp_path: Path) -> None:
    res = swarm("slideshow", str(album / "02.png"), "-o", "tall.mp4", "--seconds-per-image",
                "0.2", "--fade", "0", "-p", "480p", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    w, h = PROFILE.video.width, PROFILE.video.height
    gray = subprocess.run([FFMPEG, "-v", "error", "-i", str(tmp_path / "tall.mp4"),
                           "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                          capture_output=True, check=True).stdout
    assert len(gray) == w * h
    # A 1:2 portrait image in the 480p box is 240 wide: black bars of (w - 240) / 2 each.
    bar = (w - h // 2) // 2

    def column(x: int) -> float:
        return sum(gray[y * w + x] for y in range(h)) / h

    assert column(4) < 24 and column(w - 5) < 24  # limited-range black is 16
    assert column(bar + 20) > 40 and column(w // 2) > 40


def test_refusing_bad_images_names_them_all_and_writes_nothing(album: Path,
                                                               tmp_path: Path) -> None:
    res = swarm("slideshow", str(album), "-o", "show.mp4", "--bad-images", "refuse",
                cwd=tmp_path)
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("swarm: error: 3 bad image(s): ")
    for bad in ("07-empty.jpg", "08-text.png", "09-truncated.jpg"):
        assert str(album / bad) in line
    assert os.listdir(tmp_path) == []


def test_slideshow_usage_errors(album: Path, tmp_path: Path) -> None:
    cases = [
        (["slideshow", str(album / "nothing-*.jpg"), "-o", "s.mp4"], "no such file"),
        (["slideshow", str(album), "-o", "s.avi"], "use .mp4"),
        (["slideshow", str(album), "-o", "s.mp4", "--seconds-per-image", "1", "--fade", "1"],
         "needs more than"),
        (["slideshow", str(album), "-o", "s.mp4", "--audio", "none.m4a"], "no such file"),
        (["slideshow", str(album), "-o", "s.mp4", "--audio", str(album / "01.jpg")],
         "--audio"),
    ]
    for args, text in cases:
        res = swarm(*args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stderr)
        assert text in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    assert os.listdir(tmp_path) == []


def test_json_lines(album: Path, tmp_path: Path) -> None:
    res = swarm("slideshow", str(album / "01.jpg"), str(album / "03.jpg"), "-o", "s.mp4",
                "--seconds-per-image", "0.4", "--fade", "0.2", "--json", "-p", "480p",
                cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert lines[-1]["event"] == "slideshow_end" and lines[-1]["frames"] == 20
    assert {"chunk_start", "chunk_done"} <= {x["event"] for x in lines}


# -- on peers, over real HTTP ------------------------------------------------------------------
# A quality-targeted profile: x264 at a CRF decodes to the same frames whatever its thread
# count (a bitrate target does not), so a peer's chunks and ours can be compared exactly.
CRF_PROFILE = """description = "test: 480p CRF"
[video]
codec = "libx264"
width = 480
height = 270
profile = "high"
level = "4.0"
preset = "veryfast"
crf = 23
[audio]
codec = "aac"
bitrate_k = 128
sample_rate = 44100
channels = 2
"""


def _bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _decoded(path: Path) -> list[str]:
    out = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-map", "0:v", "-f",
                          "framemd5", "-"], capture_output=True, text=True, check=True).stdout
    return [line.rsplit(",", 1)[1].strip() for line in out.splitlines()
            if not line.startswith("#")]


async def test_peers_render_only_their_runs_and_the_show_is_the_same_frames(
        album: Path, tmp_path: Path) -> None:
    import trio

    from chunker.tools import find_ffmpeg
    from peer.node import Node, NodeConfig
    from peer.options import NetworkSettings
    from peer.slideshow import SlideshowOptions, run_slideshow

    (tmp_path / "crf.toml").write_text(CRF_PROFILE)
    profile = load_profile(str(tmp_path / "crf.toml"))
    images = tuple(_good(album))
    spi, fade = 0.8, 0.32  # 20 frames, 8 of them fading into the next image
    # One slot here, one peer there: the same runs (three of two images), and the same
    # encoder threads (a node shares its cores among its slots as we do).
    local = SlideshowOptions(images, str(tmp_path / "local.mp4"), profile, spi, fade,
                             workers=1)
    with trio.fail_after(240):
        ours = await run_slideshow(local)
        async with trio.open_nursery() as nursery:
            peers = []
            for name in ("peer-a",):
                node = Node(NodeConfig(name=name, port=0, host="127.0.0.1", secret="k",
                                       advertise=False), find_ffmpeg())
                await nursery.start(node.run)
                peers.append(f"127.0.0.1:{node.port}")
            remote = SlideshowOptions(
                images, str(tmp_path / "peers.mp4"), profile, spi, fade, no_local=True,
                net=NetworkSettings(enabled=True, discover=False, name="coord", secret="k",
                                    peers=tuple(peers)))
            theirs = await run_slideshow(remote)
            nursery.cancel_scope.cancel()
    # Three chunks, each fading into the next one's first image.
    assert ours["chunks"] == theirs["chunks"] == 3
    assert {c["peer"] for c in theirs["rendered"]} == {"peer-a"}
    for c in theirs["rendered"]:
        # Its own images and the next one its last fades into: nothing else was fetched.
        last = c["first_image"] + c["images"] + 1
        assert c["fetched"] == list(range(c["first_image"], min(last, len(images)))), c
    assert all(c["fetched"] == [] for c in ours["rendered"])  # local slots read the files
    frames = _decoded(tmp_path / "peers.mp4")
    assert len(frames) == len(images) * 20
    assert frames == _decoded(tmp_path / "local.mp4")
    assert decode_errors(tmp_path / "peers.mp4") == ""
    assert sorted(os.listdir(tmp_path)) == ["crf.toml", "local.mp4", "peers.mp4"]


async def test_a_peer_may_fetch_only_its_runs_images_while_its_attempt_runs(
        album: Path, tmp_path: Path) -> None:
    import httpx
    import trio

    from chunker.tools import find_ffmpeg
    from peer.client import call
    from peer.node import Node, NodeConfig
    from peer.options import EncodeOptions, JobIntent, NetworkSettings
    from peer.slideshow import SlideServer, _describe
    from peer.slidework import fetch_run
    from swarm import auth
    from swarm.errors import EncodeError
    from swarm.protocol import Assignment, ClaimRequest, SlideRun

    images = _good(album)
    plan = plan_slides(images, 0.8, 0.32, PROFILE)
    runs = slide_runs(len(images), 2)
    secret = "k"
    net = NetworkSettings(enabled=True, discover=False, name="coord", secret=secret)
    opts = EncodeOptions(JobIntent(images[0], str(tmp_path / "x.mp4"), PROFILE), net=net)
    ffmpeg = find_ffmpeg()
    server = SlideServer(job_id="slides-job-1", opts=opts, ffmpeg=ffmpeg, plan=plan, runs=runs,
                         described=_describe(images), workdir=str(tmp_path), emit=lambda e: None,
                         expected_slots=1)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            node = Node(NodeConfig.coordinating(net, opts.tuning.timings), ffmpeg,
                        coordinator=True)
            await nursery.start(node.run)
            node.jobs[server.job_id] = server
            base = f"http://127.0.0.1:{node.port}"
            async with httpx.AsyncClient(base_url=base) as client:
                a = await call(client, secret, "POST", "/v1/jobs/slides-job-1/claim",
                               ClaimRequest("0123456789abcdef", 0, False), (Assignment,))
                assert a.slides is not None and a.source_path == "/v1/jobs/slides-job-1/images"
                reads = server.reads(a.chunk)
                assert len(a.slides.sizes) == len(reads) and a.frames == a.slides.frames

                async def status(k: object, attempt: str = a.attempt) -> int:
                    path = f"{a.source_path}/{k}"
                    token = auth.url_token(secret, path, attempt)
                    r = await client.get(f"{path}?attempt={attempt}&token={token}",
                                         headers={"connection": "close"})
                    return r.status_code

                got = await fetch_run(client, secret, a, a.slides, str(tmp_path))
                assert [_bytes(p) for p in got] == [_bytes(images[i]) for i in reads]
                assert server.served == {a.chunk: set(reads)}
                assert await status(len(reads)) == 404  # past its run
                assert await status("-1") == 404 and await status("..%2Fx") == 404
                assert await status(0, "not-an-attempt-0") == 410
                bad = await client.get(f"{a.source_path}/0?attempt={a.attempt}&token={'0' * 64}")
                assert bad.status_code == 401
                source = "/v1/jobs/slides-job-1/source"
                token = auth.url_token(secret, source, a.attempt)
                r = await client.get(f"{source}?attempt={a.attempt}&token={token}")
                assert r.status_code == 404  # a slideshow has no source video
                # The peer checks what it fetched against the run it was given.
                run = a.slides
                for wrong, why in (
                        (SlideRun(run.images, run.per_image, run.fade, run.width, run.height,
                                  run.sizes, ("0" * 64,) * len(run.sizes)), "SHA-256"),
                        (SlideRun(run.images, run.per_image, run.fade, run.width, run.height,
                                  tuple(s - 1 for s in run.sizes), run.sha256), "more than")):
                    with pytest.raises(EncodeError, match=why):
                        await fetch_run(client, secret, a, wrong, str(tmp_path))
                assert server.served == {a.chunk: set(reads)}  # still nothing else
            nursery.cancel_scope.cancel()
