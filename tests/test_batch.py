"""A queue of files: `swarm encode a.mp4 b.mov dir/`.

The decisions (what a walk keeps, where outputs go, when the next file starts, the ETA)
are plain synchronous tests of ``swarm.batch``; the slot gate is a trio test; the batch
itself runs as a real process over a tree made here with lavfi: a video with audio, one
in a subdirectory, a text file, a broken video, and an output a first run left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from media import FFMPEG, decode_errors, media_info
from peer.gate import Share, SlotGate
from swarm.batch import Found, Lookahead, batch_eta, output_for, plan
from swarm.events import (
    ChunkSplit,
    ChunkStart,
    InFile,
    JobEnd,
    JobResumed,
    JobStart,
    PeerJoined,
    as_json,
)

SWARM = [sys.executable, "-c", "import cli; cli.main()"]
REPO = Path(__file__).resolve().parent.parent


def swarm(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([*SWARM, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


# -- decisions -------------------------------------------------------------------------------
def test_outputs_go_beside_or_under_the_output_directory_keeping_relative_paths() -> None:
    walked = Found("/v/trip/day1/a.mov", "/v/trip")
    named = Found("/x/b.mp4")
    assert output_for(walked, "hd", None) == "/v/trip/day1/a.hd.mp4"
    assert output_for(walked, "hd", "/out") == "/out/day1/a.hd.mp4"
    assert output_for(named, "480p", "/out") == "/out/b.480p.mp4"


def test_a_walk_keeps_videos_and_says_what_it_leaves_out() -> None:
    found = [Found("/v/z.mp4", "/v"), Found("/v/notes.txt", "/v"), Found("/v/a.MOV", "/v"),
             Found("/v/a.hd.mp4", "/v"), Found("/v/old.hd.mp4", "/v"),
             Found("/v/out/c.mkv", "/v"), Found("/n/named.txt"), Found("/v/z.mp4", "/v")]
    kept, skipped = plan(found, "hd", None)
    # Named first (whatever its name: the probe decides), then the walk sorted by path.
    assert [k.input for k in kept] == ["/n/named.txt", "/v/a.MOV", "/v/out/c.mkv", "/v/z.mp4"]
    assert kept[0].named and not kept[1].named
    assert dict(skipped) == {"/v/notes.txt": "not a video by its name",
                             "/v/a.hd.mp4": "an output of this batch",
                             "/v/old.hd.mp4": "named like an output of profile hd"}
    kept, skipped = plan(found, "hd", "/v/out")
    assert ("/v/out/c.mkv", "inside the output directory") in skipped


def test_with_a_ladder_outputs_are_named_for_their_rung_and_a_walk_leaves_them_out() -> None:
    assert output_for(Found("/v/a.mov", "/v"), "hd", None, 720) == "/v/a.hd.720p.mp4"
    found = [Found("/v/a.mp4", "/v"), Found("/v/a.hd.480p.mp4", "/v"),
             Found("/v/b.hd.mp4", "/v"), Found("/v/concert.1080p.mp4", "/v")]
    kept, skipped = plan(found, "hd", None, 720)
    # A user's "concert.1080p.mp4" is a video to encode; an hd ladder's renditions are not.
    assert [(k.input, k.output) for k in kept] == [
        ("/v/a.mp4", "/v/a.hd.720p.mp4"), ("/v/concert.1080p.mp4", "/v/concert.1080p.hd.720p.mp4")]
    assert dict(skipped) == {"/v/a.hd.480p.mp4": "named like an output of profile hd",
                             "/v/b.hd.mp4": "named like an output of profile hd"}


def test_two_inputs_with_one_output_fail_the_second() -> None:
    kept, _ = plan([Found("/v/a.mp4", "/v"), Found("/v/a.mov", "/v")], "hd", None)
    assert [(k.input, k.clash) for k in kept] == [("/v/a.mov", ""),
                                                  ("/v/a.mp4", "same output as /v/a.mov")]


def _start(chunks: int, workers: int) -> JobStart:
    return JobStart(input="a", output="b", profile="hd", frames=100, chunks=chunks,
                    duration_s=4.0, width=320, height=240, workers=workers, ffmpeg="5.1",
                    job_id="j", secret=False, network=False, name="me", policy="swarm",
                    peers_seen=0, chunk_s=1.0)


def test_the_next_file_starts_one_round_of_chunks_before_the_end() -> None:
    ahead = Lookahead()
    assert not ahead.next_may_start  # not even planned yet
    ahead.feed(_start(chunks=10, workers=2))
    ahead.feed(JobResumed(3, (0, 1, 2), 10, 30))
    for c in (3, 4, 5, 5, 6):  # a chunk handed out twice counts once
        ahead.feed(ChunkStart(c, f"x{c}", "me", 10, False))
    assert not ahead.next_may_start  # 3 left for 2 slots
    ahead.feed(PeerJoined("pi", "h:1", "aarch64", "5.1", 4, 0.0))
    assert ahead.next_may_start  # 3 left for 3 encoders: one round
    ahead.feed(ChunkSplit(7, 40, 10, 60))  # chunk 7 cut: its rest, chunk 10, is one more
    assert not ahead.next_may_start  # 4 left for 3 encoders
    ahead.feed(ChunkStart(7, "x7", "me", 10, False))
    assert ahead.next_may_start


def test_batch_eta_weighs_files_by_size() -> None:
    assert batch_eta(10.0, [100, 100], [0.0, 0.0]) is None
    assert batch_eta(10.0, [100, 300], [1.0, 0.0]) == pytest.approx(30.0)
    assert batch_eta(10.0, [100, 300], [1.0, 0.5]) == pytest.approx(10.0 * 150 / 250)


def test_a_file_event_is_its_own_json_line_with_the_file() -> None:
    line = as_json(InFile(2, JobEnd("o.mp4", 1.5)), 3.0)
    assert line == {"event": "job_end", "t": 3.0, "file": 2, "output": "o.mp4", "wall_s": 1.5}


# -- the gate --------------------------------------------------------------------------------
def test_the_gate_serves_the_earlier_file_first() -> None:
    async def main() -> list[str]:
        gate = SlotGate(1)
        order: list[str] = []
        later, earlier = Share(gate, 2), Share(gate, 0)
        await Share(gate, 1).acquire()  # file 1 holds the only slot
        async with trio.open_nursery() as n:

            async def want(name: str, share: Share) -> None:
                await share.acquire()
                order.append(name)
                await trio.sleep(1)
                share.release()

            n.start_soon(want, "file 2", later)
            await trio.sleep(0.1)
            n.start_soon(want, "file 0", earlier)
            await trio.sleep(0.1)
            assert gate.wanted_before(1)
            gate.release()
        assert gate.free == 1
        return order

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == [
        "file 0", "file 2"]


def test_a_cancelled_waiter_gives_its_place_back() -> None:
    async def main() -> None:
        gate = SlotGate(1)
        await gate.acquire(0)
        with trio.move_on_after(1):
            await gate.acquire(1)
        gate.release()
        assert gate.free == 1 and not gate.wanted_before(5)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- a real batch ----------------------------------------------------------------------------
def _video(path: Path, seconds: float, *, audio: bool = True, rate: int = 25) -> None:
    args = [FFMPEG, "-v", "error", "-f", "lavfi", "-i",
            f"testsrc2=size=320x240:rate={rate}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac"]
    args += ["-c:v", "libx264", "-preset", "veryfast", "-g", str(rate), "-shortest",
             str(path)]
    subprocess.run(args, check=True, timeout=60)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    _video(root / "a.mp4", 3)
    _video(root / "sub" / "b.mov", 2, audio=False, rate=30)
    _video(root / "c.mkv", 2)
    (root / "notes.txt").write_text("not a video\n")
    good = (root / "a.mp4").read_bytes()
    (root / "sub" / "broken.mp4").write_bytes(good[: len(good) // 3])
    return root


def _events(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_a_tree_encodes_every_video_and_a_failure_does_not_stop_the_others(
        tree: Path) -> None:
    # An output a first run left: the batch skips it, it is not encoded again.
    first = swarm("encode", "c.mkv", "-p", "480p", "--local-only", "-q", cwd=tree)
    assert first.returncode == 0, first.stderr
    c_out = tree / "c.480p.mp4"
    stamp = c_out.stat().st_mtime_ns

    res = swarm("encode", str(tree), "-p", "480p", "--local-only", "--chunk-seconds", "1",
                "--json", "--report", "r.json", cwd=tree.parent)
    assert res.returncode == 1, res.stderr
    events = _events(res.stdout)
    start = events[0]
    assert start["event"] == "batch_start"
    assert start["inputs"] == [str(tree / "a.mp4"), str(tree / "c.mkv"),
                               str(tree / "sub" / "b.mov"), str(tree / "sub" / "broken.mp4")]
    assert [str(tree / "notes.txt"), "not a video by its name"] in start["skipped"]
    assert [str(c_out), "an output of this batch"] in start["skipped"]
    # Every file's own events carry its index; the last line is the batch's end.
    by_file: dict[object, set[object]] = {}
    for e in events:
        if "file" in e:
            by_file.setdefault(e["file"], set()).add(e["event"])
    assert {"job_start", "chunk_done", "job_end", "file_done"} <= by_file[0]
    assert {"job_start", "chunk_done", "job_end", "file_done"} <= by_file[2]
    assert "file_skipped" in by_file[1] and "job_start" not in by_file[1]
    assert "file_failed" in by_file[3]
    # The overlap: b.mov was planned while a.mp4 still had chunks to finish and merge.
    order = [(e["event"], e.get("file")) for e in events]
    assert order.index(("job_start", 2)) < order.index(("job_end", 0)), order
    end = events[-1]
    assert end["event"] == "batch_end" and (end["done"], end["skipped"], end["failed"]) == (
        2, 1, 1)
    # The failure is named with its reason on stderr, once.
    assert "swarm: failed: " + str(tree / "sub" / "broken.mp4") in res.stderr
    assert "Traceback" not in res.stderr
    for src, out in (("a.mp4", "a.480p.mp4"), ("sub/b.mov", "sub/b.480p.mp4")):
        info = media_info(tree / out)
        assert info.video.frames == media_info(tree / src).video.frames
        assert decode_errors(tree / out) == ""
    assert media_info(tree / "a.480p.mp4").audio is not None
    assert c_out.stat().st_mtime_ns == stamp
    # Nothing else written: no work directories, no output for the broken file.
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*")) == [
        "a.480p.mp4", "a.mp4", "c.480p.mp4", "c.mkv", "notes.txt", "sub", "sub/b.480p.mp4",
        "sub/b.mov", "sub/broken.mp4"]
    report = json.loads((tree.parent / "r.json").read_text())
    assert [f["status"] for f in report["files"]] == ["done", "skipped", "done", "failed"]
    assert report["files"][0]["report"]["frames"] == 75
    assert report["files"][3]["reason"] and report["files"][3]["report"] is None

    # A rerun skips every output that exists and verifies; --force encodes them again.
    again = swarm("encode", str(tree), "-p", "480p", "--local-only", cwd=tree.parent)
    assert again.returncode == 1
    assert again.stderr.count("output exists and verified") == 3, again.stderr
    a_stamp = (tree / "a.480p.mp4").stat().st_mtime_ns
    forced = swarm("encode", str(tree / "a.mp4"), str(tree / "sub"), "-p", "480p",
                   "--local-only", "--force", "-o", "out/", cwd=tree.parent)
    assert forced.returncode == 1  # broken.mp4 is under sub/
    assert (tree / "a.480p.mp4").stat().st_mtime_ns == a_stamp  # -o elsewhere: left alone
    out = tree.parent / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4")) == [
        "a.480p.mp4", "b.480p.mp4"]


def test_an_output_that_does_not_verify_is_a_failure_not_replaced(tree: Path) -> None:
    (tree / "a.480p.mp4").write_bytes(b"someone else's file")
    res = swarm("encode", str(tree / "a.mp4"), str(tree / "c.mkv"), "-p", "480p",
                "--local-only", cwd=tree)
    assert res.returncode == 1
    assert "does not verify" in res.stderr and "--force" in res.stderr
    assert (tree / "a.480p.mp4").read_bytes() == b"someone else's file"
    assert media_info(tree / "c.480p.mp4").video.frames == 50


def test_a_batch_output_option_must_be_a_directory(tree: Path) -> None:
    res = swarm("encode", str(tree), "-o", "x.mp4", cwd=tree)
    assert res.returncode == 2 and "-o names a directory" in res.stderr
    empty = tree / "empty"
    empty.mkdir()
    res = swarm("encode", str(empty), cwd=tree)
    assert res.returncode == 2 and "no videos" in res.stderr
    # --hls streams one file: a batch refuses it before encoding anything.
    res = swarm("encode", str(tree), "--hls", str(tree / "hls"), cwd=tree)
    assert res.returncode == 2 and "--hls streams one file" in res.stderr
    assert not (tree / "hls").exists()


def test_a_ladder_batch_writes_every_rendition_of_every_file_and_a_rerun_checks_them_all(
        tmp_path: Path) -> None:
    _video(tmp_path / "a.mp4", 2)
    (tmp_path / "sub").mkdir()
    _video(tmp_path / "sub" / "b.mov", 1, audio=False, rate=30)
    res = swarm("encode", str(tmp_path), "--ladder", "144,240", "--local-only",
                "--chunk-seconds", "1", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    renditions = {"a.hd.240p.mp4": (320, 240), "a.hd.144p.mp4": (192, 144),
                  "sub/b.hd.240p.mp4": (320, 240), "sub/b.hd.144p.mp4": (192, 144)}
    # Every rendition's path on stdout, the tallest of each file first.
    assert res.stdout.split() == [str(tmp_path / p) for p in renditions]
    for out, size in renditions.items():
        src = media_info(tmp_path / ("a.mp4" if out.startswith("a") else "sub/b.mov"))
        info = media_info(tmp_path / out)
        assert (info.video.width, info.video.height) == size
        assert info.video.frames == src.video.frames
        assert (info.audio is not None) == (src.audio is not None)
        assert decode_errors(tmp_path / out) == ""
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.mp4")) == \
        sorted(["a.mp4", *renditions])

    # A rerun verifies every rendition and skips the files (the walk leaves the outputs out).
    again = swarm("encode", str(tmp_path), "--ladder", "144,240", "--local-only",
                  cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("output exists and verified") == 2, again.stderr
    # One rendition gone: that file is refused, naming it, and nothing is overwritten.
    (tmp_path / "a.hd.144p.mp4").unlink()
    stamp = (tmp_path / "a.hd.240p.mp4").stat().st_mtime_ns
    gone = swarm("encode", str(tmp_path), "--ladder", "144,240", "--local-only",
                 cwd=tmp_path)
    assert gone.returncode == 1
    assert f"{tmp_path / 'a.hd.144p.mp4'} does not" in gone.stderr and "--force" in gone.stderr
    assert (tmp_path / "a.hd.240p.mp4").stat().st_mtime_ns == stamp


def test_a_crashed_batch_resumes_its_file_from_the_journal(tmp_path: Path) -> None:
    _video(tmp_path / "a.mp4", 1, audio=False)
    _video(tmp_path / "b.mp4", 10, audio=False)
    args = ["encode", "a.mp4", "b.mp4", "-p", "480p", "--local-only", "-w", "1",
            "--chunk-seconds", "1", "--json"]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*SWARM, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        done_b = 0
        for line in proc.stdout:
            e = json.loads(line)
            if e["event"] == "chunk_done" and e.get("file") == 1:
                done_b += 1
                if done_b == 3:
                    break
            assert time.monotonic() < deadline
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no cleanup runs
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert (tmp_path / "a.480p.mp4").exists() and (tmp_path / ".b.480p.mp4.swarm").is_dir()
    res = swarm(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    events = _events(res.stdout)
    assert any(e["event"] == "file_skipped" and e["file"] == 0 for e in events)
    resumed = [e for e in events if e["event"] == "job_resumed"]
    assert resumed and resumed[0]["file"] == 1 and resumed[0]["chunks_kept"] >= 3
    assert media_info(tmp_path / "b.480p.mp4").video.frames == 250
    assert not (tmp_path / ".b.480p.mp4.swarm").exists()


# -- the dashboard -----------------------------------------------------------------------------
def _render(renderable: object, width: int, height: int) -> str:
    import io

    from rich.console import Console

    con = Console(record=True, width=width, height=height, file=io.StringIO(),
                  force_terminal=True)
    con.print(renderable)
    return con.export_text()


@pytest.mark.parametrize(("width", "height"), [(80, 24), (160, 40)])
def test_the_batch_dashboard_shows_files_eta_and_the_running_files_chunk_maps(
        width: int, height: int) -> None:
    from screens.batch_view import BatchLines, BatchView
    from swarm.events import (
        BatchStart,
        ChunkDone,
        FileDone,
        FileFailed,
        FileStart,
        Merge,
    )

    view, lines = BatchView(local_arch="x86_64"), BatchLines()
    inputs = tuple(f"/v/clip{i}.mp4" for i in range(5))
    events: list[tuple[float, object]] = [
        (0.0, BatchStart(inputs, tuple(p.replace(".mp4", ".hd.mp4") for p in inputs),
                         (100,) * 5, (("/v/notes.txt", "not a video by its name"),))),
        (0.1, FileStart(0, inputs[0], "o0")), (0.2, InFile(0, _start(chunks=4, workers=2))),
    ]
    for c in range(4):
        events += [(1.0 + c, InFile(0, ChunkStart(c, f"a{c}", "me", 25, False))),
                   (1.9 + c, InFile(0, ChunkDone(c, f"a{c}", "me", 0.9, 25, 25 * (c + 1))))]
    events += [(5.0, InFile(0, Merge())), (5.5, InFile(0, JobEnd("o0", 5.0))),
               (5.5, FileDone(0, inputs[0], "o0", 5.4)),
               (5.6, FileFailed(1, inputs[1], "o1", "not a readable video")),
               (5.7, FileStart(2, inputs[2], "o2")), (5.8, InFile(2, _start(8, 2))),
               (6.0, InFile(2, ChunkStart(0, "b0", "me", 25, False))),
               (6.1, InFile(2, ChunkStart(1, "b1", "me", 25, False))),
               (7.0, InFile(2, ChunkDone(0, "b0", "me", 0.9, 25, 25))),
               (7.1, InFile(2, ChunkDone(1, "b1", "me", 0.9, 25, 50))),
               (7.2, FileStart(3, inputs[3], "o3")), (7.3, InFile(3, _start(6, 2)))]
    said: list[str] = []
    for t, e in events:
        view.feed(e, t)  # type: ignore[arg-type]
        said += lines.feed(e)  # type: ignore[arg-type]
    text = _render(view.render(8.0, width, height), width, height)
    rows = text.rstrip("\n").splitlines()
    assert max(len(r) for r in rows) <= width
    assert "1/5 done  2 running  1 queued  1 failed" in rows[0]
    assert "ETA 0:" in rows[0]  # a file and a quarter of another done: a rate
    assert any(r.startswith("failed") and "clip1.mp4" in r for r in rows)
    # The finishing file: its progress and its map (two chunks done, by "me" = A).
    assert any("[3/5] encoding" in r for r in rows)
    assert any(r.startswith("aa......") for r in rows)
    assert any("[4/5]" in r for r in rows) and "chunks 0/6 done" in text
    assert said[:2] == ["swarm: 5 file(s) to encode",
                        "swarm: skipped /v/notes.txt (not a video by its name)"]
    assert "swarm: [2/5] failed /v/clip1.mp4: not a readable video" in said
    assert "swarm: [1/5] done o0 (5.4 s)" in said


def test_a_peer_goes_to_the_next_file_only_when_nothing_is_left_for_it() -> None:
    from swarm.batch import release_to_next
    from swarm.job import Grant, Job

    job = Job([10, 10, 10], lease_s=30.0, pixels=100)
    job.add_peer("local", 1000.0, 0.0, slots=1)
    job.add_peer("pi", 1000.0, 0.0, slots=1)
    a = job.claim("local", 0.0)
    b = job.claim("pi", 0.0)
    assert isinstance(a, Grant) and isinstance(b, Grant)
    assert not release_to_next(job, "pi", "local")  # a chunk pending, and pi holds one
    c = job.claim("local", 0.1, prefetch=True)
    assert isinstance(c, Grant)
    assert not release_to_next(job, "pi", "local")  # pi still encodes its chunk
    job.progress(b.attempt, 10, 0.5)
    assert job.succeeded(b.attempt, 1.0)
    assert release_to_next(job, "pi", "local")  # nothing pending, pi holds nothing
    assert not release_to_next(job, "pi", "elsewhere")  # no local slots: keep every peer


def test_a_peer_works_on_every_file_of_a_batch(tmp_path: Path) -> None:
    """A `swarm join` peer named with --peer: invited to the first file, released to the next
    one when nothing is left for it, and both outputs are whole."""
    _video(tmp_path / "a.mp4", 3)
    # Long enough for the peer's invite to the next file (a busy peer is re-invited at most
    # every 3 s), even on an idle machine, where one slot encodes this 320x240 at ~200 fps.
    _video(tmp_path / "b.mp4", 40)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    joined = tmp_path / "join.jsonl"
    with open(joined, "w") as out:
        peer = subprocess.Popen([*SWARM, "join", "--no-bench", "--port", "0", "--name",
                                 "bravo", "--json", "--open"], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not joined.read_text():
            assert time.monotonic() < deadline and peer.poll() is None, "join did not start"
            time.sleep(0.1)
        up = json.loads(joined.read_text().splitlines()[0])
        res = swarm("encode", "a.mp4", "b.mp4", "-p", "480p", "-w", "1", "--chunk-seconds",
                    "0.5", "--no-mdns", "--peer", f"127.0.0.1:{up['port']}", "--json",
                    "--open", cwd=tmp_path)
    finally:
        peer.terminate()
        peer.wait(timeout=30)
    assert res.returncode == 0, res.stderr
    events = _events(res.stdout)
    by_peer = {(e["file"], e["peer"]) for e in events if e["event"] == "chunk_done"}
    assert {(0, "bravo"), (1, "bravo")} <= by_peer, by_peer
    for name, frames in (("a", 75), ("b", 1000)):
        out = tmp_path / f"{name}.480p.mp4"
        assert media_info(out).video.frames == frames and decode_errors(out) == ""
    assert [e["event"] for e in _events(joined.read_text())].count("job_joined") >= 2


def test_with_the_next_file_up_a_slot_takes_no_duplicate() -> None:
    from swarm.batch import only_duplicates_left
    from swarm.job import Grant, Job

    job = Job([10, 10], lease_s=30.0, pixels=100)
    job.add_peer("local", 1000.0, 0.0, slots=2)
    first = job.claim("local", 0.0)
    assert isinstance(first, Grant) and not only_duplicates_left(job)
    second = job.claim("local", 0.0)
    assert isinstance(second, Grant) and only_duplicates_left(job)
    job.failed(second.attempt, 1.0, "killed")  # requeued: fresh work again
    assert not only_duplicates_left(job)
