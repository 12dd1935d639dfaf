"""What a node says about itself on the LAN, as mDNS TXT properties: sans-I/O.

A node advertises one `_swarm._tcp.local.` service. Its SRV and A records say where it
listens; its TXT record carries a `PeerRecord`'s identity fields. This module turns a record
into TXT properties and back, and decides whether a discovered peer belongs to our swarm.
It never touches the network: `peer/discovery.py` is the zeroconf shell around it.

TXT properties are written by strangers: anything on the LAN can advertise our service type.
`from_txt` therefore bounds every value and parses numbers with strict patterns (Python's
`int()` accepts " 1_0\\n", `float()` accepts "nan"), and raises `RemoteProtocolError` for
anything malformed, so the browser can log and ignore the advertisement instead of crashing.

TXT keys (short, since the whole TXT record should stay well under one 512-byte packet):

    id     node id                       proto  protocol version (int)
    name   human name (hostname)         arch   machine architecture ("x86_64", "aarch64")
    cpus   usable CPU count              score  benchmark speed in work/s, 0 when unknown
    state  idle | busy | leaving         fp     fingerprint of the swarm secret, "" when open
    ver    software version              jobs   jobs it works on for coordinators (absent: 0)
    dev    device id ("" or absent: none) closed 1: takes work only from paired devices
"""

from __future__ import annotations

import ipaddress
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast, get_args

from swarm.errors import LocalProtocolError, RemoteProtocolError
from swarm.protocol import MAX_JOBS

__all__ = [
    "MAX_FRUITLESS_INVITES",
    "SERVICE_TYPE",
    "PeerEvent",
    "PeerRecord",
    "PeerTable",
    "State",
    "TxtProps",
    "Verdict",
    "access_verdict",
    "classify",
    "from_txt",
    "fruitless",
    "has_room",
    "instance_name",
    "pick_address",
    "server_name",
    "service_name",
    "to_txt",
]

SERVICE_TYPE = "_swarm._tcp.local."

State = Literal["idle", "busy", "leaving"]
Verdict = Literal["ok", "foreign-secret", "foreign-protocol", "unpaired", "closed"]
EventKind = Literal["added", "updated", "removed"]
# Mapping is invariant in its key, so spell out what zeroconf (bytes) and tests (str) pass.
TxtProps = (
    Mapping[bytes, bytes | None]
    | Mapping[str, str | None]
    | Mapping[bytes | str, bytes | str | None]
)

# RFC 6763 section 6.1: one TXT string is at most 255 bytes including "key=".
MAX_TXT_STRING = 255
# Our record has 9 keys; leave room for future ones but refuse a flood of junk keys.
MAX_TXT_KEYS = 32
# A DNS label (the service instance name) is at most 63 bytes (RFC 1035 section 2.3.4).
MAX_LABEL_BYTES = 63
MAX_NAME_BYTES = MAX_LABEL_BYTES
# Enough of the node id in the instance name that two hosts named alike do not collide,
# short enough to leave most of the label for the human-readable name.
NODE_ID_IN_NAME = 12
# Bounds on numbers a real machine can have; beyond them the record is junk.
MAX_CPUS = 4096
MAX_PROTOCOL = 65535
MAX_SCORE = 1e15

_NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_.+-]{1,32}")  # arch, version
_FINGERPRINT_RE = re.compile(r"(?:[0-9a-f]{8,64})?")
_DEVICE_RE = re.compile(r"(?:[0-9a-f]{32})?")
_UINT_RE = re.compile(r"[0-9]{1,6}")
# What repr(float) produces for a finite, non-negative value, and nothing else.
_UFLOAT_RE = re.compile(r"[0-9]{1,17}(?:\.[0-9]{1,17})?(?:e[+-]?[0-9]{1,3})?")


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """One node as advertised: identity, capacity and swarm membership.

    `host` is the address the node is reached at, as resolved from its A record; it is ""
    only in a node's own record before the shell has published it. Constructing an invalid
    record raises `LocalProtocolError` (our bug); `from_txt` turns the same failures in a
    peer's advertisement into `RemoteProtocolError`.
    """

    node_id: str
    name: str
    host: str
    port: int
    protocol: int
    arch: str
    cpus: int
    score: float = 0.0
    state: State = "idle"
    fingerprint: str = ""
    version: str = ""
    # Jobs it works on as a peer: "busy" with 0 < jobs < MAX_JOBS still takes one more
    # coordinator's job; busy with 0 is coordinating a job of its own.
    jobs: int = 0
    # Its identity (peer.identity), "" if it has none; and whether it is closed: it takes
    # work only from devices paired with it (a closed coordinator uses only paired ones).
    device: str = ""
    closed: bool = False

    def __post_init__(self) -> None:
        problem = _record_problem(self)
        if problem is not None:
            raise LocalProtocolError(f"invalid PeerRecord: {problem}")


def _record_problem(r: PeerRecord) -> str | None:
    """Say what is wrong with a record, or None; shared by both error directions."""
    if not isinstance(r.node_id, str) or not _NODE_ID_RE.fullmatch(r.node_id):
        return f"node_id {r.node_id!r} is not 1-64 letters, digits, '_' or '-'"
    if not isinstance(r.name, str) or not r.name.strip():
        return "name is empty"
    if len(r.name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"name is longer than {MAX_NAME_BYTES} bytes"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in r.name):
        return "name contains control characters"
    if r.host != "":
        try:
            ipaddress.ip_address(r.host)
        except ValueError:
            return f"host {r.host!r} is not an IP address"
    if type(r.port) is not int or not 0 < r.port <= 65535:
        return f"port {r.port!r} is out of range"
    if type(r.protocol) is not int or not 0 <= r.protocol <= MAX_PROTOCOL:
        return f"protocol {r.protocol!r} is out of range"
    if not isinstance(r.arch, str) or not _TOKEN_RE.fullmatch(r.arch):
        return f"arch {r.arch!r} is not a short token"
    if type(r.cpus) is not int or not 1 <= r.cpus <= MAX_CPUS:
        return f"cpus {r.cpus!r} is out of range"
    if not isinstance(r.score, float | int) or not math.isfinite(r.score):
        return f"score {r.score!r} is not a finite number"
    if not 0 <= r.score <= MAX_SCORE:
        return f"score {r.score!r} is out of range"
    if r.state not in get_args(State):
        return f"state {r.state!r} is not one of {get_args(State)}"
    if not isinstance(r.fingerprint, str) or not _FINGERPRINT_RE.fullmatch(r.fingerprint):
        return "fingerprint is not empty or 8-64 lowercase hex digits"
    if r.version != "" and (not isinstance(r.version, str) or not _TOKEN_RE.fullmatch(r.version)):
        return f"version {r.version!r} is not a short token"
    if type(r.jobs) is not int or not 0 <= r.jobs <= MAX_CPUS:
        return f"jobs {r.jobs!r} is out of range"
    if not isinstance(r.device, str) or not _DEVICE_RE.fullmatch(r.device):
        return "device is not empty or 32 lowercase hex digits"
    if type(r.closed) is not bool:
        return f"closed {r.closed!r} is not a bool"
    return None


def has_room(r: PeerRecord) -> bool:
    """Whether a job of ours can have this node's slots, as ``peer.recruit`` decides from
    its /v1/info: idle, or working for other coordinators with room for one more job (it
    then shares its slots among them, ``swarm.share``). A job's plan counts these."""
    return r.state == "idle" or (r.state == "busy" and 0 < r.jobs < MAX_JOBS)


def to_txt(record: PeerRecord) -> dict[str, str]:
    """TXT properties for `record`; host and port travel in the SRV and A records instead."""
    return {
        "id": record.node_id,
        "proto": str(record.protocol),
        "name": record.name,
        "arch": record.arch,
        "cpus": str(record.cpus),
        # repr() is the shortest string that round-trips the float exactly.
        "score": repr(float(record.score)),
        "state": record.state,
        "fp": record.fingerprint,
        "ver": record.version,
        "jobs": str(record.jobs),
        "dev": record.device,
        "closed": "1" if record.closed else "0",
    }


