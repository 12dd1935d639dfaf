"""The web page's session cookie in a closed swarm, with no I/O.

A browser has no way to sign requests as nodes do (``swarm.auth``), so the person types the
secret once; the node answers with a cookie ``EXPIRY.MAC``, where MAC is an HMAC of the
expiry under the key derived from the secret (the same PBKDF2 key as request signing, so a
guess at the passphrase costs as much here as anywhere). The cookie carries no secret and
is HttpOnly (no script reads it) and SameSite=Strict (another site's form cannot upload with
it). Every node of the swarm accepts every other's cookie; changing the secret ends them all.

What can go wrong: a stolen cookie works until it expires (``SESSION_S``), as with any
bearer cookie on plain HTTP; the LAN is the trust boundary, as it is for the secret itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

from swarm.auth import _key

__all__ = ["COOKIE", "SESSION_S", "check_session", "new_session", "secret_matches",
           "session_from_header"]

COOKIE: Final = "swarm_session"
# A working day: long enough not to ask again while a job runs overnight on a phone's tab.
SESSION_S: Final = 24 * 3600
_DOMAIN: Final = b"swarm-v1 web session"
_VALUE = re.compile(r"([0-9]{1,16})\.([0-9a-f]{64})")
# A Cookie header bigger than this is not a browser talking to us.
MAX_COOKIE_HEADER: Final = 4096


def _mac(secret: str, expiry: int) -> str:
    return hmac.new(_key(secret), _DOMAIN + b"\n" + str(expiry).encode(),
                    hashlib.sha256).hexdigest()


def new_session(secret: str, now: float) -> str:
    """The cookie's value for a session starting at wall-clock ``now``."""
    expiry = int(now) + SESSION_S
    return f"{expiry}.{_mac(secret, expiry)}"


def check_session(secret: str | None, value: str | None, now: float) -> bool:
    """Whether ``value`` is an unexpired session of ``secret``; an open swarm (None) lets
    everyone in."""
    if secret is None:
        return True
    if not value:
        return False
    m = _VALUE.fullmatch(value)
    if m is None:
        return False
    expiry = int(m.group(1))
    if expiry < now or expiry > now + SESSION_S + 60:  # 60 s: clock steps between nodes
        return False
    return hmac.compare_digest(m.group(2), _mac(secret, expiry))


def session_from_header(header: str | None) -> str | None:
    """Our cookie's value from a ``Cookie`` request header, if it is there."""
    if not header or len(header) > MAX_COOKIE_HEADER:
        return None
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def secret_matches(secret: str, typed: str) -> bool:
    """Compares digests, so the time taken says nothing about a prefix of the secret."""
    return hmac.compare_digest(hashlib.sha256(secret.encode("utf-8")).digest(),
                               hashlib.sha256(typed.encode("utf-8")).digest())
