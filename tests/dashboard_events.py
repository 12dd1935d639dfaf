"""A recorded event sequence of a three-peer job (times in seconds), for render tests."""

from __future__ import annotations

from typing import Any

Event = dict[str, Any]


def job_events(chunks: int = 24) -> list[tuple[float, Event]]:
    """alpha (this device, 2 slots), bravo and charlie (remote; charlie fails and leaves)."""
    t = 0.0
    out: list[tuple[float, Event]] = [(t, {
        "event": "job_start", "input": "holiday-2024-final-cut.mov",
        "output": "holiday-2024-final-cut.hd.mp4", "profile": "hd", "frames": chunks * 100,
        "chunks": chunks, "duration_s": chunks * 4.0, "width": 1280, "height": 720,
        "workers": 2, "ffmpeg": "7.0", "job_id": "j1", "secret": True, "network": True,
        "name": "alpha"})]
    out.append((0.1, {"event": "listening", "port": 7800}))
    out.append((0.5, {"event": "peer_joined", "peer": "bravo", "address": "http://10.0.0.2:7800",
                      "arch": "aarch64", "cpus": 8, "score": 41e6}))
    out.append((0.6, {"event": "peer_joined", "peer": "charlie-with-a-very-long-hostname",
                      "address": "http://10.0.0.3:7800", "arch": "x86_64", "cpus": 4,
                      "score": 0.0}))
    peers = ["alpha", "alpha", "bravo", "charlie-with-a-very-long-hostname"]
    t = 1.0
    for c in range(chunks - 6):
        peer = peers[c % len(peers)]
        att = f"c{c:05d}a001"
        out.append((t, {"event": "chunk_start", "chunk": c, "attempt": att, "peer": peer,
                        "frames": 100, "remote": peer != "alpha"}))
        out.append((t + 0.5, {"event": "chunk_progress", "chunk": c, "frames": 50,
                              "attempt": att, "peer": peer, "fps": 100.0}))
        if peer.startswith("charlie") and c > 8:
            out.append((t + 0.7, {"event": "chunk_failed", "chunk": c, "attempt": att,
                                  "peer": peer, "reason": "ffmpeg exited 1",
                                  "requeued": True, "benched": c > 12}))
        elif c < chunks - 10:
            if peer == "bravo":
                out.append((t + 0.8, {"event": "chunk_upload", "chunk": c, "attempt": att,
                                      "peer": peer}))
            out.append((t + 1.0, {"event": "chunk_done", "chunk": c, "attempt": att,
                                  "peer": peer, "encode_s": 1.0, "frames": 100,
                                  "frames_done": 100 * (c + 1)}))
        t += 0.3
    out.append((t, {"event": "peer_left", "peer": "charlie-with-a-very-long-hostname"}))
    out.append((t + 0.1, {"event": "audio_start"}))
    out.append((t + 1.4, {"event": "audio_done", "encode_s": 1.3}))
    return out