def from_txt(props: TxtProps, host: str, port: int) -> PeerRecord:
    """Parse a peer's TXT properties (as zeroconf hands them over) into a record.

    Raises `RemoteProtocolError` when a key is missing, a value is too long, not UTF-8, or
    not what its field allows. Unknown keys are ignored so newer peers can add fields.
    """
    if len(props) > MAX_TXT_KEYS:
        raise RemoteProtocolError(f"TXT record has {len(props)} keys, more than {MAX_TXT_KEYS}")
    values: dict[str, str | None] = {}
    for raw_key, raw_value in props.items():
        key = _decode(raw_key, "key").lower()
        value = None if raw_value is None else _decode(raw_value, key)
        # RFC 6763 section 6.4: when a key repeats, only the first occurrence counts.
        values.setdefault(key, value)

    def text(key: str, default: str | None = None) -> str:
        value = values.get(key)
        if value is None:
            if default is None:
                raise RemoteProtocolError(f"TXT record lacks {key!r}")
            return default
        return value

    def uint(key: str) -> int:
        value = text(key)
        if not _UINT_RE.fullmatch(value):
            raise RemoteProtocolError(f"TXT {key}={value!r} is not a small unsigned integer")
        return int(value)

    score_text = text("score", "0")
    if not _UFLOAT_RE.fullmatch(score_text):
        raise RemoteProtocolError(f"TXT score={score_text!r} is not a plain number")
    try:
        return PeerRecord(
            node_id=text("id"),
            name=text("name"),
            host=_parse_host(host),
            port=port,
            protocol=uint("proto"),
            arch=text("arch"),
            cpus=uint("cpus"),
            score=float(score_text),
            state=cast(State, text("state")),  # checked by PeerRecord.__post_init__
            fingerprint=text("fp", ""),
            version=text("ver", ""),
            jobs=uint("jobs") if "jobs" in values else 0,
            device=text("dev", ""),
            closed=_flag(text("closed", "0")),
        )
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"peer advertised {exc}") from exc


def _flag(value: str) -> bool:
    if value not in ("0", "1"):
        raise RemoteProtocolError(f"TXT closed={value!r} is not 0 or 1")
    return value == "1"


