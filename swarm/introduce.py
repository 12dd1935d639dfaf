"""Introductions: how membership spreads from one pairing to the rest of the swarm. Pure.

When device A pairs a new device B, A already holds a key with each device C it was paired
with before. A makes a fresh key K_BC for each such C and tells both sides about the other:
to C it sends B's id, name, certificate fingerprint and K_BC, and to B the same of C. Each
message is signed as any request between A and its receiver is (swarm.auth, the pair key),
and its content is sealed under that pair key, since it travels over plain HTTP and K_BC is
a secret: whoever reads it could act as B towards C.

The trust this adds is the one the user gave: a device paired with A believes whom A
introduces, as it believed A. A cannot introduce anyone into a pairing that exists already
(the receiver keeps the key it agreed on itself), and a revoked A introduces no one.

The seal is encrypt-then-MAC with HMAC-SHA256 as the PRF for both (a counter-mode keystream,
then a tag over nonce and ciphertext), from the stdlib alone: ``swarm.pyz`` has no AES. Keys
for the two uses are derived from the pair key under their own labels.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

from swarm.errors import RemoteProtocolError

__all__ = ["MAX_SEALED", "Introduction", "open_sealed", "seal"]

_NONCE = 16
_TAG = 32
_ENC: Final = b"swarm-v1 introduce enc"
_MAC: Final = b"swarm-v1 introduce mac"
# An introduction is one device (ids, a name of at most 63 characters, a fingerprint and a
# key: about 300 bytes of JSON); this bounds what a receiver decrypts and parses.
MAX_SEALED = 1024
_ID = re.compile(r"[0-9a-f]{32}")
_CERT = re.compile(r"(?:[0-9a-f]{64})?")
_KEY = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,63}")  # as peer.identity names devices


def _keystream(key: bytes, nonce: bytes, n: int) -> bytes:
    blocks = (hmac.new(key, nonce + i.to_bytes(4, "big"), hashlib.sha256).digest()
              for i in range((n + 31) // 32))
    return b"".join(blocks)[:n]


def _subkeys(pair_key: bytes) -> tuple[bytes, bytes]:
    return (hmac.new(pair_key, _ENC, hashlib.sha256).digest(),
            hmac.new(pair_key, _MAC, hashlib.sha256).digest())


def seal(pair_key: bytes, plaintext: bytes, nonce: bytes | None = None) -> bytes:
    """``nonce || ciphertext || tag``; a fresh random nonce unless one is given (tests)."""
    nonce = secrets.token_bytes(_NONCE) if nonce is None else nonce
    if len(nonce) != _NONCE:
        raise ValueError("the nonce is 16 bytes")
    enc, mac = _subkeys(pair_key)
    body = bytes(a ^ b for a, b in zip(plaintext, _keystream(enc, nonce, len(plaintext)),
                                       strict=True))
    return nonce + body + hmac.new(mac, nonce + body, hashlib.sha256).digest()


def open_sealed(pair_key: bytes, sealed: bytes) -> bytes:
    """The plaintext; RemoteProtocolError (403) if the seal was not made with this key or
    was changed on the way."""
    if not _NONCE + _TAG <= len(sealed) <= MAX_SEALED:
        raise RemoteProtocolError("a sealed introduction of the wrong size", status_code=400)
    nonce, body, tag = sealed[:_NONCE], sealed[_NONCE:-_TAG], sealed[-_TAG:]
    enc, mac = _subkeys(pair_key)
    if not hmac.compare_digest(hmac.new(mac, nonce + body, hashlib.sha256).digest(), tag):
        raise RemoteProtocolError("the introduction is not sealed with our pairing",
                                  status_code=403)
    return bytes(a ^ b for a, b in zip(body, _keystream(enc, nonce, len(body)), strict=True))


@dataclass(frozen=True, slots=True)
class Introduction:
    """One device to pin: its id, name, certificate fingerprint ("" if none) and the key
    the introducer made for it and the receiver."""

    device_id: str
    name: str
    cert: str
    key: bytes

    def to_bytes(self) -> bytes:
        return json.dumps({"id": self.device_id, "name": self.name, "cert": self.cert,
                           "key": self.key.hex()}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Introduction:
        """Parsed and checked; RemoteProtocolError (400) for anything else."""
        try:
            raw: Any = json.loads(data)
            ok = (isinstance(raw, dict) and set(raw) == {"id", "name", "cert", "key"}
                  and all(isinstance(raw[k], str) for k in raw)
                  and _ID.fullmatch(raw["id"]) is not None
                  and _CERT.fullmatch(raw["cert"]) is not None
                  and _KEY.fullmatch(raw["key"]) is not None
                  and _NAME.fullmatch(raw["name"]) is not None)
        except ValueError as exc:
            raise RemoteProtocolError("an introduction that is not JSON") from exc
        if not ok:
            raise RemoteProtocolError("a malformed introduction")
        return cls(raw["id"], raw["name"], raw["cert"], bytes.fromhex(raw["key"]))
