"""Pairing two devices with a short code: SPAKE2 with key confirmation, with no I/O.

The new device shows a code (``CODE_DIGITS`` digits); someone types it on a device already
in the swarm, which runs ``Initiator`` against the new device's ``Door``. Both end up with
the same 256-bit per-pair key and each other's pinned device id, or with nothing.

Why a PAKE and not "HMAC with the code": six digits are 10^6 guesses. Anything computed
from the code alone and sent on the LAN (a MAC, a hash) lets an eavesdropper try all of
them offline in a second. With SPAKE2 (Abdalla and Pointcheval 2005, as in RFC 9382) the
code only blinds Diffie-Hellman shares, ``X = g^x * M^w`` and ``Y = g^y * N^w``: every
candidate code explains a recorded transcript equally well (each ``X / M^w'`` is a group
element), so a recording tests no guess; an active attacker tests one guess per run, and
the door allows ``MAX_ATTEMPTS`` runs per code before it burns the code and shows another.

The group: RFC 3526's 2048-bit MODP group (group 14), a safe prime ``P = 2Q + 1`` with
``g = 2``, which generates the subgroup of quadratic residues of prime order ``Q`` (``P`` is
7 mod 8, so 2 is a residue). ``M`` and ``N`` must have discrete logs nobody knows (whoever
knew ``log_g M`` could test every code offline): they are derived by hashing a fixed label
to a number below ``P`` (SHA-256 in counter mode, 64 bits more than ``P`` has, so the bias
is negligible) and squaring it, which lands in the subgroup. Anyone can re-derive them; no
one chose them. Received elements are checked to lie in the subgroup (``e^Q == 1``) and
not be 1 or P-1, so a small-subgroup element cannot leak bits of a secret exponent.

Transcript and keys: ``TT`` is the length-prefixed concatenation of the protocol label,
the initiator's and the responder's device id, name and TLS certificate fingerprint
(peer.tls), ``X``, ``Y``, the shared ``K`` and ``w``; both identities are thus bound, and a
relay that swaps an id or a certificate breaks the keys.
``SHA-512(TT)`` gives ``Ke`` (the pair key source) and ``Ka`` (the confirmation key).
The responder sends its confirmation MAC first, the initiator answers with its own: the
responder stores the pair only once it has seen the initiator's MAC, and the initiator
only once it has checked the responder's.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Final

from swarm.errors import RemoteProtocolError, UsageError

__all__ = [
    "CODE_DIGITS",
    "GENERATOR",
    "MAX_ATTEMPTS",
    "ORDER",
    "PRIME",
    "Door",
    "Initiator",
    "M",
    "N",
    "Paired",
    "PairingFailed",
    "Started",
    "hash_to_group",
    "new_code",
    "normalise_code",
    "parse_finish",
    "parse_start",
    "parse_started",
]

# RFC 3526, section 3: the 2048-bit MODP group.
PRIME: Final = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)
GENERATOR: Final = 2
ORDER: Final = (PRIME - 1) // 2
_ELEMENT_BYTES: Final = 256
_LABEL: Final = b"swarm-pair-v1"

CODE_DIGITS: Final = 6
# Runs per code before the door burns it: an attacker's chance is MAX_ATTEMPTS in 10^6.
MAX_ATTEMPTS: Final = 5
# A started run is forgotten after this long; a person types the code within it.
SESSION_TTL_S: Final = 60.0
# At most one run per this interval, so a scripted attacker burns codes no faster than this.
MIN_START_INTERVAL_S: Final = 1.0

_ID = re.compile(r"[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,63}")
_HEX_ELEMENT = re.compile(r"[0-9a-f]{1,512}")
_MAC = re.compile(r"[0-9a-f]{64}")
_CERT = re.compile(r"[0-9a-f]{64}")  # SHA-256 of the device's TLS certificate
_SESSION = re.compile(r"[A-Za-z0-9_-]{16,64}")


class PairingFailed(RemoteProtocolError):
    """A run that did not pair: wrong code, refused or malformed step (4xx)."""


def hash_to_group(label: bytes) -> int:
    """An element of the order-Q subgroup whose discrete log no one knows."""
    need = (PRIME.bit_length() + 64 + 7) // 8
    stream = b"".join(hashlib.sha256(label + i.to_bytes(4, "big")).digest()
                      for i in range(need // 32 + 1))
    u = int.from_bytes(stream[:need], "big") % PRIME
    element = pow(u, 2, PRIME)
    if element in (0, 1):  # probability ~2^-2000; checked so a bad label cannot slip by
        raise ValueError(f"label {label!r} hashes to a degenerate element")
    return element


M: Final = hash_to_group(_LABEL + b" M")
N: Final = hash_to_group(_LABEL + b" N")


def new_code() -> str:
    return f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"


def normalise_code(text: str) -> str:
    """``text`` as typed ("123 456", "123-456") as the code's digits; UsageError if not one."""
    code = re.sub(r"[\s-]", "", text)
    if not (len(code) == CODE_DIGITS and code.isascii() and code.isdigit()):
        raise UsageError(f"a pairing code is {CODE_DIGITS} digits, as the new device shows it")
    return code


