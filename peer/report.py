"""The JSON report of a finished job (``--report``; the HTML report draws it).

Every key keeps its meaning across versions: scripts and ``bench/`` read them.
"""

from __future__ import annotations

from typing import Any

import trio

from .jobserver import JobServer
from .journal import Journal

__all__ = ["build_report"]


def build_report(server: JobServer, wall_s: float) -> dict[str, Any]:
    chunks = []
    peers: dict[str, dict[str, Any]] = {}
    for rec in server.in_order():  # source order: a cut chunk's rest has a later index
        c = server.job.chunks[rec.plan.index]
        chunks.append({
            "index": rec.plan.index, "start_s": round(rec.plan.start_s, 6),
            "frames": rec.plan.frames, "peer": rec.peer, "attempts": len(c.attempts),
            "encode_s": round(rec.encode_s, 3), "bytes_in": rec.bytes_in,
            "bytes_out": rec.bytes_out,
        })
        # A parted chunk (its "peer" names all of its parts'): each part's peer is credited
        # with the chunk, and with its frames by the part's share of the work.
        for name, share, encode_s in server.credits(rec.plan.index):
            p = peers.setdefault(name, {"name": name, "chunks": 0, "frames": 0,
                                        "encode_s": 0.0})
            p["chunks"] += 1
            p["frames"] += round(rec.plan.frames * share)
            p["encode_s"] = round(p["encode_s"] + encode_s, 3)
    # Per-attempt detail (added later; every key above keeps its meaning). Times are seconds
    # since the job's start; an attempt still running at the end (a duplicate that lost)
    # ends at the report's time.
    now = trio.current_time()
    attempts = []
    for a in sorted(server.job.attempts.values(), key=lambda a: (a.started, a.id)):
        end = a.ended if a.ended is not None else now
        attempts.append({
            "id": a.id, "chunk": a.chunk, "peer": server.name_of(a.peer),
            "start_s": round(a.started - server.t0, 3), "end_s": round(end - server.t0, 3),
            "outcome": a.outcome.value, "reason": a.reason, "frames": a.frames_done,
            # Prefetched: claimed while the peer's slot was still busy; it ran after that.
            "queued": a.queued,
            # Source bytes its connections really took (a local slot reads the file itself:
            # 0), and the bytes of its result upload that were received.
            "source_bytes_sent": ar.served if (ar := server.attempt_records.get(a.id)) else 0,
            "result_bytes_received": ar.uploaded if ar else 0,
        })
    earlier: list[dict[str, Any]] = []
    if server.journal is not None:
        # Attempts of crashed earlier runs of this job, from the journal (times relative to
        # that run's start), so the report tells the whole story after a resume. Kept apart
        # from "attempts", whose times share this run's clock (the timeline draws them).
        run = server.journal.run
        earlier = [{"id": r["id"].split(":", 1)[1], "chunk": r["chunk"], "peer": r["peer"],
                    "start_s": round(r["started"], 3),
                    "end_s": round(r["ended"], 3) if r["ended"] is not None else None,
                    "outcome": "lost" if r["outcome"] == "running" else r["outcome"],
                    "reason": r["reason"] or "coordinator crashed", "frames": 0,
                    "run": r["run"]}
                   for r in server.journal.attempts() if r["run"] < run]
    info = server.info
    return {
        "input": server.opts.job.input,
        "output": server.opts.job.output,
        "profile": server.opts.job.profile.name,
        "frames": info.video.frames,
        "duration_s": round(info.duration_s, 6),
        "wall_s": round(wall_s, 3),
        # How the chunk length was chosen: idle peers that answered mDNS before planning.
        "peers_seen": server.peers_seen, "chunk_s": round(server.chunk_s, 3),
        "width": server.vplan.width,
        "height": server.vplan.height,
        "job_id": server.job_id,
        "chunks": chunks,
        "peers": list(peers.values()),
        "attempts": attempts,
        "earlier_attempts": earlier,
        "retries": sum(max(0, len(c.attempts) - 1) for c in server.job.chunks),
        "duplicates": sum(1 for a in attempts if a["reason"] == "chunk already done"),
        "policy": server.job.policy,
        # The ffmpeg version of each encoder that took part (peers report theirs).
        "ffmpegs": {r.name: r.ffmpeg for k, r in sorted(server.peers.items())
                    if r.ffmpeg is not None and k in server.job.scheduler.peers},
        # Seconds of the audio encode run beside the chunks; null: encoded in the merge.
        "audio_encode_s": None if server.audio_s is None else round(server.audio_s, 3),
        # Chunks kept from a crashed earlier run of this job (their files re-verified).
        "resumed_chunks": sorted(server.restored),
        # Peers given no more work after repeated failures, and named peers never reached.
        "left_out": [{"peer": p, "reason": why} for p, why in server.left_out.items()],
        "unreachable": [{"peer": p, "reason": why} for p, why in server.unreachable.items()],
        # Every track of the output besides the video, and what was left out and why.
        "tracks": server.tracks.as_dict(),
        "journal": _journal_stats(server.journal),
        # Transfer totals over every attempt: source bytes sent to peers (pieces handed to a
        # connection already closed not counted), source bytes read from the file to serve
        # them, and result bytes received.
        "source_bytes_sent": sum(r.served for r in server.attempt_records.values()),
        "source_bytes_read": server.source_read,
        "result_bytes_received": sum(r.uploaded for r in server.attempt_records.values()),
        "source_bytes": info.size,
        # The plan's chunk count; "chunks" also lists the pieces cut from them.
        "chunks_planned": server.planned_chunks,
    }


def _journal_stats(journal: Journal | None) -> dict[str, Any]:
    if journal is None or not journal.writes:
        return {"writes": 0}
    return {"writes": journal.writes, "run": journal.run,
            "mean_write_ms": round(1000 * journal.write_s / journal.writes, 3)}
