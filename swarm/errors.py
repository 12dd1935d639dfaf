"""The one exception tree of swarm.

    SwarmError                      root: catch this to catch anything swarm raises on purpose
    +-- UsageError                  the user asked for something impossible (bad profile, bad path)
    |   +-- ProfileError            a profile file or field is invalid (names the field)
    +-- MediaError                  the input or an intermediate file is not usable media
    |   +-- ProbeError              ffmpeg could not read the input at all
    |   +-- VerifyError             an encoded chunk or the output broke a promise
    +-- EncodeError                 an ffmpeg child failed
    +-- LocalProtocolError          we were about to do something the protocol forbids (our bug)
    +-- PeerError                   another node failed us: catch this around a request to one
        +-- TransportError          the request or its reply did not get through (refused,
        |   |                       cut, timed out): httpx's errors, mapped at peer.client
        |   +-- CoordinatorGone     the coordinator stayed silent too long; its job is dropped
        +-- RemoteProtocolError     a peer sent something malformed or illegal (becomes a 4xx)
            +-- AuthError           a request was unsigned, stale or wrongly signed (401)

The split between LocalProtocolError and RemoteProtocolError follows h11: the first is a
defect here, the second is a peer's fault and must never crash a node. Transport errors are
mapped into the tree where requests are made (``peer.client``), as httpx maps its
transports' errors into its own, so callers catch one swarm error, never a library's.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CoordinatorGone",
    "EncodeError",
    "LocalProtocolError",
    "MediaError",
    "PeerError",
    "ProbeError",
    "ProfileError",
    "RemoteProtocolError",
    "SwarmError",
    "TransportError",
    "UsageError",
    "VerifyError",
]


class SwarmError(Exception):
    """Root of every error swarm raises on purpose."""


class UsageError(SwarmError):
    """The user asked for something that cannot be done; the CLI exits 2."""


class ProfileError(UsageError):
    """A profile is invalid; the message names the file and the field."""


class MediaError(SwarmError):
    """Input or intermediate media is unusable."""


class ProbeError(MediaError):
    """ffmpeg could not read the input (not a video, empty, truncated)."""


class VerifyError(MediaError):
    """An encoded chunk or the merged output failed verification."""


class EncodeError(SwarmError):
    """An ffmpeg child process failed."""


class LocalProtocolError(SwarmError):
    """We tried something the protocol or a state table forbids: a bug on this side."""


class PeerError(SwarmError):
    """Another node failed us: it could not be reached, or it answered wrongly."""


class TransportError(PeerError):
    """A request or its reply did not get through: refused, reset, timed out."""


class CoordinatorGone(TransportError):
    """The coordinator stopped answering; the job is dropped."""


class RemoteProtocolError(PeerError):
    """A peer sent a malformed or illegal message; the HTTP layer turns it into a 4xx."""

    status_code: int = 400

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


class AuthError(RemoteProtocolError):
    """Unsigned, stale or wrongly signed request."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=401)
