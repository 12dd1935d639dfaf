"""When the other side counts as gone, and when a job counts as stalled. Sans-I/O.

The shell waits and acts; these decide, with ``now`` passed in:

- ``Silence``: a peer's view of its coordinator. Every answer resets it; once nothing has
  answered for longer than its limit (``Timings.coordinator_gone_s``) the coordinator is
  gone and the peer drops the job, so it is idle again within seconds.
- ``stalled``: the coordinator's view of a job nobody works on.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Silence", "stalled"]


@dataclass(slots=True)
class Silence:
    limit_s: float
    last_ok: float  # when the other side last answered

    def heard(self, now: float) -> None:
        self.last_ok = now

    def gone(self, now: float) -> bool:
        """Silent for longer than the limit (exactly the limit is not yet gone)."""
        return now - self.last_ok > self.limit_s


def stalled(*, running: bool, local_alive: bool, network: bool, idle_s: float,
            stall_s: float) -> str | None:
    """Why a job nobody encodes cannot finish, or None while it still may.

    ``running``: any attempt runs; ``local_alive``: a local slot can still claim;
    ``idle_s``: since the last claim or progress anywhere. Without a network no other
    encoder can come, so the job fails at once; with one, peers get ``stall_s`` to appear.
    """
    if running or local_alive:
        return None
    if not network:
        return "every local worker failed; see the messages above"
    if idle_s > stall_s:
        return f"no peer took any work for {stall_s:.0f} s (none found, or all failed)"
    return None
