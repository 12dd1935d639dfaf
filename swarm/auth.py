"""Request signing with the optional swarm secret, with no I/O.

Every request between nodes of a swarm that has a secret carries two headers::

    X-Swarm-Time:      integer milliseconds since the Unix epoch
    X-Swarm-Signature: hex HMAC-SHA256(key, "swarm-v1" LF METHOD LF path?query LF ms LF digest)

``digest`` is ``body_digest(body)`` for bodies known up front (control messages, and the
empty body of a GET or DELETE). A streamed upload cannot be hashed before it is sent, so it
is signed with ``streamed_digest(attempt)`` (``"streamed:" + attempt id``) instead: the
signature then binds the request to one attempt, and the coordinator checks the chunk itself
before accepting it. The receiver decides which digest to verify against, so a sender cannot
downgrade a control request to a streamed one.

What can go wrong, and why it is shaped this way:

- Time must be wall-clock time (``time.time()``) on both sides, not ``trio.current_time()``:
  monotonic clocks of two machines share no epoch. Clocks must agree within ``max_skew_s``.
- The path must be the raw request target as sent (``httpx.Request.url.raw_path``; the ASGI
  ``raw_path`` plus ``"?" + query_string``), not a decoded or normalised form.
- A signed request can be replayed unchanged within the skew window; requests that change
  state name an attempt or are idempotent, which is what makes that harmless.
- The secret is a passphrase people type, and both the fingerprint (published over mDNS) and
  every signature (sniffable on the LAN) allow offline guessing; the HMAC key is therefore
  derived with PBKDF2 once per process, so that each guess costs as much as a node's startup.

With no secret (``None``) the swarm is open: ``sign`` adds nothing and ``verify`` accepts all.

Paired devices (swarm.pairing) sign the same canonical string with their per-pair key
instead of the secret: ``sign_device`` adds ``X-Swarm-Device`` (the sender's device id,
bound into the MAC under its own domain), and ``verify_device`` looks the key up by that id.
A per-pair key is 256 random bits, so it is used as is (no PBKDF2). A ``PairKey`` (our
device id and the key shared with the other device) stands wherever a secret does: ``sign``
then signs as ``sign_device``, and URL tokens and reply proofs are MACs under that key, so a
closed swarm's peer and coordinator prove the pairing to each other on every message.

Replies are proven, not signed like requests: a request's signature tells the receiver the
sender is of its swarm, but an open node accepts any signed request and answers it, so the
sender learns nothing from an answer unless the answer proves the secret too.
``reply_proof`` is an HMAC over a nonce the asker chose (fresh per request, so a recorded
reply cannot be replayed) and the answer's meaning; ``check_reply_proof`` verifies it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from swarm.errors import AuthError, LocalProtocolError, UsageError

__all__ = [
    "DEVICE_HEADER",
    "MAX_SKEW_S",
    "SIGNATURE_HEADER",
    "STREAMED_BODY",
    "TIME_HEADER",
    "Credential",
    "PairKey",
    "body_digest",
    "check_reply_proof",
    "fingerprint",
    "is_device_id",
    "reply_proof",
    "sign",
    "sign_device",
    "streamed_digest",
    "url_query",
    "url_token",
    "verify",
    "verify_device",
    "verify_url_token",
]

TIME_HEADER: Final = "X-Swarm-Time"
SIGNATURE_HEADER: Final = "X-Swarm-Signature"
DEVICE_HEADER: Final = "X-Swarm-Device"
_DEVICE_DOMAIN: Final = b"swarm-v1 device"
_DEVICE_ID = re.compile(r"[0-9a-f]{32}")
# Digest of a body streamed without a known hash; streamed_digest() appends the attempt id.
STREAMED_BODY: Final = "streamed"
# Laptops and Pis on NTP agree within a second; 30 s tolerates a Pi without an RTC that has
# only just synced, while keeping the replay window short.
MAX_SKEW_S: Final = 30.0

_DOMAIN: Final = b"swarm-v1"  # changes if the canonical string ever changes
_KDF_SALT: Final = b"swarm-v1 hmac key"  # fixed: all nodes must derive the same key
# About 0.1 s on a laptop and well under a second on a Raspberry Pi 4, paid once per process;
# every offline guess at the passphrase costs the same.
_KDF_ITERATIONS: Final = 200_000
_FINGERPRINT_HEX: Final = 16  # 64 bits: tells swarms apart on one LAN, says nothing useful
_METHOD = re.compile(r"[A-Z]{1,16}")
_DIGEST = re.compile(r"[0-9a-f]{64}|" + STREAMED_BODY + r"(?::[A-Za-z0-9_-]{8,64})?")
_TIME = re.compile(r"[0-9]{1,16}")  # int() alone would accept "+1", " 1" and "1_0"
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_REPLY_DOMAIN: Final = b"swarm-v1 reply"
_REPLY_PART = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # tokens, ids, tags: never a separator


@lru_cache(maxsize=4)
def _key(secret: str) -> bytes:
    if not secret:
        # An empty SWARM_SECRET is almost certainly a mistake; treating it as "open" would
        # silently drop the protection the user asked for.
        raise UsageError("the swarm secret must not be empty")
    return hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), _KDF_SALT, _KDF_ITERATIONS)


@dataclass(frozen=True, slots=True)
class PairKey:
    """The credential of one pairing: the id this device signs as, and the key pinned for
    the other device (swarm.pairing). Never printed: its repr hides the key."""

    device_id: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if _DEVICE_ID.fullmatch(self.device_id) is None or len(self.key) < 16:
            raise LocalProtocolError("a pair key needs a device id and a key of 16+ bytes")


# What a request is signed with: the swarm's secret, a pairing, or nothing (open).
Credential = str | PairKey | None


def is_device_id(text: str) -> bool:
    """Whether ``text`` has the form of a device id (peer.identity: 32 lower-case hex)."""
    return _DEVICE_ID.fullmatch(text) is not None


def _mac_key(cred: str | PairKey) -> bytes:
    return cred.key if isinstance(cred, PairKey) else _key(cred)


def fingerprint(secret: str) -> str:
    """A short hex id of the secret, safe to publish in mDNS TXT records."""
    mac = hmac.new(_key(secret), b"swarm-fingerprint", hashlib.sha256)
    return mac.hexdigest()[:_FINGERPRINT_HEX]


def body_digest(data: bytes) -> str:
    """Hex SHA-256 of a request body, the ``body_digest`` argument of sign and verify."""
    return hashlib.sha256(data).hexdigest()


def streamed_digest(attempt: str) -> str:
    """The ``body_digest`` argument for a streamed upload of one attempt."""
    return f"{STREAMED_BODY}:{attempt}"


def _canonical(method: str, path_with_query: str, millis: int, digest: str) -> bytes | None:
    # Every part is checked so that no part can contain the separator: otherwise two
    # different requests could share one canonical string, and so one signature.
    if (
        _METHOD.fullmatch(method) is None
        or not path_with_query.startswith("/")
        or not path_with_query.isascii()
        or not path_with_query.isprintable()
        or _DIGEST.fullmatch(digest) is None
    ):
        return None
    return b"\n".join(
        (_DOMAIN, method.encode(), path_with_query.encode(), str(millis).encode(), digest.encode())
    )


def _mac(secret: str | PairKey, canonical: bytes) -> str:
    return hmac.new(_mac_key(secret), canonical, hashlib.sha256).hexdigest()


def sign(
    secret: Credential,
    method: str,
    path_with_query: str,
    timestamp: float,
    body_digest: str,
) -> dict[str, str]:
    """Headers that authenticate one request; ``{}`` in an open swarm.

    ``timestamp`` is wall-clock seconds since the epoch. Raises LocalProtocolError if the
    method, path or digest could not appear in a well-formed request (a bug on this side).
    """
    if secret is None:
        return {}
    if isinstance(secret, PairKey):
        return sign_device(secret.key, secret.device_id, method, path_with_query, timestamp,
                           body_digest)
    millis = round(timestamp * 1000)
    canonical = _canonical(method.upper(), path_with_query, millis, body_digest)
    if canonical is None or millis < 0:
        raise LocalProtocolError(
            f"cannot sign {method!r} {path_with_query[:80]!r} with digest {body_digest[:80]!r}"
        )
    return {TIME_HEADER: str(millis), SIGNATURE_HEADER: _mac(secret, canonical)}


def _header(headers: Mapping[str, str], name: str) -> str:
    wanted = name.lower()
    found = [value for key, value in headers.items() if key.lower() == wanted]
    if not found:
        raise AuthError(f"missing {name} header")
    if len(found) > 1:  # a plain dict can hold both spellings; which one was signed?
        raise AuthError(f"more than one {name} header")
    return found[0]


def verify(
    secret: str | None,
    method: str,
    path_with_query: str,
    headers: Mapping[str, str],
    body_digest: str,
    now: float,
    max_skew_s: float = MAX_SKEW_S,
) -> None:
    """Raise AuthError (401) unless the request was signed with ``secret`` within the skew.

    ``headers`` is looked up case-insensitively; ``body_digest`` is what the receiver
    computed (or ``STREAMED_BODY`` on a streaming endpoint), never something the sender chose.
    """
    if secret is None:
        return
    raw_time = _header(headers, TIME_HEADER)
    raw_signature = _header(headers, SIGNATURE_HEADER)
    if _TIME.fullmatch(raw_time) is None:
        raise AuthError(f"unparseable {TIME_HEADER} header")
    if _SIGNATURE.fullmatch(raw_signature) is None:
        raise AuthError(f"unparseable {SIGNATURE_HEADER} header")
    millis = int(raw_time)
    age = now - millis / 1000
    # Written as "not within" so that a NaN clock fails closed.
    if not age <= max_skew_s:
        raise AuthError(f"stale request: signed {age:.1f} s ago (limit {max_skew_s:g} s)")
    if not age >= -max_skew_s:
        raise AuthError(
            f"request signed {-age:.1f} s in the future: are the clocks of both nodes set?"
        )
    canonical = _canonical(method.upper(), path_with_query, millis, body_digest)
    if canonical is None:
        raise AuthError("request cannot be signed: malformed method, path or digest")
    # Constant-time: a timing difference would let a peer find the signature byte by byte.
    if not hmac.compare_digest(_mac(secret, canonical), raw_signature):
        raise AuthError("wrong signature: is this node in another swarm (different secret)?")


def url_token(secret: Credential, path: str, attempt: str) -> str:
    """A capability for GETs of ``path`` on behalf of one attempt, to put in a URL.

    ffmpeg fetches the source itself and re-requests ranges whenever it seeks, so it cannot
    sign each request with a fresh timestamp; instead the URL carries a MAC bound to the
    path and the attempt, and the coordinator honours it only while that attempt runs.
    """
    if secret is None:
        return "open"
    canonical = _canonical("GET", path, 0, streamed_digest(attempt))
    if canonical is None:
        raise LocalProtocolError(f"cannot make a token for {path[:80]!r}")
    return _mac(secret, b"url\n" + canonical)


def url_query(secret: Credential, path: str, attempt: str) -> str:
    """The query string that authorises GETs of ``path`` for one attempt: its id, its
    token and, under a pairing, the device the token is for (the coordinator looks the key
    up by it; ffmpeg's requests carry no signature headers)."""
    query = f"attempt={attempt}&token={url_token(secret, path, attempt)}"
    return query + f"&device={secret.device_id}" if isinstance(secret, PairKey) else query


def verify_url_token(secret: Credential, path: str, attempt: str, token: str) -> None:
    """Raises AuthError unless ``token`` is url_token(secret, path, attempt)."""
    if secret is None:
        return
    if _SIGNATURE.fullmatch(token) is None:
        raise AuthError("missing or malformed source token")
    try:
        want = url_token(secret, path, attempt)
    except LocalProtocolError as exc:
        raise AuthError("malformed source request") from exc
    if not hmac.compare_digest(want, token):
        raise AuthError("wrong source token")


def _reply_canonical(nonce: str, parts: tuple[str, ...]) -> bytes | None:
    if not all(_REPLY_PART.fullmatch(p) for p in (nonce, *parts)):
        return None
    return b"\n".join((_REPLY_DOMAIN, nonce.encode(), *(p.encode() for p in parts)))


def reply_proof(secret: Credential, nonce: str, *parts: str) -> str | None:
    """Proof that a reply to the request with ``nonce`` comes from a holder of ``secret``;
    ``parts`` are what the reply says (its type, job, node, answer). None when open."""
    if secret is None:
        return None
    canonical = _reply_canonical(nonce, parts)
    if canonical is None:
        raise LocalProtocolError(f"cannot prove a reply with parts {parts!r}"[:200])
    return _mac(secret, canonical)


def check_reply_proof(secret: Credential, proof: str | None, nonce: str, *parts: str
                      ) -> None:
    """Raise AuthError unless ``proof`` is ``reply_proof(secret, nonce, *parts)``.

    In an open swarm (``secret`` None) every reply passes: there is nothing to prove."""
    if secret is None:
        return
    if proof is None:
        raise AuthError("the reply is not signed: the node is open, or of no swarm")
    canonical = _reply_canonical(nonce, parts)
    if canonical is None or _SIGNATURE.fullmatch(proof) is None:
        raise AuthError("the reply's proof is malformed")
    if not hmac.compare_digest(_mac(secret, canonical), proof):
        raise AuthError("the reply is signed with another secret")


def sign_device(key: bytes, device_id: str, method: str, path_with_query: str,
                timestamp: float, body_digest: str) -> dict[str, str]:
    """Headers that authenticate one request from paired device ``device_id`` with the key
    it shares with the receiver."""
    millis = round(timestamp * 1000)
    canonical = _canonical(method.upper(), path_with_query, millis, body_digest)
    if canonical is None or millis < 0 or _DEVICE_ID.fullmatch(device_id) is None:
        raise LocalProtocolError(f"cannot sign {method!r} {path_with_query[:80]!r}")
    mac = hmac.new(key, _DEVICE_DOMAIN + b"\n" + device_id.encode() + b"\n" + canonical,
                   hashlib.sha256).hexdigest()
    return {DEVICE_HEADER: device_id, TIME_HEADER: str(millis), SIGNATURE_HEADER: mac}


def verify_device(key_for: Callable[[str], bytes | None], method: str, path_with_query: str,
                  headers: Mapping[str, str], body_digest: str, now: float,
                  max_skew_s: float = MAX_SKEW_S) -> str:
    """The id of the paired device that signed the request; AuthError (401) if none did.

    ``key_for`` maps a device id to the key pinned for it (None: not paired, or revoked)."""
    device_id = _header(headers, DEVICE_HEADER)
    if _DEVICE_ID.fullmatch(device_id) is None:
        raise AuthError(f"unparseable {DEVICE_HEADER} header")
    key = key_for(device_id)
    if key is None:
        raise AuthError(f"device {device_id[:8]} is not paired with this one "
                        "(run `swarm pair` with the code it shows)")
    raw_time = _header(headers, TIME_HEADER)
    raw_signature = _header(headers, SIGNATURE_HEADER)
    if _TIME.fullmatch(raw_time) is None or _SIGNATURE.fullmatch(raw_signature) is None:
        raise AuthError("unparseable signature headers")
    millis = int(raw_time)
    age = now - millis / 1000
    if not -max_skew_s <= age <= max_skew_s:  # NaN fails closed
        raise AuthError(f"request signed {age:.1f} s from now: are both clocks set?")
    want = sign_device(key, device_id, method, path_with_query, millis / 1000, body_digest) \
        if _canonical(method.upper(), path_with_query, millis, body_digest) else None
    if want is None or not hmac.compare_digest(want[SIGNATURE_HEADER], raw_signature):
        raise AuthError(f"wrong signature from device {device_id[:8]}: paired again since?")
    return device_id
