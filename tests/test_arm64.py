"""A genuine aarch64 peer: Debian 12 arm64 (its own python3.11 and ffmpeg 5.1) under qemu-user.

`.ci/arm64-userland` builds the userland once and caches it on the machine; here it runs as
one host of a network-namespace LAN (tests/netns.py), chrooted, with a clean environment and
nothing but the standard library and the pyz on its path (`python3 -S -E`). The peer:

- fetches swarm.pyz over HTTP from an x86 `swarm join`, and checks its SHA-256;
- joins over mDNS, and encodes every chunk of a job whose x86 coordinator encodes nothing
  itself (--no-local): next to a fast x86 peer, a peer ten times slower rightly gets no
  chunk of a short job, so the job is its own;
- the coordinator's merged output has exactly the source's frames and timestamps.

The same job then runs on an x86 peer alone, for the speed figure the README quotes
(printed with `-s`). Skips without the userland; under CI (CI=true) a missing one fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from swarm_hosts import Swarm, SwarmProcess

from chunker.verify import check_output
from media import FFMPEG, decode_errors, media_info, min_psnr
from netns import Host, lan, requires_netns

pytestmark = [pytest.mark.netns, pytest.mark.slow, requires_netns]

ROOT = Path(os.environ.get("SWARM_ARM64_ROOT", "/var/cache/swarm-ci/arm64-bookworm"))
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
# 4 one-second chunks of 640x360: a few seconds each under emulation.
SOURCE_S = 4
FPS = 25
JOB_ARGS = ("-p", "480p", "--chunk-seconds", "1", "--no-local")
# Python under qemu starts in ~5 s and the job takes about half a minute here; the budget
# leaves room for a loaded 2-core machine.
BUDGET_S = 240
MIN_FRAME_PSNR_DB = 30.0
# The chroot's environment: nothing of ours (SWARM_FFMPEG, PYTHONPATH...) may leak in.
CLEAN_ENV = ("/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", "TERM=dumb")
FETCH = ("import sys, urllib.request; r = urllib.request.urlopen(sys.argv[1], timeout=60); "
         "open(sys.argv[2], 'wb').write(r.read()); print(r.headers['x-swarm-pyz-sha256'])")


def _userland_missing() -> str | None:
    if not (ROOT / "usr/bin/python3").exists() or not (ROOT / "usr/bin/ffmpeg").exists():
        return f"no arm64 userland at {ROOT} (run .ci/arm64-userland)"
    if not BINFMT.exists() or "enabled" not in BINFMT.read_text():
        return "qemu-aarch64 is not registered with binfmt_misc (run .ci/arm64-userland)"
    return None


@pytest.fixture(scope="module")
def userland() -> Path:
    reason = _userland_missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)  # .ci/run builds it first: missing there is a real failure
        pytest.skip(reason)
    return ROOT


def _chroot(root: Path, home: str, *argv: str) -> list[str]:
    # /proc inside the chroot (os.cpu_count, ffmpeg's thread count) is mounted in the
    # private mount namespace that `ip netns exec` gives the command: it goes with it.
    script = 'mount -t proc proc "$1/proc" 2>/dev/null; root=$1; shift; exec chroot "$root" "$@"'
    return ["sh", "-c", script, "sh", str(root), *CLEAN_ENV, f"HOME={home}", *argv]


def _start_chroot(sw: Swarm, host: Host, root: Path, home: str, label: str,
                  *argv: str) -> SwarmProcess:
    n = len(sw.started)
    err, out = sw.folder / f"{n:02d}-{label}.stderr", sw.folder / f"{n:02d}-{label}.stdout"
    with open(err, "wb") as e, open(out, "wb") as o:
        proc = host.popen(_chroot(root, home, *argv), stdout=o, stderr=e,
                          stdin=subprocess.DEVNULL)
    sp = SwarmProcess(host, label, proc, err, out, sw.deadline)
    sw.started.append(sp)
    return sp


def _make(path: Path) -> Path:
    subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate={FPS}:duration={SOURCE_S}",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={SOURCE_S}",
         "-c:v", "libx264", "-preset", "veryfast", "-g", str(FPS), "-bf", "2",
         "-c:a", "aac", "-shortest", str(path)], check=True, timeout=60)
    return path


def _exact(src: Path, out: Path, report: dict[str, Any]) -> None:
    check_output(media_info(out), media_info(src))  # every frame at the source's time
    assert decode_errors(out) == ""
    assert min_psnr(src, out, 640, 360) >= MIN_FRAME_PSNR_DB
    assert sum(c["frames"] for c in report["chunks"]) == report["frames"]


def _fps(report: dict[str, Any], peer: str) -> float:
    """The peer's frames over the span of its kept attempts (one slot: they follow each
    other, each fetching its source, encoding and uploading); attempts prefetched while
    another encodes overlap it, so their own durations do not add up."""
    kept = [a for a in report["attempts"] if a["peer"] == peer and a["outcome"] == "ok"]
    span = max(a["end_s"] for a in kept) - min(a["start_s"] for a in kept)
    return sum(a["frames"] for a in kept) / span


def test_arm64_peer_fetches_the_pyz_joins_by_mdns_and_encodes_exactly(
        userland: Path, tmp_path: Path) -> None:
    src = _make(tmp_path / "src.mp4")
    tag = f"swarm-test-{os.getpid()}"
    home = f"/tmp/{tag}"  # inside the chroot; removed at the end
    (userland / home.lstrip("/")).mkdir(parents=True, exist_ok=True)
    pyz_in_chroot = f"{home}/swarm.pyz"
    try:
        with lan(2) as net, Swarm(net, tmp_path, budget_s=BUDGET_S) as sw:
            x86, arm = net.hosts
            # What the peer runs on: aarch64 code, Python 3.11 and ffmpeg 5.1 of its own.
            probe = arm.run(_chroot(userland, home, "python3", "-S", "-E", "-c",
                                    "import platform; print(platform.machine())"), timeout=60)
            assert probe.stdout.strip() == "aarch64"
            version = arm.run(_chroot(userland, home, "ffmpeg", "-hide_banner", "-version"),
                              timeout=60).stdout
            assert version.startswith("ffmpeg version 5.1"), version[:200]
            # 1. An x86 peer serves its swarm.pyz; the arm64 device fetches it (stdlib only).
            server = sw.join(x86, "x86")
            server.wait_for("# sha256 ")
            digest = re.search(r"# sha256 ([0-9a-f]{64})", server.stderr())
            assert digest is not None
            assert f"curl -O http://{x86.address}:7800/swarm.pyz && python3 swarm.pyz join" \
                in server.stderr()
            fetched = arm.run(_chroot(userland, home, "python3", "-S", "-E", "-c", FETCH,
                                      f"http://{x86.address}:7800/swarm.pyz", pyz_in_chroot),
                              timeout=sw.deadline.left(120))
            assert fetched.stdout.strip() == digest.group(1), fetched.stderr
            data = (userland / pyz_in_chroot.lstrip("/")).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest.group(1)
            assert server.stop() == 0  # the job must be the slow peer's own

            # 2. The arm64 peer joins over mDNS and takes every chunk of the job.
            peer = _start_chroot(sw, arm, userland, home, "join-arm64", "python3", "-S", "-E",
                                 pyz_in_chroot, "join", "--no-bench", "--name", "arm64",
                                 "--open")
            peer.wait_for("ready on port", cap=120)
            assert f"at {arm.address}:7800" in peer.stderr()  # an address, not a hostname
            out, report_path = tmp_path / "arm.mp4", tmp_path / "arm.json"
            enc = sw.encode(x86, src, out, *JOB_ARGS, "--name", "coord",
                            "--report", str(report_path))
            assert enc.wait() == 0, enc.stderr()[-3000:]
            report = json.loads(report_path.read_text())
            assert {c["peer"] for c in report["chunks"]} == {"arm64"}
            _exact(src, out, report)
            arm_fps = _fps(report, "arm64")
            assert peer.stop() == 0

            # 3. The same job on one x86 peer, for the speed ratio.
            native = sw.join(x86, "x86-b")
            native.wait_for("ready on port")
            out2, report2_path = tmp_path / "x86.mp4", tmp_path / "x86.json"
            enc2 = sw.encode(x86, src, out2, *JOB_ARGS, "--name", "coord2",
                             "--report", str(report2_path))
            assert enc2.wait() == 0, enc2.stderr()[-3000:]
            report2 = json.loads(report2_path.read_text())
            _exact(src, out2, report2)
            x86_fps = _fps(report2, "x86-b")
            native.stop()
        sys.stdout.write(f"\narm64 peer (qemu-user, ffmpeg 5.1): {arm_fps:.1f} fps per chunk; "
                         f"x86 peer: {x86_fps:.1f} fps; ratio {x86_fps / arm_fps:.1f}x; "
                         f"pyz {len(data) / 1e6:.2f} MB\n")
    finally:
        shutil.rmtree(userland / home.lstrip("/"), ignore_errors=True)
