"""This device's identity and the devices it is paired with, kept in the user's config dir.

Where: ``Environment.config_dir`` (swarm.config: ``$SWARM_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/swarm``, else ``~/.config/swarm``), made mode 0700.
Two files, each mode 0600 and written atomically (a temporary file in the same directory,
fsynced, then renamed over the old one), so a crash or a concurrent reader never sees
half a file:

- ``identity.json``: a Diffie-Hellman key pair in the pairing group (``swarm.pairing``),
  made on first run; the device id is the first 128 bits of SHA-256 of the public key, so
  an id names one key and can later be checked against it. And the device's name.
- ``devices.json``: the paired devices, each with its id, a name (editable), the 256-bit
  key agreed when pairing, the SHA-256 fingerprint of its TLS certificate (peer.tls; ""
  for a device paired before certificates existed: pair it again for TLS), and when it
  was added. The key is a secret: whoever holds it can act as that pair.

A file that is not what we wrote is an error with its path, never silently replaced: that
would forget every pairing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm.errors import UsageError
from swarm.pairing import GENERATOR, PRIME, Paired

__all__ = ["Device", "Devices", "Identity", "load_identity", "write_private"]

_VERSION = 1
_HEX_ID = re.compile(r"[0-9a-f]{32}")
_CERT = re.compile(r"(?:[0-9a-f]{64})?")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,63}")
MAX_DEVICES = 256  # a swarm is a household's or an office's machines


def write_private(path: Path, data: bytes, *, create: bool = False) -> bool:
    """``data`` to ``path`` atomically, readable by the owner only. ``create``: only if
    ``path`` does not exist yet, as an identity or certificate is made: two processes
    starting at once on one config directory would otherwise each replace the other's, and
    one would run with a key the file no longer holds (OpenSSL even reads a certificate
    file twice, certificate then key, and saw one of each). False: another was first."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not create:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # fails if it exists: the first one made stays
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc


def default_name() -> str:
    """The host name, cut to what a device name may hold."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0])[:63]
    return name.strip("-.") or "device"


def check_name(name: str) -> str:
    if _NAME.fullmatch(name) is None:
        raise UsageError(f"a device name is 1-63 letters, digits, '.', '_' or '-': {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class Identity:
    device_id: str
    name: str
    public: int
    private: int


def _device_id(public: int) -> str:
    return hashlib.sha256(public.to_bytes(256, "big")).hexdigest()[:32]


def load_identity(folder: Path) -> Identity:
    """This device's identity, made (and written) on first use."""
    path = folder / "identity.json"
    if not path.exists():
        private = secrets.randbits(320) | (1 << 319)
        public = pow(GENERATOR, private, PRIME)
        ident = Identity(_device_id(public), default_name(), public, private)
        body = {"version": _VERSION, "device_id": ident.device_id, "name": ident.name,
                "public": f"{public:x}", "private": f"{private:x}"}
        if write_private(path, (json.dumps(body, indent=1) + "\n").encode(), create=True):
            return ident
    raw = _read_json(path)
    try:
        public, private = int(raw["public"], 16), int(raw["private"], 16)
        ident = Identity(raw["device_id"], check_name(raw["name"]), public, private)
        ok = (raw["version"] == _VERSION and pow(GENERATOR, private, PRIME) == public
              and ident.device_id == _device_id(public))
    except (KeyError, TypeError, ValueError, UsageError) as exc:
        raise UsageError(f"{path} is damaged ({exc}); move it away to make a new identity "
                         "(and pair this device again)") from exc
    if not ok:
        raise UsageError(f"{path} is damaged (its key does not match its id); move it away "
                         "to make a new identity (and pair this device again)")
    return ident


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    name: str
    key: bytes
    added: float
    cert: str = ""  # its TLS certificate's fingerprint; "": paired before there were any

    def to_json(self) -> dict[str, Any]:
        return {"id": self.device_id, "name": self.name, "key": self.key.hex(),
                "cert": self.cert, "added": self.added}


class Devices:
    """devices.json, read on construction; every change is written at once."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "devices.json"
        self.devices: dict[str, Device] = {}
        if self.path.exists():
            raw = _read_json(self.path)
            try:
                if raw["version"] != _VERSION:
                    raise ValueError(f"version {raw['version']!r}")
                for d in raw["devices"]:
                    dev = Device(d["id"], check_name(d["name"]), bytes.fromhex(d["key"]),
                                 float(d["added"]), d.get("cert", ""))
                    if (_HEX_ID.fullmatch(dev.device_id) is None or len(dev.key) != 32
                            or not isinstance(dev.cert, str)
                            or _CERT.fullmatch(dev.cert) is None):
                        raise ValueError(f"bad entry {dev.device_id!r}")
                    self.devices[dev.device_id] = dev
            except (KeyError, TypeError, ValueError, UsageError) as exc:
                raise UsageError(f"{self.path} is damaged ({exc})") from exc

    def _save(self) -> None:
        body = {"version": _VERSION, "devices": [d.to_json() for d in self.devices.values()]}
        write_private(self.path, (json.dumps(body, indent=1) + "\n").encode())

    def key_for(self, device_id: str) -> bytes | None:
        dev = self.devices.get(device_id)
        return None if dev is None else dev.key

    def cert_for(self, device_id: str) -> str | None:
        """The pinned TLS fingerprint of a paired device; None if unknown (or not paired)."""
        dev = self.devices.get(device_id)
        return None if dev is None or not dev.cert else dev.cert

    def add(self, paired: Paired, now: float | None = None) -> Device:
        """Pin a device just paired; pairing it again replaces its key (the newer pairing
        is the one both sides hold)."""
        if paired.peer_id not in self.devices and len(self.devices) >= MAX_DEVICES:
            raise UsageError(f"already {MAX_DEVICES} paired devices; revoke some first")
        name = paired.peer_name
        taken = {d.name for d in self.devices.values() if d.device_id != paired.peer_id}
        if name in taken:  # names are for people; keep them telling devices apart
            name = f"{name[:54]}-{paired.peer_id[:8]}"
        dev = Device(paired.peer_id, name, paired.key, time.time() if now is None else now,
                     paired.peer_cert)
        self.devices[dev.device_id] = dev
        self._save()
        return dev

    def find(self, which: str) -> Device:
        """A device by its name, its id, or a unique prefix of its id (4 or more digits)."""
        named = [d for d in self.devices.values() if d.name == which]
        if not named and len(which) >= 4:
            named = [d for d in self.devices.values() if d.device_id.startswith(which)]
        if len(named) != 1:
            known = ", ".join(sorted(d.name for d in self.devices.values())) or "none"
            raise UsageError(f"{'no' if not named else 'more than one'} paired device "
                             f"{which!r} (paired: {known})")
        return named[0]

    def rename(self, which: str, name: str) -> Device:
        dev = self.find(which)
        check_name(name)
        if any(d.name == name and d.device_id != dev.device_id for d in self.devices.values()):
            raise UsageError(f"another paired device is already called {name!r}")
        new = Device(dev.device_id, name, dev.key, dev.added, dev.cert)
        self.devices[dev.device_id] = new
        self._save()
        return new

    def revoke(self, which: str) -> Device:
        dev = self.find(which)
        del self.devices[dev.device_id]
        self._save()
        return dev
