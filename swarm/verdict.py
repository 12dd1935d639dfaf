"""When failures mean a job cannot succeed, and why a peer was left out. Sans-I/O.

A job's attempts fail for two kinds of reason: the chunk (a source region, or a profile the
source does not fit) or the peer (a broken ffmpeg, a full disk). Either kind repeats, and
waiting for a peer that never comes only hides the reason. This module reads the failed
attempts of a ``Job`` and decides, with ``now`` passed in:

- ``hopeless_chunk``: a chunk failed the same way on every peer that could still take it,
  at least ``SAME_FAILURES`` times. No peer that exists can do it, so the job cannot
  succeed: end it with that reason.
- ``left_out``: why a benched peer is no longer given work (its failures, summarised).
- ``nobody_left``: every peer present is benched and nothing runs; a newcomer gets
  ``BENCH_GRACE_S`` to claim, then the job ends with each peer's reason.

"The same way" is ``reason_key``: the reason with its numbers blanked. Two attempts at one
chunk differ in attempt ids, file names, chunk numbers or an exit status, never in the
words ffmpeg or the verifier chose; "frame 1 at 0.041667 s, expected 0.033333 s" on one
slot and "frame 2 at ..." on another are the same fault of the same chunk. The cost of this
leniency is small: a chunk is only given up after every peer present failed it so. Outcomes other
than FAILED (an expired lease, a peer that left, a lost duplicate) say nothing about the
chunk and are not counted.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Mapping

from .job import Attempt, AttemptOutcome, ChunkState, Job

__all__ = ["BENCH_GRACE_S", "SAME_FAILURES", "hopeless_chunk", "left_out", "nobody_left",
           "reason_key"]

# Three failures of one chunk the same way: one could be a fluke (a killed process, a
# flaky read), two in a row on one machine still could; three is the job's own per-peer
# bench limit (``Job.max_failures``), so a 1-node job ends after the same count either way.
SAME_FAILURES = 3
# After the last peer is benched, a peer invited meanwhile may still claim: an invite and
# the first claim take well under a second on a LAN; five is generous and still far below
# the 60 s "nobody took work" stall that used to end such a job.
BENCH_GRACE_S = 5.0

# Hex first: an address such as 0x55e5d7b0e180 is one number, not digits between letters.
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+(?:\.\d+)?")


def reason_key(reason: str) -> str:
    """The reason with numbers blanked and case folded: what "the same way" compares."""
    return " ".join(_NUMBER.sub("#", reason).lower().split())


def _failed(job: Job, attempts: list[str]) -> list[Attempt]:
    return [job.attempts[x] for x in attempts
            if job.attempts[x].outcome is AttemptOutcome.FAILED]


def _able(job: Job, now: float) -> set[str]:
    """Peers that could still take a chunk: present, not benched, heard of within a lease."""
    return {name for name, ps in job.scheduler.peers.items()
            if not ps.benched and (ps.attempts or now - ps.seen <= job.lease_s)}


_CHUNK_FAILED = re.compile(r"^chunk \d+ failed: ")


def _detail(reason: str) -> tuple[str, str]:
    """("failed verification", detail) for the verifier's reasons, else ("failed", reason)
    without the encoder's own "chunk N failed: " (the message names the chunk already)."""
    what, sep, rest = reason.partition(": ")
    if sep and what in ("verification", "upload"):
        return f"failed {what}", rest
    return "failed", _CHUNK_FAILED.sub("", reason)


def hopeless_chunk(job: Job, chunk: int, now: float, waiting_for: Collection[str] = ()
                   ) -> str | None:
    """Why ``chunk`` cannot succeed on any peer present, or None while one still might.

    Hopeless when nothing runs at it, its latest failure's reason (``reason_key``) has
    come ``SAME_FAILURES`` times or more, and every able peer is among those that failed it
    so. A peer that has not tried it yet (another ffmpeg, another machine) keeps it alive,
    and so does one in ``waiting_for`` (invited, not claiming yet).
    """
    if waiting_for:
        return None
    c = job.chunks[chunk]
    if c.state is ChunkState.DONE or any(job.attempts[x].running for x in c.attempts):
        return None
    failed = _failed(job, c.attempts)
    if not failed:
        return None
    last = max(failed, key=lambda a: (a.ended or 0.0, a.id))
    key = reason_key(last.reason)
    same = [a for a in failed if reason_key(a.reason) == key]
    if len(same) < SAME_FAILURES:
        return None
    if not _able(job, now) <= {a.peer for a in same}:
        return None
    what, detail = _detail(last.reason)
    every = "all" if len(same) == len(c.attempts) else f"{len(same)} of"
    return f"chunk {chunk} {what} on {every} {len(c.attempts)} attempts: {detail}"


def left_out(job: Job, peer: str, names: Mapping[str, str] | None = None) -> str:
    """Why a benched peer gets no more work: its failure count and its commonest reason."""
    mine = [a for a in job.attempts.values() if a.peer == peer]
    failed = [a for a in mine if a.outcome is AttemptOutcome.FAILED]
    done = sum(a.outcome is AttemptOutcome.OK for a in mine)
    name = (names or {}).get(peer, peer)
    if not failed:
        return f"{name} left out"
    keys = Counter(reason_key(a.reason) for a in failed)
    top, n = keys.most_common(1)[0]
    example = next(a.reason for a in reversed(failed) if reason_key(a.reason) == top)
    how = "all the same way" if n == len(failed) else f"{n} of them the same way"
    chunks = "1 chunk" if done == 1 else f"{done} chunks"
    if len(failed) == 1:  # benched at once (another encoder's parameter sets): no pattern
        return f"{name} left out after 1 failed attempt ({chunks} done): {example}"
    return (f"{name} left out after {len(failed)} failed attempts ({how}; {chunks} done): "
            f"{example}")


def nobody_left(job: Job, now: float, names: Mapping[str, str] | None = None,
                grace_s: float = BENCH_GRACE_S) -> str | None:
    """Why the job cannot go on once every peer present is benched, or None.

    None while any attempt runs, any present peer is unbenched, or the last bench is
    younger than ``grace_s`` (pass 0 when no other peer can ever come: a local-only job).
    """
    if job.done or job.running():
        return None
    present = job.scheduler.peers
    if not present or any(not ps.benched for ps in present.values()):
        return None
    last = max((job.benched_at.get(p, now) for p in present), default=now)
    if now - last < grace_s:
        return None
    why = "; ".join(left_out(job, p, names) for p in present)
    return f"every encoder failed: {why}"
