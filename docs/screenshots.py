"""Make the README's screenshots of the node's web page: docs/web-page.png, docs/web-player.png.

    python3 docs/screenshots.py

Runs a real `swarm join` (open swarm, any free port) with --hls and --hlsjs, uploads a
lavfi test video from the page in headless Chromium (Debian's /usr/bin/chromium via
Playwright, as tests/test_web_browser.py does), and shoots the page while the job encodes
and the player once it plays. Needs ffmpeg on PATH or SWARM_FFMPEG, and hls.js at
SWARM_HLSJS (default: /var/cache/swarm-ci/hls.js-1.7.4/hls.min.js).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
HLSJS = os.environ.get("SWARM_HLSJS", "/var/cache/swarm-ci/hls.js-1.7.4/hls.min.js")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required"]


def _ffmpeg() -> str:
    found = os.environ.get("SWARM_FFMPEG") or shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg  # type: ignore[import-untyped]

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "Garden party.mp4"
        subprocess.run([_ffmpeg(), "-v", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=640x360:rate=25:duration=40", "-f", "lavfi", "-i",
                        "sine=frequency=330:duration=40", "-c:v", "libx264", "-preset",
                        "ultrafast", "-g", "25", "-c:a", "aac", "-shortest", str(src)],
                       check=True)
        env = os.environ | {"PYTHONPATH": str(REPO), "SWARM_CACHE_DIR": str(tmp / "cache")}
        env.pop("SWARM_SECRET", None)
        node = subprocess.Popen(
            [sys.executable, "-c", "import cli; cli.main()", "join", "--port", "0",
             "--no-bench", "--json", "--name", "living-room-pc", "--hls", str(tmp / "hls"),
             "--hlsjs", HLSJS, "--uploads", str(tmp / "up")],
            env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert node.stdout is not None
            port = next(json.loads(line)["port"] for line in node.stdout
                        if json.loads(line)["event"] == "node_up")
            base = f"http://127.0.0.1:{port}"
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=ARGS)
                page = browser.new_page(viewport={"width": 900, "height": 760})
                page.goto(f"{base}/?hlsjs")
                page.wait_for_selector("#live:not(.off)")
                page.set_input_files("#file", str(src))
                page.select_option("#profile", "480p")
                page.click("#upbutton")
                # Mid-job: some chunks done, some running.
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    chunks = page.evaluate(
                        "(document.querySelector('.map') || {dataset: {}}).dataset.map || ''")
                    if "d" in chunks and "r" in chunks and chunks.count("d") >= 2:
                        break
                    time.sleep(0.1)
                try:
                    page.wait_for_function(
                        "document.getElementById('video').currentTime > 2", timeout=120_000)
                except Exception:
                    print(page.evaluate("[window.player, window.board.jobs]"))
                    raise
                page.evaluate("document.getElementById('video').pause()")
                page.screenshot(path=str(DOCS / "web-page.png"))
                page.locator("#player").screenshot(path=str(DOCS / "web-player.png"))
                browser.close()
        finally:
            node.terminate()
            node.wait(30)
    for name in ("web-page.png", "web-player.png"):
        print(f"{DOCS / name}: {(DOCS / name).stat().st_size // 1024} kB")


if __name__ == "__main__":
    main()
