"""Facts about this host that several modules need: its cores and its ports.

Its addresses, as other devices reach it, are ``peer.lan``'s."""

from __future__ import annotations

import os
import socket

__all__ = ["default_workers", "free_port"]


def default_workers() -> int:
    """Local encoder slots: one per two cores, but at least two. On 2 cores, 2 single-
    threaded slots beat or matched 1 two-threaded slot in all three bench/overhead sweeps
    (chunk parallelism hides each chunk's start-up and the verification decode)."""
    return max(2, (os.cpu_count() or 1) // 2)


def free_port(wanted: int) -> int:
    """``wanted`` if it can be bound (so `join --peer HOST:7800` finds us), else any port."""
    if wanted == 0:
        return 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", wanted))
        except OSError:
            return 0
    return wanted
