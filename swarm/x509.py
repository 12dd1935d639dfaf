"""A self-signed Ed25519 X.509 certificate, made in pure Python, with no I/O.

Why by hand: the node's TLS (peer.tls) needs a certificate per identity, and ``swarm.pyz``
must run where no ``openssl`` command and no compiled crypto module exist. The stdlib
``ssl`` (OpenSSL 1.1.1 or later) loads an Ed25519 key and certificate and does the TLS
signatures itself; only the key pair and the certificate's one signature are made here.

Ed25519 follows RFC 8032 section 5.1 (extended coordinates, SHA-512). It signs once per
identity, on the device's own key, so constant-time arithmetic does not matter here: no
one can time it. The certificate is v3 with no extensions, CN ``swarm-<device id>``, valid
from a day before it is made until 9999-12-31 (RFC 5280's "no expiry"): peers pin it by its
SHA-256 fingerprint and never check it against a CA, a name or a date.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Final

__all__ = ["ed25519_public", "ed25519_sign", "fingerprint", "pem", "private_key_der", "self_signed"]

_P: Final = 2 ** 255 - 19
_L: Final = 2 ** 252 + 27742317777372353535851937790883648493
_D: Final = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1: Final = pow(2, (_P - 1) // 4, _P)

_Point = tuple[int, int, int, int]


def _add(a: _Point, b: _Point) -> _Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = 2 * t1 * t2 * _D % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _mul(s: int, p: _Point) -> _Point:
    q: _Point = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if x & 1 != sign:
        x = _P - x
    return x


_GY: Final = 4 * pow(5, _P - 2, _P) % _P
_GX: Final = _recover_x(_GY, 0)
_G: Final[_Point] = (_GX, _GY, 1, _GX * _GY % _P)


def _compress(p: _Point) -> bytes:
    x, y, z, _ = p
    zi = pow(z, _P - 2, _P)
    x, y = x * zi % _P, y * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _expand(seed: bytes) -> tuple[int, bytes]:
    if len(seed) != 32:
        raise ValueError("an Ed25519 private key is 32 bytes")
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def ed25519_public(seed: bytes) -> bytes:
    a, _ = _expand(seed)
    return _compress(_mul(a, _G))


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    a, prefix = _expand(seed)
    public = _compress(_mul(a, _G))
    r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little") % _L
    big_r = _compress(_mul(r, _G))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % _L
    return big_r + ((r + k * a) % _L).to_bytes(32, "little")


# -- DER: only the few types a certificate needs ---------------------------------------------
def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + body


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


def _int(v: int) -> bytes:
    return _tlv(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))


_ED25519_OID: Final = bytes.fromhex("06032b6570")  # 1.3.101.112
_CN_OID: Final = bytes.fromhex("0603550403")  # 2.5.4.3


def _name(common_name: str) -> bytes:
    return _seq(_tlv(0x31, _seq(_CN_OID, _tlv(0x0C, common_name.encode()))))


def self_signed(seed: bytes, common_name: str, now: float, serial: int = 1) -> bytes:
    """The DER of a self-signed certificate for the Ed25519 key ``seed``, made at ``now``
    (Unix seconds)."""
    start = time.gmtime(now - 86400)
    validity = _seq(_tlv(0x17, time.strftime("%y%m%d%H%M%SZ", start).encode()),
                    _tlv(0x18, b"99991231235959Z"))
    algorithm = _seq(_ED25519_OID)
    spki = _seq(algorithm, _tlv(0x03, b"\x00" + ed25519_public(seed)))
    tbs = _seq(_tlv(0xA0, _int(2)), _int(serial), algorithm, _name(common_name), validity,
               _name(common_name), spki)
    return _seq(tbs, algorithm, _tlv(0x03, b"\x00" + ed25519_sign(seed, tbs)))


def private_key_der(seed: bytes) -> bytes:
    """PKCS #8 (RFC 8410) of the Ed25519 key ``seed``."""
    return _seq(_int(0), _seq(_ED25519_OID), _tlv(0x04, _tlv(0x04, seed)))


def pem(kind: str, der: bytes) -> str:
    b64 = base64.encodebytes(der).decode().replace("\n", "")
    lines = "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {kind}-----\n{lines}\n-----END {kind}-----\n"


def fingerprint(cert_der: bytes) -> str:
    """What peers pin: SHA-256 of the certificate's DER, 64 lowercase hex digits."""
    return hashlib.sha256(cert_der).hexdigest()