def _password(code: str) -> int:
    # 512 bits, below Q: w only has to be a distinct, fixed function of the code.
    return int.from_bytes(hashlib.sha512(_LABEL + b" w\n" + code.encode()).digest())


def _element_bytes(e: int) -> bytes:
    return e.to_bytes(_ELEMENT_BYTES, "big")


def _parse_element(text: object) -> int:
    if not isinstance(text, str) or _HEX_ELEMENT.fullmatch(text) is None:
        raise PairingFailed("malformed group element")
    e = int(text, 16)
    if not 1 < e < PRIME - 1 or pow(e, ORDER, PRIME) != 1:
        raise PairingFailed("group element outside the prime-order subgroup")
    return e


# RFC 3526 section 8 asks for exponents of at least twice the group's strength (~110 bits
# for 2048-bit); 320 bits keeps a margin and costs a sixth of a full 2047-bit exponent,
# which matters on a loaded Pi.
_EXPONENT_BITS: Final = 320


def _secret_exponent() -> int:
    return secrets.randbits(_EXPONENT_BITS) | (1 << (_EXPONENT_BITS - 1))


@dataclass(frozen=True, slots=True)
class _Keys:
    pair_key: bytes
    confirm_initiator: str
    confirm_responder: str


def _keys(ids: tuple[str, str, str, str, str, str], x_elem: int, y_elem: int, k: int,
          w: int) -> _Keys:
    parts = [_LABEL, *(s.encode() for s in ids), _element_bytes(x_elem), _element_bytes(y_elem),
             _element_bytes(k), w.to_bytes(_ELEMENT_BYTES, "big")]
    tt = b"".join(len(p).to_bytes(8, "big") + p for p in parts)
    digest = hashlib.sha512(tt).digest()
    ke, ka = digest[:32], digest[32:]
    kc_a = hmac.new(ka, b"confirm initiator", hashlib.sha256).digest()
    kc_b = hmac.new(ka, b"confirm responder", hashlib.sha256).digest()
    return _Keys(hmac.new(ke, b"pair key", hashlib.sha256).digest(),
                 hmac.new(kc_a, tt, hashlib.sha256).hexdigest(),
                 hmac.new(kc_b, tt, hashlib.sha256).hexdigest())


@dataclass(frozen=True, slots=True)
class Paired:
    """The outcome both sides store: the other device, pinned, and the shared key."""

    peer_id: str
    peer_name: str
    key: bytes
    peer_cert: str  # the fingerprint of its TLS certificate, confirmed with the key


@dataclass(frozen=True, slots=True)
class Started:
    """The door's answer to a start: its identity, its share and its confirmation MAC."""

    session: str
    device_id: str
    name: str
    cert: str
    element: str
    confirm: str

    def to_json(self) -> dict[str, Any]:
        return {"session": self.session, "device_id": self.device_id, "name": self.name,
                "cert": self.cert, "element": self.element, "confirm": self.confirm}


def _check_identity(device_id: object, name: object, cert: object) -> tuple[str, str, str]:
    if not isinstance(device_id, str) or _ID.fullmatch(device_id) is None:
        raise PairingFailed("malformed device id")
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise PairingFailed("malformed device name")
    if not isinstance(cert, str) or _CERT.fullmatch(cert) is None:
        raise PairingFailed("malformed certificate fingerprint")
    return device_id, name, cert


def _fields(obj: object, names: set[str]) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != names:
        raise PairingFailed(f"expected exactly the fields {sorted(names)}")
    return obj


def parse_start(obj: object) -> tuple[str, str, str, int]:
    """(device_id, name, cert, element) of a decoded /v1/pair/start body."""
    body = _fields(obj, {"device_id", "name", "cert", "element"})
    device_id, name, cert = _check_identity(body["device_id"], body["name"], body["cert"])
    return device_id, name, cert, _parse_element(body["element"])


def parse_started(obj: object) -> Started:
    body = _fields(obj, {"session", "device_id", "name", "cert", "element", "confirm"})
    device_id, name, cert = _check_identity(body["device_id"], body["name"], body["cert"])
    _parse_element(body["element"])
    if not isinstance(body["session"], str) or _SESSION.fullmatch(body["session"]) is None:
        raise PairingFailed("malformed session")
    if not isinstance(body["confirm"], str) or _MAC.fullmatch(body["confirm"]) is None:
        raise PairingFailed("malformed confirmation")
    return Started(body["session"], device_id, name, cert, body["element"], body["confirm"])


def parse_finish(obj: object) -> tuple[str, str]:
    """(session, confirm) of a decoded /v1/pair/finish body."""
    body = _fields(obj, {"session", "confirm"})
    session, confirm = body["session"], body["confirm"]
    if not isinstance(session, str) or _SESSION.fullmatch(session) is None:
        raise PairingFailed("malformed session")
    if not isinstance(confirm, str) or _MAC.fullmatch(confirm) is None:
        raise PairingFailed("malformed confirmation")
    return session, confirm