def _decode(raw: bytes | str, what: str) -> str:
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if len(data) > MAX_TXT_STRING:
        raise RemoteProtocolError(f"TXT {what} is longer than {MAX_TXT_STRING} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"TXT {what} is not UTF-8") from exc


def _parse_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError as exc:
        raise RemoteProtocolError(f"advertised address {host!r} is not an IP address") from exc


def pick_address(candidates: Sequence[str], our_interfaces: Sequence[str] = ()) -> str | None:
    """Choose which of a peer's advertised addresses to reach it at, or None.

    python-zeroconf publishes every address of a host on every interface, so a PC running
    Docker also advertises 172.17.0.1, which on our side is our own bridge. Preference:
    an address on one of our subnets that is not one of our own addresses; then any
    routable IPv4; then one equal to ours (it is ourselves, or a virtual bridge); then
    IPv4 link-local; then IPv6. Ties keep the advertised order (zeroconf lists the newest
    first). `our_interfaces` are "address/prefix" strings such as "10.77.0.11/24".
    """
    ours = []
    for text in our_interfaces:
        try:
            ours.append(ipaddress.ip_interface(text))
        except ValueError:
            continue
    own_addresses = {i.ip for i in ours}

    def rank(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
        if address.version == 6:
            return 4
        if address.is_link_local:
            return 3
        if address in own_addresses:
            return 2
        if any(address in i.network for i in ours):
            return 0
        return 1

    ranked = []
    for position, text in enumerate(candidates):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.is_loopback or address.is_unspecified or address.is_multicast:
            continue
        ranked.append((rank(address), position, str(address)))
    return min(ranked)[2] if ranked else None


def classify(record: PeerRecord, our_fingerprint: str, our_protocol: int,
             paired: Callable[[str], bool] | None = None) -> Verdict:
    """Whether a discovered peer is one of ours.

    ``paired`` is given when we are closed: then only a device paired with us is ours,
    whatever else it advertises ("unpaired": `swarm pair` it first). Otherwise a closed
    node is not ours (it takes work only from devices paired with it), and a different
    fingerprint means another swarm (or an open node beside a secret swarm): its requests
    would fail authentication, so it is shown as foreign and never invited. Only within our
    swarm does a protocol mismatch matter ("upgrade that node").
    """
    verdict = access_verdict(record.device, record.closed, paired)
    if verdict is not None:
        return verdict
    if paired is None and record.fingerprint != our_fingerprint:
        return "foreign-secret"
    if record.protocol != our_protocol:
        return "foreign-protocol"
    return "ok"


def access_verdict(device: str, closed: bool, paired: Callable[[str], bool] | None
                   ) -> Verdict | None:
    """What pairing alone says of a node (its device id, whether it is closed), as
    ``classify`` says it; None: nothing against it. Also used on a node's /v1/info."""
    if paired is not None:
        return None if device and paired(device) else "unpaired"
    return "closed" if closed else None


def instance_name(record: PeerRecord) -> str:
    """The DNS-SD instance label: the human name plus a slice of the node id.

    Two machines both called "raspberrypi" must not fight over one name, so the node id is
    appended; dots would be read as label separators by naive resolvers, so they become '-'.
    """
    suffix = "-" + record.node_id[:NODE_ID_IN_NAME]
    room = MAX_LABEL_BYTES - len(suffix)
    base = record.name.strip().replace(".", "-")
    while len(base.encode("utf-8")) > room:
        base = base[:-1]
    return base + suffix


def service_name(record: PeerRecord) -> str:
    """The full service name registered for `record`."""
    return f"{instance_name(record)}.{SERVICE_TYPE}"


def server_name(record: PeerRecord) -> str:
    """The mDNS host name our A records hang from: one per node, never the OS hostname.

    Using the OS hostname would make two nodes on one machine (or two machines cloned from
    one image) answer for each other's addresses.
    """
    label = record.node_id[:32].lower().replace("_", "-")
    return f"swarm-{label}.local."


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A change in the set of peers seen on the LAN; `removed` carries the last record."""

    kind: EventKind
    name: str  # the DNS-SD service name, unique on the LAN
    record: PeerRecord


class PeerTable:
    """The peers currently advertised, keyed by service name; turns lookups into events.

    The shell feeds it what zeroconf resolved or withdrew and emits what it returns, so the
    added/updated/removed logic is tested without a network.
    """

    def __init__(self) -> None:
        self._records: dict[str, PeerRecord] = {}

    def resolved(self, name: str, record: PeerRecord) -> PeerEvent | None:
        """A service resolved to `record`: an event unless nothing changed."""
        old = self._records.get(name)
        if old == record:
            return None
        self._records[name] = record
        return PeerEvent("added" if old is None else "updated", name, record)

    def removed(self, name: str) -> PeerEvent | None:
        """A service went away: an event if we had reported it."""
        old = self._records.pop(name, None)
        return None if old is None else PeerEvent("removed", name, old)

    def records(self) -> list[PeerRecord]:
        """Current peers, ordered by name then node id for stable output."""
        return sorted(self._records.values(), key=lambda r: (r.name, r.node_id))

    def __len__(self) -> int:
        return len(self._records)


# Invites a peer may accept without ever claiming before we stop asking it.
MAX_FRUITLESS_INVITES = 3


def fruitless(invites: int, claimed: bool) -> str | None:
    """Why to stop inviting a peer that took ``invites`` invites, or None to go on.

    One that accepts invites but never claims is typically an open node asked by a
    coordinator with a secret: its unsigned claims get 401, so asking again cannot help.
    """
    if invites >= MAX_FRUITLESS_INVITES and not claimed:
        return "accepts invites but never claims (another secret?)"
    return None
