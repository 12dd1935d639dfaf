"""The `--hls` stream in a real browser: Debian's Chromium with hls.js, driven by Playwright.

During the job the player must start before the job ends; afterwards the whole stream must
play to its end with every source frame decoded and no stall. hls.js comes from the npm
registry (``.ci/run`` caches it on the machine and names it in ``SWARM_TEST_HLSJS``), the
browser from Debian (`apt-get install chromium`); Playwright's own browser downloads are
not reachable here.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media import FFMPEG, media_info

REPO = Path(__file__).resolve().parent.parent
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HLSJS = os.environ.get("SWARM_TEST_HLSJS", "/var/cache/swarm-ci/hls.js-1.7.4/hls.min.js")
# What the machine's notes say a headless Chromium needs here: no sandbox as root, and none
# of the background connections a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--autoplay-policy=no-user-gesture-required"]

PAGE = """<!doctype html><meta charset=utf-8><title>swarm hls test</title>
<video id=v muted playsinline width=320></video>
<script src="hls.min.js"></script>
<script>
const q = new URLSearchParams(location.search);
const v = document.getElementById('v');
window.log = {playing: null, stalls: 0, waiting: 0, errors: [], ended: false, hls: Hls.version};
const hls = new Hls({enableWorker: true});
hls.on(Hls.Events.ERROR, (_, d) => {
  if (d.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR) log.stalls++;
  log.errors.push(d.details + (d.fatal ? ' (fatal)' : ''));
});
hls.on(Hls.Events.MANIFEST_PARSED, () => { v.playbackRate = +(q.get('rate') || 1); v.play(); });
v.addEventListener('playing', () => { if (log.playing === null) log.playing = Date.now(); });
v.addEventListener('waiting', () => { if (log.playing !== null) log.waiting++; });
v.addEventListener('ended', () => { log.ended = true; });
hls.loadSource(q.get('src'));
hls.attachMedia(v);
</script>"""


def _missing() -> str | None:
    if CHROMIUM is None:
        return "chromium not installed (apt-get install -y chromium; .ci/run does it)"
    if not Path(HLSJS).is_file():
        return f"hls.js not at {HLSJS} (.ci/run fetches it from the npm registry)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install -e '.[test]')"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None and os.environ.get("CI") != "true",
                                reason=str(_missing()))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static HTTP server over a folder with the page and hls.js: (base URL, folder)."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text(PAGE, encoding="utf-8")
    shutil.copy(HLSJS, root / "hls.min.js")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _wait(page: Any, expr: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = page.evaluate(expr)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{expr} still false after {timeout_s} s: {page.evaluate('log')}")


def test_plays_while_encoding_and_to_the_end(site: tuple[str, Path], tmp_path: Path) -> None:
    assert _missing() is None, _missing()
    from playwright.sync_api import sync_playwright

    base, root = site
    # 720p for 20 s: long enough that the job is still encoding when the player starts.
    src = tmp_path / "src.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=25:duration=20", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=20", "-c:v", "libx264", "-preset", "ultrafast",
                    "-bf", "2", "-g", "25", "-c:a", "aac", "-shortest", str(src)],
                   check=True, timeout=120)
    frames = media_info(src).video.frames
    stream = root / "hls"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    job = subprocess.Popen([*SWARM, "encode", str(src), "-o", str(tmp_path / "out.mp4"),
                            "--local-only", "-w", "1", "--chunk-seconds", "1", "--hls",
                            str(stream), "-q"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
            try:
                deadline = time.monotonic() + 60
                while not (stream / "master.m3u8").exists():
                    assert job.poll() is None, job.communicate()[1]
                    assert time.monotonic() < deadline, "no master playlist after 60 s"
                    time.sleep(0.05)
                live = browser.new_page()
                live.goto(f"{base}/index.html?src=hls/master.m3u8")
                _wait(live, "log.playing !== null && v.currentTime > 0", 30)
                # During the job: the player started before the job ended.
                assert job.poll() is None, "the job ended before the player started"
                assert "#EXT-X-ENDLIST" not in (stream / "video.m3u8").read_text()
                live.close()
                _, err = job.communicate(timeout=180)
                assert job.returncode == 0, err
                # At the end: the whole stream, from its start, to its end, at 2x.
                page = browser.new_page()
                page.goto(f"{base}/index.html?src=hls/master.m3u8&rate=2")
                _wait(page, "log.ended", 60)
                log = page.evaluate("log")
                quality = page.evaluate(
                    "(() => { const q = v.getVideoPlaybackQuality();"
                    " return [q.totalVideoFrames, q.droppedVideoFrames]; })()")
                buffered = page.evaluate(
                    "Array.from({length: v.buffered.length},"
                    " (_, i) => [v.buffered.start(i), v.buffered.end(i)])")
            finally:
                browser.close()
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert log["stalls"] == 0 and log["waiting"] == 0, log
    assert not [e for e in log["errors"] if "fatal" in e], log
    assert quality[0] == frames, (quality, frames)
    assert len(buffered) == 1, buffered  # one continuous buffered range
