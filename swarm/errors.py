"""The one exception tree of swarm.

    SwarmError                      root: catch this to catch anything swarm raises on purpose
    +-- UsageError                  the user asked for something impossible (bad profile, bad path)
    |   +-- ProfileError            a profile file or field is invalid (names the field)
    +-- MediaError                  the input or an intermediate file is not usable media
    |   +-- ProbeError              ffmpeg could not read the input at all
    |   +-- VerifyError             an encoded chunk or the output broke a promise
    +-- EncodeError                 an ffmpeg child failed
    +-- LocalProtocolError          we were about to do something the protocol forbids (our bug)
    +-- RemoteProtocolError         a peer sent something malformed or illegal (becomes a 4xx)
        +-- AuthError               a request was unsigned, stale or wrongly signed (401)

The split between LocalProtocolError and RemoteProtocolError follows h11: the first is a
defect here, the second is a peer's fault and must never crash a node.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "EncodeError",
    "LocalProtocolError",
    "MediaError",
    "ProbeError",
    "ProfileError",
    "RemoteProtocolError",
    "SwarmError",
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


class RemoteProtocolError(SwarmError):
    """A peer sent a malformed or illegal message; the HTTP layer turns it into a 4xx."""

    status_code: int = 400

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


class AuthError(RemoteProtocolError):
    """Unsigned, stale or wrongly signed request."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=401)
