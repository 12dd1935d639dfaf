"""Each source byte goes to the peers once: a large source, faststart and moov-at-end.

Real ffmpeg peers read the coordinator's source over real HTTP on 127.0.0.1, as in
test_node.py. Before issue 14's fix a 91 MB file cost 2.4 GB sent and 2.9 GB read: every
request streamed the file to its end after the peer's ffmpeg had closed it.

The bound: what the coordinator read from the file to serve the peers, and what it really
sent them, are each at most 1.1x the file plus a small cost per chunk (its index). What is
left over is what each chunk's ffmpeg reads besides its frames (the index, the first frames
it probes), and what was in the socket buffers when it closed a connection (README,
"Sending each byte once").
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio

from chunker.tools import find_ffmpeg
from chunker.verify import check_output
from media import FFMPEG, decode_errors, media_info
from peer.coordinator import run_encode
from peer.node import Node, NodeConfig
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings
from profiles import load_profile

# At least 50 MB (issue 14): lossless noise makes that many bytes of 320x240 in seconds.
SOURCE_SECONDS = 14
MIN_SOURCE_BYTES = 50_000_000
CHUNK_S = 3.5
# The index of these files (a moov of 300 video and ~560 audio samples) is about 10 kB.
PER_CHUNK = 256 * 1024


@pytest.fixture(scope="session")
def large(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same large source twice: its index at the end (what ffmpeg writes by default,
    and what a camera writes), and at the start (faststart, what a web upload has)."""
    folder = tmp_path_factory.mktemp("large")
    end, fast = folder / "moov_at_end.mp4", folder / "faststart.mp4"
    subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size=320x240:rate=25,noise=alls=100:allf=t,trim=duration={SOURCE_SECONDS}",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={SOURCE_SECONDS}",
         "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-bf", "2", "-g", "50",
         "-pix_fmt", "yuv420p", "-c:a", "aac", str(end)], check=True, timeout=120)
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", "-i", str(end), "-c", "copy",
                    "-movflags", "+faststart", str(fast)], check=True, timeout=120)
    return {"moov_at_end": end, "faststart": fast}


def _moov_first(path: Path) -> bool:
    """Whether the file's moov box comes before its mdat (top-level boxes, in order)."""
    with path.open("rb") as fh:
        while True:
            head = fh.read(8)
            if len(head) < 8:
                raise AssertionError("no moov or mdat box")
            size, kind = int.from_bytes(head[:4], "big"), head[4:]
            if size == 1:
                size = int.from_bytes(fh.read(8), "big") - 8
            if kind in (b"moov", b"mdat"):
                return kind == b"moov"
            fh.seek(size - 8, os.SEEK_CUR)


@pytest.mark.parametrize("layout", ["moov_at_end", "faststart"])
async def test_peers_get_each_source_byte_once(layout: str, large: dict[str, Path],
                                               tmp_path: Path) -> None:
    src = large[layout]
    size = src.stat().st_size
    assert size >= MIN_SOURCE_BYTES
    assert _moov_first(src) == (layout == "faststart")
    out = tmp_path / "out.mp4"
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            peers = []
            for name in ("peer-a", "peer-b"):
                node = Node(NodeConfig(name=name, port=0, host="127.0.0.1", secret="k",
                                       advertise=False, serve_pyz=False), find_ffmpeg())
                await nursery.start(node.run)
                peers.append(node)
            opts = EncodeOptions(
                JobIntent(str(src), str(out), load_profile("480p"), chunk_seconds=CHUNK_S),
                LocalSettings(no_local=True),
                NetworkSettings(enabled=True, discover=False, name="coord", secret="k",
                                peers=tuple(f"127.0.0.1:{p.port}" for p in peers)))
            report = await run_encode(opts)
            nursery.cancel_scope.cancel()
    chunks, attempts = len(report["chunks"]), len(report["attempts"])
    assert chunks >= 4
    # Each attempt its chunk's bytes once: a retry or a tail duplicate costs one chunk more.
    bound = 1.1 * size * attempts / chunks + attempts * PER_CHUNK
    sent, read = report["source_bytes_sent"], report["source_bytes_read"]
    assert report["source_bytes"] == size
    # The totals are the attempts' own counts; a kept chunk's bytes_in is its attempt's.
    assert sent == sum(a["source_bytes_sent"] for a in report["attempts"])
    assert all(c["bytes_in"] > 0 for c in report["chunks"])
    # Every frame was sent at least once, and what was sent was read from the file.
    print(f"{layout}: {size} B, {chunks} chunks, {attempts} attempts: sent {sent / size:.3f}x,"
          f" read {read / size:.3f}x (bound {bound / size:.3f}x)")
    assert size * 0.9 < sent <= read
    assert sent <= bound, f"sent {sent / size:.2f}x the file"
    assert read <= bound, f"read {read / size:.2f}x the file"
    received = report["result_bytes_received"]
    assert received == sum(a["result_bytes_received"] for a in report["attempts"])
    assert received >= sum(c["bytes_out"] for c in report["chunks"])
    # And the output is still every frame at its time, decoding silently.
    check_output(media_info(out), media_info(src))
    assert decode_errors(out) == ""
