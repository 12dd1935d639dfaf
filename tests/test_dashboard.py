"""The encode/join dashboards, the end-of-job summary and the HTML report.

Renders are checked from recorded event sequences into rich's recording console (no clock,
no terminal); output modes on real small jobs run the CLI as a process; the HTML report is
opened in headless Chromium when it is installed.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from media import FFMPEG
from screens.dashboard import JobView, JoinView, summarize, summary_table
from screens.report_html import OUTCOME_COLOURS, build_html, lanes
from screens.sinks import join_plain
from swarm.events import (
    AudioDone,
    AudioStart,
    ChunkDone,
    ChunkFailed,
    ChunkProgress,
    ChunkStart,
    ChunkUpload,
    JobEnd,
    JobEvent,
    JobJoined,
    JobLeft,
    JobResumed,
    JobStart,
    Listening,
    Merge,
    NodeUp,
    PeerJoined,
    PeerLeft,
    SlotEnd,
    SlotProgress,
    SlotStart,
)

REPO = Path(__file__).resolve().parent.parent
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
SIZES = [(80, 24), (160, 40)]


def _job_start(*, input: str = "a.mp4", output: str = "b.mp4", frames: int, chunks: int,
               workers: int, name: str = "alpha") -> JobStart:
    return JobStart(input=input, output=output, profile="hd", frames=frames, chunks=chunks,
                    duration_s=chunks * 4.0, width=1280, height=720, workers=workers,
                    ffmpeg="7.0", job_id="j1", secret=True, network=True, name=name,
                    policy="swarm", peers_seen=0, chunk_s=4.0)


def job_events(chunks: int = 24) -> list[tuple[float, JobEvent]]:
    """A three-peer job as its producers report it (times in seconds): alpha (this
    device, 2 slots), bravo and charlie (remote; charlie fails and leaves)."""
    out: list[tuple[float, JobEvent]] = [(0.0, _job_start(
        input="holiday-2024-final-cut.mov", output="holiday-2024-final-cut.hd.mp4",
        frames=chunks * 100, chunks=chunks, workers=2))]
    out.append((0.1, Listening(7800)))
    out.append((0.5, PeerJoined("bravo", "http://10.0.0.2:7800", "aarch64", "7.0", 8, 41e6)))
    out.append((0.6, PeerJoined("charlie-with-a-very-long-hostname", "http://10.0.0.3:7800",
                                "x86_64", "7.0", 4, 0.0)))
    peers = ["alpha", "alpha", "bravo", "charlie-with-a-very-long-hostname"]
    t = 1.0
    for c in range(chunks - 6):
        peer = peers[c % len(peers)]
        att = f"c{c:05d}a001"
        out.append((t, ChunkStart(c, att, peer, 100, peer != "alpha")))
        out.append((t + 0.5, ChunkProgress(c, 50, att, peer, 100.0)))
        if peer.startswith("charlie") and c > 8:
            out.append((t + 0.7, ChunkFailed(c, att, peer, "ffmpeg exited 1", True,
                                             "requeued", c > 12)))
        elif c < chunks - 10:
            if peer == "bravo":
                out.append((t + 0.8, ChunkUpload(c, att, peer)))
            out.append((t + 1.0, ChunkDone(c, att, peer, 1.0, 100, 100 * (c + 1))))
        t += 0.3
    out.append((t, PeerLeft("charlie-with-a-very-long-hostname")))
    out.append((t + 0.1, AudioStart()))
    out.append((t + 1.4, AudioDone(1.3)))
    return out


def _render(renderable: Any, width: int, height: int) -> str:
    con = Console(record=True, width=width, height=height, file=io.StringIO(),
                  force_terminal=True, color_system="truecolor")
    con.print(renderable)
    return con.export_text()


def _fits(text: str, width: int, height: int) -> None:
    lines = text.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= width, text
    assert len(lines) <= height, text


def _fed(upto: int | None = None) -> tuple[JobView, float]:
    view = JobView(local_arch="x86_64", local_score=30e6)
    now = 0.0
    for now, e in job_events()[:upto]:
        view.feed(e, 100 + now)
    return view, 100 + now + 1


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_job_dashboard_shows_peers_map_and_progress(width: int, height: int) -> None:
    view, now = _fed()
    text = _render(view.render(now, width, height), width, height)
    _fits(text, width, height)
    assert "holiday-2024-final-cut.mov -> " in text
    assert "ETA" in text and "fps" in text
    # No live speedup: it is defined over the whole job's wall time (see summarize).
    assert "speedup" not in text
    assert "1550/2400" in text and "64.6%" in text
    for peer, state in (("alpha (here)", "encoding"), ("bravo", "encoding"), ("charlie", "gone")):
        line = next(x for x in text.splitlines() if peer in x)
        assert state in line, line
    assert "aarch64" in text and "41.0" in text  # bravo's arch and Mpx/s score
    assert "chunks 13/24 done  failures 2  retries 2" in text
    # The map reads without colour: letter = peer, case = running/done, x = requeued.
    assert "aabcaabcaabxaaBxAA......" in text
    # The newest event last: the audio, encoded beside the chunks.
    assert "audio encoded in 1.3 s" in text.splitlines()[-1]


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_every_intermediate_state_renders_within_the_terminal(width: int, height: int) -> None:
    for upto in range(len(job_events()) + 1):
        view, now = _fed(upto)
        _fits(_render(view.render(now, width, height), width, height), width, height)


def test_many_peers_and_chunks_still_fit_24_lines() -> None:
    view = JobView()
    view.feed(_job_start(frames=100000, chunks=1000, workers=0), 0.0)
    for i in range(30):
        view.feed(PeerJoined(f"node{i:02d}", "x", "arm64", "7.0", 4, 1e7), 0.1)
        view.feed(ChunkStart(i, f"a{i}", f"node{i:02d}", 100, True), 0.2)
    text = _render(view.render(5.0, 80, 24), 80, 24)
    _fits(text, 80, 24)
    assert "more" in text and "…" in text  # peers and chunk map both clipped, not wrapped
    assert "downloading" in text  # no progress yet from any remote peer


def test_join_dashboard() -> None:
    view = JoinView(address="10.0.0.7:0", score=42e6, score_profile="hd")
    for t, e in enumerate([
            NodeUp(7800, "bravo", "ab12cd34", ""),  # no address: the view keeps its own
            JobJoined("j1", "http://10.0.0.1:7800"),
            SlotStart(3, "c00003a001"),
            SlotProgress(3, 40, 81.5),
            SlotEnd(3, "done", 40),
            SlotStart(7, "c00007a001"),
            SlotProgress(7, 12, 60.0)]):
        view.feed(e, float(t))
    for width, height in SIZES:
        text = _render(view.render(10.0, width, height), width, height)
        _fits(text, width, height)
        for want in ("bravo", "10.0.0.7:7800", "42.0 Mpx/s (hd)", "encoding",
                     "http://10.0.0.1:7800", "7 (12 fr, 60 fps)", "1 chunk(s), 40 frames"):
            assert want in text, (want, text)


def _report(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [a for a in attempts if a["outcome"] == "ok"]
    peers: dict[str, dict[str, Any]] = {}
    for a in ok:
        p = peers.setdefault(a["peer"], {"name": a["peer"], "chunks": 0, "frames": 0,
                                         "encode_s": 0.0})
        p["chunks"] += 1
        p["frames"] += 100
    return {"input": "in.mov", "output": "out.mp4", "profile": "hd", "frames": 100 * len(ok),
            "duration_s": 40.0, "wall_s": 12.0, "width": 1280, "height": 720, "job_id": "j",
            "chunks": [{"index": a["chunk"]} for a in ok], "peers": list(peers.values()),
            "attempts": attempts, "retries": 2, "duplicates": 1}


def _attempts() -> list[dict[str, Any]]:
    out = []
    for c in range(10):
        peer = ("alpha", "bravo", "charlie")[c % 3]
        out.append({"id": f"c{c}a1", "chunk": c, "peer": peer, "start_s": c * 1.0,
                    "end_s": c * 1.0 + 2.0, "outcome": "ok", "reason": "", "frames": 100})
    out.append({"id": "c2a0", "chunk": 2, "peer": "delta", "start_s": 0.5, "end_s": 3.0,
                "outcome": "failed", "reason": "ffmpeg exited 1", "frames": 10})
    out.append({"id": "c4a0", "chunk": 4, "peer": "delta", "start_s": 3.5, "end_s": 9.0,
                "outcome": "expired", "reason": "lease expired", "frames": 30})
    return out


def test_summary_per_peer_and_speedup() -> None:
    s = summarize(_report(_attempts()), local_score=1280 * 720 * 50.0)
    by = {p["name"]: p for p in s["peers"]}
    assert by["alpha"]["chunks"] == 4 and by["alpha"]["busy_s"] == 8.0
    assert by["alpha"]["mean_fps"] == 50.0 and by["alpha"]["share"] == 0.4
    assert by["delta"]["chunks"] == 0 and by["delta"]["failed"] == 2
    assert s["speedup"] == round(1000 / 50 / 12, 2)
    assert summarize(_report(_attempts()), None)["speedup"] is None
    text = _render(summary_table(s), 80, 24)
    _fits(text, 80, 24)
    assert "alpha" in text and "40%" in text and "retries 2" in text and "duplicates 1" in text


def _start(view: JobView, chunks: int, frames: int, now: float = 0.0) -> None:
    view.feed(_job_start(frames=frames, chunks=chunks, workers=2), now)


def test_a_resumed_job_shows_its_kept_chunks_as_done() -> None:
    view = JobView()
    _start(view, 4, 400)
    view.feed(JobResumed(3, (0, 1, 3), 4, 300), 0.1)
    text = _render(view.render(1.0, 80, 24), 80, 24)
    assert "chunks 3/4 done" in text and "==.=" in text, text
    assert "resumed: 3 of 4 chunks kept" in text and "300/400" in text, text
    report = _report([{"id": "c2a1", "chunk": 2, "peer": "alpha", "start_s": 0.5,
                       "end_s": 2.5, "outcome": "ok", "reason": "", "frames": 100}])
    report.update(frames=400, resumed_chunks=[0, 1, 3],
                  chunks=[{"index": i, "peer": "alpha", "frames": 100} for i in range(4)],
                  peers=[{"name": "alpha", "chunks": 4, "frames": 400, "encode_s": 2.0}])
    s = summarize(report, None)
    [alpha] = s["peers"]
    assert (alpha["chunks"], alpha["frames"], alpha["busy_s"]) == (1, 100, 2.0)
    text = _render(summary_table(s), 80, 24)
    assert "resumed: 3 of 4 chunks kept" in text and "kept (earlier run)" in text, text
    assert "0.0s" not in text


def test_speedup_is_the_benchmarked_time_alone_over_the_wall_time() -> None:
    report = _report(_attempts())  # 1000 frames of 1280x720 in 12 s of wall time
    score = 1280 * 720 * 50.0  # per slot: 50 fps
    # Alone this device runs 2 slots: 1000 frames at 100 fps take 10 s, against 12 s.
    s = summarize(report, score, local_slots=2, box=(1280, 720))
    assert s["speedup"] == round(10 / 12, 2)
    # Output a quarter of the benchmarked box: the 1080p score says nothing about it.
    assert summarize(report, score, local_slots=2, box=(2560, 1440))["speedup"] is None
    text = _render(summary_table(summarize(report, None)), 80, 24)
    assert "speedup" not in text  # unknown: not shown, never as "-" or a guess


def test_eta_follows_the_recent_rate_and_100_percent_waits_for_the_verified_output() -> None:
    view = JobView()
    _start(view, 3, 900)
    # Start-up (probe, ffmpeg launch) takes 1.5 s; then 100 fps, so the job's encode ends
    # at 10.5 s.
    view.feed(ChunkStart(0, "a0", "alpha", 900, False), 1.5)
    for t in (2.0, 2.5, 3.0):
        view.feed(ChunkProgress(0, round((t - 1.5) * 100), "a0", "alpha", 100.0), t)
    eta = view.eta(3.0)
    assert eta is not None and abs(eta - 7.5) < 0.5, eta  # the rate since 0 said 15 s
    view.feed(ChunkProgress(0, 900, "a0", "alpha", 100.0), 10.5)
    assert "100.0%" not in _render(view.render(10.6, 80, 24), 80, 24)  # still checked
    view.feed(ChunkDone(0, "a0", "alpha", 9.0, 900, 900), 10.8)
    view.feed(Merge(), 10.9)
    assert "100.0%" not in _render(view.render(11.0, 80, 24), 80, 24)  # merging
    view.feed(JobEnd("b.mp4", 11.5), 11.5)
    assert "100.0%" in _render(view.render(11.6, 80, 24), 80, 24)


def test_join_totals_count_each_chunk_by_its_frames() -> None:
    view = JoinView(address="10.0.0.7:7800")
    view.feed(NodeUp(7800, "bravo", "ab12", "10.0.0.7:7800"), 0.0)
    for c in range(4):
        view.feed(SlotStart(c, f"c{c}a1"), 1.0 + c)
        # The last progress report came a third of the way through the 50-frame chunk.
        view.feed(SlotProgress(c, 16, 30.0), 1.5 + c)
        view.feed(SlotEnd(c, "done", 50), 2.0 + c)
    text = _render(view.render(9.0, 80, 24), 80, 24)
    assert "4 chunk(s), 200 frames" in text, text


def test_html_timeline_gives_attempts_running_at_once_on_one_peer_their_own_lanes() -> None:
    atts = [{"id": f"a{i}", "chunk": i, "peer": "alpha", "start_s": s, "end_s": e,
             "outcome": "ok", "reason": "", "frames": 100}
            for i, (s, e) in enumerate([(0.0, 2.0), (0.1, 2.2), (2.0, 4.0), (2.3, 4.1)])]
    assert lanes(atts) == [0, 1, 0, 1]
    atts.append({"id": "b0", "chunk": 4, "peer": "bravo", "start_s": 0.0, "end_s": 3.0,
                 "outcome": "ok", "reason": "", "frames": 100})
    report = _report(atts)
    page = build_html(report, summarize(report, None))
    ys = {}
    for m in re.finditer(r'data-chunk="(\d+)" data-lane="(\d)"><rect x="[^"]+" '
                                       r'y="([^"]+)"', page):
        ys[int(m.group(1))] = float(m.group(3))
    assert ys[0] == ys[2] < ys[1] == ys[3] < ys[4], ys  # bravo's row below alpha's two


# -- the HTML report in a real browser ------------------------------------------------------
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    chromium = _chromium()
    assert chromium
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True, text=True, timeout=60)


def _pixels(png: Path) -> bytes:
    """RGB24 pixels of a PNG (decoded with ffmpeg, so no imaging library is needed)."""
    return subprocess.run([FFMPEG, "-v", "error", "-i", str(png), "-f", "rawvideo",
                           "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed "
                    "(apt-get install -y chromium; .ci/run does it)")
def test_html_report_renders_a_timeline_in_chromium(tmp_path: Path) -> None:
    report = _report(_attempts())
    page = tmp_path / "report.html"
    page.write_text(build_html(report, summarize(report, None)), encoding="utf-8")
    text = page.read_text()
    for fetch in ("http:", "https:", "src=", "href=", "url(", "@import"):
        assert fetch not in text  # self-contained: the browser fetches nothing
    dom = _browser(["--dump-dom", page.as_uri()], tmp_path).stdout
    # The page's own script counted the bars the browser laid out with a non-zero box.
    assert 'data-bars-rendered="12"' in dom, dom[-500:]
    assert dom.count('data-outcome="ok"') == 10 and "delta" in dom
    shot = Path(os.environ.get("SWARM_SHOT_DIR", tmp_path)) / "report.png"
    _browser([f"--screenshot={shot}", "--window-size=1100,700", "--hide-scrollbars",
              page.as_uri()], tmp_path)
    px = _pixels(shot)
    ok_rgb = bytes.fromhex(OUTCOME_COLOURS["ok"][1:])
    failed_rgb = bytes.fromhex(OUTCOME_COLOURS["failed"][1:])
    count = {c: sum(px[i:i + 3] == c for i in range(0, len(px), 3)) for c in (ok_rgb,
                                                                             failed_rgb)}
    # Ten 2 s bars of 18 px over a 12 s, 860 px axis: thousands of green pixels.
    assert count[ok_rgb] > 10 * 100 and count[failed_rgb] > 100, count


# -- output modes on a real small job --------------------------------------------------------
@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25:duration=3", "-c:v", "libx264",
                    "-preset", "veryfast", "-g", "25", str(src)], check=True, timeout=60)
    return src


def _swarm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([*SWARM, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


ENCODE = ("--local-only", "--chunk-seconds", "1", "-w", "2", "--name", "alpha")


def test_json_mode_is_json_lines_only(tmp_path: Path, clip: Path) -> None:
    res = _swarm("encode", str(clip), "-o", "o.mp4", "--json", "--report", "r.json",
                 "--report-html", "r.html", *ENCODE, cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    kinds = [e["event"] for e in lines]
    assert kinds[0] == "job_start" and kinds[-1] == "job_end"
    assert {"chunk_start", "chunk_progress", "chunk_done", "merge"} <= set(kinds)
    assert kinds.count("chunk_done") == lines[0]["chunks"]
    assert all(isinstance(e["t"], float) for e in lines)
    end = lines[-1]
    assert end["output"] == "o.mp4" and end["summary"]["peers"][0]["name"] == "alpha"
    report = json.loads((tmp_path / "r.json").read_text())
    # Backward compatible: the old keys keep their meaning; attempts are new.
    assert {"input", "output", "profile", "frames", "duration_s", "wall_s", "width", "height",
            "job_id", "chunks", "peers"} <= set(report)
    assert {"index", "start_s", "frames", "peer", "attempts", "encode_s", "bytes_in",
            "bytes_out"} <= set(report["chunks"][0])
    atts = report["attempts"]
    assert len(atts) == len(report["chunks"]) and report["retries"] == 0
    for a in atts:
        assert a["peer"] == "alpha" and a["outcome"] == "ok" and a["reason"] == ""
        assert 0 <= a["start_s"] < a["end_s"] <= report["wall_s"]
    html = (tmp_path / "r.html").read_text()
    assert html.count('class="bar"') == len(atts) and "<script src" not in html


def test_plain_mode_prints_progress_lines_and_summary(tmp_path: Path, clip: Path) -> None:
    res = _swarm("encode", str(clip), "-o", "o.mp4", *ENCODE, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "o.mp4\n"
    err = res.stderr
    assert "\x1b[" not in err  # no terminal codes in a pipe
    assert "swarm: 100% (75/75 frames)" in err and "merging" in err
    # 100 % is said once the merged output verified, never while chunks are checked.
    assert err.index("merging") < err.index("swarm: 100%"), err
    assert "job summary" in err and "alpha" in err and "100%" in err
    assert "retries 0" in err and "done in" in err.splitlines()[-1]


def test_an_unreachable_peer_is_reported_once_on_screen_and_in_the_report(
        tmp_path: Path, clip: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = _swarm("encode", str(clip), "-o", "o.mp4", "--json", "--report", "r.json",
                 "--no-mdns", "--peer", f"127.0.0.1:{port}", "--chunk-seconds", "1",
                 "-w", "2", "--name", "alpha", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    said = [e for e in events if e["event"] == "peer_unreachable"]
    assert len(said) == 1 and said[0]["peer"] == f"127.0.0.1:{port}", said
    report = json.loads((tmp_path / "r.json").read_text())
    assert [u["peer"] for u in report["unreachable"]] == [f"127.0.0.1:{port}"]
    res = _swarm("encode", str(clip), "-o", "p.mp4", "--no-mdns", "--peer",
                 f"127.0.0.1:{port}", "--chunk-seconds", "1", "-w", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count(f"peer 127.0.0.1:{port} unreachable") == 1, res.stderr
    assert f"unreachable: 127.0.0.1:{port}" in res.stderr  # in the summary too


def test_quiet_mode_prints_the_output_path_only(tmp_path: Path, clip: Path) -> None:
    res = _swarm("encode", str(clip), "-o", "o.mp4", "-q", *ENCODE, cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout == "o.mp4\n"


def test_live_dashboard_on_a_terminal(tmp_path: Path, clip: Path) -> None:
    """On a pseudo-terminal of 80x24 the dashboard runs, cleans up, and prints the summary."""
    env = os.environ | {"PYTHONPATH": str(REPO), "TERM": "xterm-256color", "COLUMNS": "80",
                        "LINES": "24"}
    master, slave = pty.openpty()
    proc = subprocess.Popen([*SWARM, "encode", str(clip), "-o", "o.mp4", *ENCODE],
                            cwd=tmp_path, env=env, stdin=slave, stdout=subprocess.PIPE,
                            stderr=slave)
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, "no terminal output for 60 s"
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            seen += data
        out = proc.stdout.read() if proc.stdout else b""
        assert proc.wait(timeout=30) == 0, seen.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == b"o.mp4\n"
    text = seen.decode(errors="replace")
    assert "job summary" in text and "alpha" in text and "Traceback" not in text
    assert "\x1b[" in text  # it did draw with terminal codes


def test_join_says_which_jobs_remain_when_one_ends(capsys: pytest.CaptureFixture[str]) -> None:
    show = join_plain(quiet=False)
    view = JoinView(address="10.0.0.7:7800", score=0.0, score_profile="hd")
    for t, e in enumerate([JobJoined("j1", "http://10.0.0.1:7800"),
                           JobJoined("j2", "http://10.0.0.2:7800"), JobLeft("j1"),
                           JobLeft("j2")]):
        show(e)
        view.feed(e, float(t))
    lines = [x for x in capsys.readouterr().err.splitlines() if " over; " in x]
    assert lines == ["swarm: job j1 over; still working for http://10.0.0.2:7800 (job j2)",
                     "swarm: job j2 over; idle"]
    text = _render(view.render(4.0, 100, 30), 100, 30)
    assert "job over; still working for http://10.0.0.2:7800" in text, text
    assert "job over; idle" in text, text