@dataclass
class Initiator:
    """The device already in the swarm, where someone typed the code."""

    code: str
    device_id: str
    name: str
    cert: str  # this device's TLS certificate fingerprint
    _x: int = field(default_factory=_secret_exponent, repr=False)

    def __post_init__(self) -> None:
        self.code = normalise_code(self.code)
        self._w = _password(self.code)
        self.element = pow(GENERATOR, self._x, PRIME) * pow(M, self._w, PRIME) % PRIME

    def start_body(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "name": self.name, "cert": self.cert,
                "element": f"{self.element:x}"}

    def finish(self, started: Started) -> tuple[Paired, dict[str, Any]]:
        """Check the door's confirmation; the pair and the body of /v1/pair/finish.

        Raises PairingFailed on a wrong code (or a door that is not who it says)."""
        y_elem = _parse_element(started.element)
        if started.device_id == self.device_id:
            raise PairingFailed("the other device has this device's id")
        n_w_inv = pow(pow(N, self._w, PRIME), -1, PRIME)
        k = pow(y_elem * n_w_inv % PRIME, self._x, PRIME)
        keys = _keys((self.device_id, self.name, self.cert, started.device_id, started.name,
                      started.cert), self.element, y_elem, k, self._w)
        if not hmac.compare_digest(keys.confirm_responder, started.confirm):
            raise PairingFailed("wrong code: the other device's confirmation does not match",
                                status_code=403)
        return (Paired(started.device_id, started.name, keys.pair_key, started.cert),
                {"session": started.session, "confirm": keys.confirm_initiator})


@dataclass
class _Pending:
    session: str
    started_at: float
    expect: str
    paired: Paired


@dataclass
class Door:
    """The new device's side: shows ``code``, answers at most ``MAX_ATTEMPTS`` runs of it.

    Each start spends one attempt (the initiator may learn from the answer whether its one
    guess was right, so the count has to be taken there, not at finish). When the attempts
    are spent the code is replaced: the screen shows the new one. ``now`` is any clock that
    only moves forward, passed in."""

    device_id: str
    name: str
    cert: str  # this device's TLS certificate fingerprint
    code: str = field(default_factory=new_code)
    attempts_left: int = MAX_ATTEMPTS
    burnt: int = 0  # codes replaced after failed attempts, for the screen
    _pending: _Pending | None = field(default=None, repr=False)
    _last_start: float | None = field(default=None, repr=False)

    def _burn(self) -> None:
        self.code, self.attempts_left, self._pending = new_code(), MAX_ATTEMPTS, None
        self.burnt += 1

    def start(self, obj: object, now: float) -> Started:
        peer_id, peer_name, peer_cert, x_elem = parse_start(obj)
        if peer_id == self.device_id:
            raise PairingFailed("the other device has this device's id")
        if self._last_start is not None and now - self._last_start < MIN_START_INTERVAL_S:
            raise PairingFailed("too many pairing attempts; wait a second", status_code=429)
        # A new start replaces a run in progress: an initiator that found the code wrong
        # walks away without a finish, and must not block the door. (A third device could
        # cut into an honest run this way; the honest run then fails and is retried, and
        # each cut spends one of the attacker's attempts.)
        self._last_start = now
        w = _password(self.code)
        self.attempts_left -= 1
        y = _secret_exponent()
        y_elem = pow(GENERATOR, y, PRIME) * pow(N, w, PRIME) % PRIME
        m_w_inv = pow(pow(M, w, PRIME), -1, PRIME)
        k = pow(x_elem * m_w_inv % PRIME, y, PRIME)
        keys = _keys((peer_id, peer_name, peer_cert, self.device_id, self.name, self.cert),
                     x_elem, y_elem, k, w)
        session = secrets.token_urlsafe(18)
        self._pending = _Pending(session, now, keys.confirm_initiator,
                                 Paired(peer_id, peer_name, keys.pair_key, peer_cert))
        if self.attempts_left <= 0:
            # The answer is out; whether it was right shows at finish. Replace the code now
            # but keep this one run finishable.
            pending = self._pending
            self._burn()
            self._pending = pending
        return Started(session, self.device_id, self.name, self.cert, f"{y_elem:x}",
                       keys.confirm_responder)

    def finish(self, obj: object, now: float) -> Paired:
        session, confirm = parse_finish(obj)
        pending = self._pending
        if (pending is None or not hmac.compare_digest(pending.session, session)
                or now - pending.started_at >= SESSION_TTL_S):
            raise PairingFailed("no such pairing run (expired or never started)",
                                status_code=404)
        self._pending = None
        if not hmac.compare_digest(pending.expect, confirm):
            raise PairingFailed("wrong code", status_code=403)
        self._burn()  # a code pairs one device, once
        return pending.paired
