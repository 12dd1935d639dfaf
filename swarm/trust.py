"""What a node believes of what others tell it, decided with no I/O.

- ``invite_address_problem``: an invite names the coordinator the peer is to work for; the
  peer believes that address only if it is the address the invite came from (the TCP peer
  as the server saw it). Otherwise anyone on the LAN could send a peer's claims, progress
  and uploads anywhere: an invite naming ``http://127.0.0.1:9999`` once made a peer send
  13 claims to its own loopback within 7 s. Both ends on loopback is the same machine (a
  coordinator beside ``swarm join``, and the tests), so loopback to loopback is allowed.
  The port cannot be checked (the coordinator calls from an ephemeral port), and needs no
  check: whoever sent the invite owns the host it names.
- ``Census``: what a coordinator found on the LAN, counted by verdict, for one honest
  sentence ("found 3 devices: 1 of this swarm, 2 of another swarm (nas-1, nas-2)") instead of a
  silent wait. Verdicts are strings so that other kinds (paired, not paired) slot in: each
  kind has a label and an optional hint in ``KINDS``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

__all__ = ["KINDS", "Census", "Kind", "invite_address_problem", "same_sender"]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP literal in canonical form (IPv4-mapped IPv6 as IPv4, no zone), or None."""
    host = text.strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def same_sender(named_host: str, sender: str) -> bool:
    """Whether ``named_host`` (an address in a message) is the machine ``sender`` (the TCP
    peer's address) is: the same address, or both on loopback. A name is never the same:
    what it resolves to is up to whoever answers DNS."""
    named, peer = _address(named_host), _address(sender)
    if named is None or peer is None:
        return False
    return named == peer or (named.is_loopback and peer.is_loopback)


def invite_address_problem(coordinator_url: str, sender: str) -> str | None:
    """Why an invite from ``sender`` that names ``coordinator_url`` is refused, or None.

    ``coordinator_url`` passed the protocol's URL check (http(s)://HOST:PORT); ``sender``
    is the ASGI scope's client address ("" when the server did not know it).
    """
    host = urlsplit(coordinator_url).hostname or ""
    if not sender:
        return "the invite's sender address is unknown"
    if _address(host) is None:
        return f"the invite names the coordinator by name ({host[:64]}), not by address"
    if not same_sender(host, sender):
        return (f"the invite names coordinator {host[:64]} but came from {sender[:64]}: "
                "a coordinator invites with its own address")
    return None


@dataclass(frozen=True, slots=True)
class Kind:
    label: str  # how a group of such devices is named after its count
    hint: str = ""  # what to do about them, after their names
    usable: bool = False


# Verdicts of swarm.presence.classify, plus what later checks find ("ok" is "paired" in
# a closed swarm: only paired devices are ours there).
KINDS: Final[dict[str, Kind]] = {
    "ok": Kind("of this swarm", usable=True),
    "foreign-secret": Kind("of another swarm",
                           "they were started with another --secret, or none"),
    "foreign-protocol": Kind("of another protocol version", "upgrade them"),
    "unproven": Kind("not proven members", "their invite replies were not signed with "
                     "this swarm's secret"),
    "unpaired": Kind("not paired", "run `swarm pair CODE` here with the code each one's "
                     "`swarm join` shows"),
    "closed": Kind("closed to this device", "they work only for devices paired with them: "
                   "pair them, or start them with --open"),
}
_MAX_NAMES = 4  # a line, not a roll call: "nas-1, nas-2, nas-3, nas-4 and 6 more"


@dataclass(slots=True)
class Census:
    """Devices seen by one coordinator, by node id: the latest verdict and name of each."""

    seen: dict[str, tuple[str, str]] = field(default_factory=dict)
    closed: bool = False  # the coordinator's swarm is closed: its devices are "paired"

    def saw(self, node_id: str, name: str, verdict: str) -> None:
        self.seen[node_id] = (name, verdict)

    def forget(self, node_id: str) -> None:
        self.seen.pop(node_id, None)

    def names(self, verdict: str) -> list[str]:
        return sorted(name for name, v in self.seen.values() if v == verdict)

    @property
    def usable(self) -> int:
        return sum(KINDS.get(v, Kind(v)).usable for _, v in self.seen.values())

    def summary(self) -> str:
        """One line: "found 3 devices: 1 of this swarm, 2 of another swarm (nas-1, nas-2:
        they were started with another --secret, or none)"; "found no devices" if none."""
        if not self.seen:
            return "found no devices"
        total = len(self.seen)
        parts = []
        order = [*KINDS, *sorted({v for _, v in self.seen.values()} - KINDS.keys())]
        for verdict in order:
            names = self.names(verdict)
            if not names:
                continue
            kind = KINDS.get(verdict, Kind(verdict))
            part = f"{len(names)} {'paired' if self.closed and kind.usable else kind.label}"
            if not kind.usable:
                shown = ", ".join(names[:_MAX_NAMES])
                if len(names) > _MAX_NAMES:
                    shown += f" and {len(names) - _MAX_NAMES} more"
                part += f" ({shown}{': ' + kind.hint if kind.hint else ''})"
            parts.append(part)
        noun = "device" if total == 1 else "devices"
        return f"found {total} {noun}: {', '.join(parts)}"

