"""TLS between paired devices: each identity's certificate, and contexts that pin one.

The certificate (``tls.pem`` beside identity.json, mode 0600: the Ed25519 key and the
self-signed certificate in one PEM file) is made once per identity: with the ``openssl``
command where there is one, else by ``swarm.x509`` in pure Python, so ``swarm.pyz`` needs
no compiled module beyond the stdlib ``ssl``. Its SHA-256 fingerprint travels inside the
pairing transcript (swarm.pairing) and is stored with the device in devices.json.

A client trusts no CA and no name: ``pinned_context`` accepts exactly the certificates whose
fingerprints it is given. The check runs inside the handshake (``_PinnedObject``, the class
the context's ``wrap_bio`` returns, which is what trio's SSLStream and so httpcore use), so a
wrong certificate fails the connection before a single byte of a request is written.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm import x509
from swarm.errors import UsageError

from .identity import write_private

__all__ = ["CERT_FILE", "Cert", "PinMismatch", "load_cert", "pinned_context", "server_context"]

log = logging.getLogger(__name__)

CERT_FILE = "tls.pem"
_OPENSSL_TIMEOUT_S = 30.0


class PinMismatch(ssl.SSLError):
    """The other end's certificate is not the one pinned for it."""


@dataclass(frozen=True, slots=True)
class Cert:
    path: Path  # key and certificate, PEM, one file
    der: bytes
    fingerprint: str


def _with_openssl(common_name: str, folder: Path) -> str | None:
    """Key and certificate PEM made by the openssl command; None where it cannot."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tls-") as tmp:
        key, crt = Path(tmp, "key.pem"), Path(tmp, "crt.pem")
        try:
            subprocess.run([exe, "genpkey", "-algorithm", "ed25519", "-out", str(key)],
                           check=True, capture_output=True, timeout=_OPENSSL_TIMEOUT_S)
            subprocess.run([exe, "req", "-x509", "-new", "-key", str(key), "-subj",
                            f"/CN={common_name}", "-days", "36500", "-set_serial",
                            str(secrets.randbits(63)), "-out", str(crt)],
                           check=True, capture_output=True, timeout=_OPENSSL_TIMEOUT_S)
            return key.read_text() + crt.read_text()
        except (OSError, subprocess.SubprocessError) as exc:  # e.g. an openssl without Ed25519
            log.info("openssl could not make the certificate (%s); making it in Python", exc)
            return None


def _in_python(common_name: str) -> str:
    seed = secrets.token_bytes(32)
    der = x509.self_signed(seed, common_name, time.time(), serial=secrets.randbits(63))
    return x509.pem("PRIVATE KEY", x509.private_key_der(seed)) + x509.pem("CERTIFICATE", der)


def _read(path: Path) -> Cert:
    text = path.read_text(encoding="ascii")
    begin = text.index("-----BEGIN CERTIFICATE-----")
    der = ssl.PEM_cert_to_DER_cert(text[begin:])
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(path)  # key matches certificate
    return Cert(path, der, x509.fingerprint(der))


def load_cert(folder: Path, device_id: str, *, use_openssl: bool = True) -> Cert:
    """This identity's certificate, made (and written) on first use."""
    path = folder / CERT_FILE
    if not path.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"swarm-{device_id}"
        text = (_with_openssl(name, folder) if use_openssl else None) or _in_python(name)
        write_private(path, text.encode("ascii"), create=True)  # else another's is read
    try:
        return _read(path)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise UsageError(f"{path} is damaged ({exc}); move it away to make a new one (and "
                         "pair this device again)") from exc


def server_context(cert: Cert) -> ssl.SSLContext:
    """What a node serves TLS with: TLS 1.2 or later, no client certificate asked (clients
    prove who they are with their pair key's signatures, swarm.auth)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.sslobject_class = _WholeReads
    ctx.load_cert_chain(cert.path)
    return ctx


class _WholeReads(ssl.SSLObject):
    """An SSLObject whose ``read`` returns every record already received, not just one.

    OpenSSL's read stops at a record's end (16 kB), so trio's SSLStream handed hypercorn and
    httpcore a quarter of what each socket read brought in, and each piece costs a pass
    through h11 and the event loop (bench/transfer)."""

    def read(self, len: int = 1024, buffer: Any = None) -> Any:  # the stdlib's names
        if buffer is not None:
            return super().read(len, buffer)
        first = super().read(len)  # raises SSLWantReadError when nothing is there yet
        pieces, got = [first], builtins.len(first)
        while first and got < len:
            try:
                more = super().read(len - got)
            except ssl.SSLError:  # WantRead: all taken; anything else: the next read says it
                break
            if not more:
                break
            pieces.append(more)
            got += builtins.len(more)
        return pieces[0] if builtins.len(pieces) == 1 else b"".join(pieces)


class _PinnedObject(_WholeReads):
    """An SSLObject whose handshake completes only with a pinned certificate."""

    def do_handshake(self) -> None:
        super().do_handshake()  # raises SSLWantReadError until the server's cert is here
        der = self.getpeercert(binary_form=True)
        pins: frozenset[str] = getattr(self.context, "pins", frozenset())
        seen = hashlib.sha256(der).hexdigest() if der else "none"
        if seen not in pins:
            raise PinMismatch(f"the other device's certificate {seen[:16]}... is not the one "
                              "pinned for it (re-pair it if it made a new identity)")


class _PinnedContext(ssl.SSLContext):
    pins: frozenset[str] = frozenset()


def pinned_context(fingerprints: Iterable[str]) -> ssl.SSLContext:
    """A client context that accepts only certificates with these SHA-256 fingerprints."""
    ctx = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # no name: the pin is the identity
    ctx.verify_mode = ssl.CERT_NONE  # no CA: the pin is checked in _PinnedObject
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.sslobject_class = _PinnedObject
    pins = frozenset(f.lower() for f in fingerprints)
    if not pins:
        raise ValueError("a pinned context needs at least one fingerprint")
    ctx.pins = pins
    return ctx
