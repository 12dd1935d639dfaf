"""The node's web page in a real browser: Debian's Chromium driven by Playwright, against a
real `swarm join` process (launched as tests/test_hls_browser.py does).

In a closed swarm the page first asks for the secret; then a video picked in the page's form
uploads and becomes a job; its chunk map changes while it runs (pushed over server-sent
events); the player plays its HLS stream (hls.js served by the node, or the browser's own
HLS); the result downloads from the page.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_hls_browser import CHROMIUM, CHROMIUM_ARGS, HLSJS, _missing

from media import FFMPEG, media_info

REPO = Path(__file__).resolve().parent.parent
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
# Unique to this test, so no other swarm on the machine's LAN joins its job or invites it.
SECRET = "web-browser-test-9f3a"

pytestmark = pytest.mark.skipif(_missing() is not None and os.environ.get("CI") != "true",
                                reason=str(_missing()))


def start_join(tmp: Path, secret: str | None = SECRET, extra: tuple[str, ...] = ()
               ) -> tuple[subprocess.Popen[str], str]:
    """A `swarm join` with its page (any free port); returns it and its base URL."""
    env = os.environ | {"PYTHONPATH": str(REPO), "SWARM_CACHE_DIR": str(tmp / "cache")}
    env.pop("SWARM_SECRET", None)
    if secret is not None:
        env["SWARM_SECRET"] = secret
    node = subprocess.Popen([*SWARM, "join", "--port", "0", "--no-bench", "--json",
                             "--hls", str(tmp / "hls"), "--hlsjs", HLSJS,
                             "--uploads", str(tmp / "up"), *extra,
                             *(["--open"] if secret is None else [])],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert node.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = node.stdout.readline()
        if not line:
            raise AssertionError(f"join ended: {node.communicate()[1]}")
        event = json.loads(line)
        if event["event"] == "node_up":
            return node, f"http://127.0.0.1:{event['port']}"
    raise AssertionError("no node_up after 60 s")


def make_video(path: Path, seconds: int = 12) -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=640x360:rate=25:duration={seconds}", "-f", "lavfi", "-i",
                    f"sine=frequency=330:duration={seconds}", "-c:v", "libx264", "-preset",
                    "ultrafast", "-g", "25", "-c:a", "aac", "-shortest", str(path)],
                   check=True, timeout=120)
    return path


def sign_in(page: Any, base: str) -> None:
    page.goto(f"{base}/")
    page.fill("#secret", SECRET)
    page.click("#loginform button")
    page.wait_for_selector("#live:not(.off)", timeout=15_000)


def test_sign_in_upload_watch_and_download(tmp_path: Path) -> None:
    assert _missing() is None, _missing()
    from playwright.sync_api import sync_playwright

    src = make_video(tmp_path / "clip.mp4")
    node, base = start_join(tmp_path)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(accept_downloads=True)
                page = context.new_page()
                # A closed swarm: the node's name and a sign-in form, nothing else.
                page.goto(f"{base}/")
                assert page.is_visible("#login") and not page.is_visible("#main")
                assert page.inner_text("#node")
                page.fill("#secret", "not it")
                page.click("#loginform button")
                page.wait_for_function("document.getElementById('loginerr').textContent")
                assert not page.is_visible("#main")
                sign_in(page, base)
                assert page.is_visible("#main") and not page.is_visible("#login")
                assert page.inner_text("#mode") == "closed swarm"

                page.set_input_files("#file", str(src))
                page.select_option("#profile", "480p")
                page.click("#upbutton")
                page.wait_for_selector(".job", timeout=30_000)
                maps: list[str] = []
                states: list[str] = []
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    now = page.evaluate(
                        "(() => { const j = document.querySelector('.job');"
                        " const m = j.querySelector('.map');"
                        " return [j.dataset.state, m ? m.dataset.map : '']; })()")
                    states.append(now[0])
                    if not maps or maps[-1] != now[1]:
                        maps.append(now[1])
                    if now[0] in ("done", "failed"):
                        break
                    time.sleep(0.05)
                assert states[-1] == "done", (states[-1], page.inner_text("#joblist"))
                # The map changed while the job ran: several states drawn, none all-done
                # before the end, and the last one all done.
                running = [m for m in maps if m and set(m) != {"d"}]
                assert len(running) >= 2, maps
                assert maps[-1] == "d" * len(maps[-1]), maps

                # The player picked up the stream and plays it.
                page.wait_for_function("window.player.playing === true", timeout=30_000)
                player = page.evaluate("window.player")
                assert player["mode"] in ("hls.js", "native"), player
                assert not [e for e in player["errors"] if "fatal" in e], player
                assert page.evaluate("document.getElementById('video').currentTime") > 0
                # And with hls.js, served by the node (not from the internet), to its end.
                other = context.new_page()  # signed in: the same cookie
                other.goto(f"{base}/?hlsjs")
                other.wait_for_function("window.player.playing === true", timeout=30_000)
                assert other.evaluate("window.player.mode") == "hls.js"
                assert other.evaluate("Hls.version") == Path(HLSJS).parent.name.split("-")[-1]
                other.evaluate("document.getElementById('video').playbackRate = 4")
                other.wait_for_function("document.getElementById('video').ended",
                                        timeout=60_000)
                frames = other.evaluate(
                    "document.getElementById('video').getVideoPlaybackQuality()"
                    ".totalVideoFrames")
                assert frames == media_info(src).video.frames
                assert not [e for e in other.evaluate("window.player.errors") if "fatal" in e]
                other.close()

                with page.expect_download() as info:
                    page.click("a.download")
                saved = tmp_path / "from-browser.mp4"
                info.value.save_as(saved)
                assert info.value.suggested_filename == "clip.480p.mp4"
                assert media_info(saved).video.frames == media_info(src).video.frames
            finally:
                browser.close()
    finally:
        node.terminate()
        node.wait(timeout=30)
