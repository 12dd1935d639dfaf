"""This device's address as another device on the LAN reaches it: never a hostname.

A hostname is no use on a LAN without local DNS (most homes), nor typed into a phone: what a
dashboard prints for other devices is an IPv4 address.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["lan_address", "route_address", "up_ipv4_addresses"]

# TEST-NET-1: a UDP connect there picks the default route's source address and sends nothing.
_PROBE = ("192.0.2.1", 9)
# Linux (and Android) ioctls and interface flags, from <linux/sockios.h> and <net/if.h>.
_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8


def up_ipv4_addresses() -> list[str]:
    """The IPv4 address of each interface that is up, loopback excluded, in index order."""
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    out: list[str] = []
    if fcntl is not None and hasattr(socket, "if_nameindex"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _index, name in socket.if_nameindex():
                req = struct.pack("256s", name.encode()[:15])
                try:
                    flags = struct.unpack_from("H", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req),
                                               16)[0]
                    if not flags & _IFF_UP or flags & _IFF_LOOPBACK:
                        continue
                    reply = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
                except OSError:  # no IPv4 address on it, or not Linux ioctls
                    continue
                out.append(socket.inet_ntoa(reply[20:24]))
        if out:
            return out
    import ifaddr  # elsewhere: every interface's addresses, up or not

    return [str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips
            if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]


def lan_address() -> str:
    """The address on the default route; with none, the first up interface's; else loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(_PROBE)
            addr = str(s.getsockname()[0])
            if addr and not addr.startswith("127.") and addr != "0.0.0.0":
                return addr
        except OSError:  # no default route (ENETUNREACH): an isolated LAN
            pass
    found = up_ipv4_addresses()
    return found[0] if found else "127.0.0.1"


def route_address(toward: str, *, fallback: str = "127.0.0.1") -> str:
    """Our address on the route to ``toward`` (what an invite tells that peer to call
    back), or ``fallback`` with no route there. A UDP connect sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((toward, 9))
            return str(s.getsockname()[0])
        except OSError:
            return fallback
