"""mDNS presence: the trio shell around python-zeroconf and `swarm.presence`.

python-zeroconf runs its own asyncio loop in a thread of its own, and its blocking calls
(`register_service`, `close`, `ServiceInfo.request`) must not run on that loop or on trio's:
they go through `trio.to_thread.run_sync`. A `ServiceBrowser` calls its handlers from yet
another thread (one per browser); they cross into trio with `trio.from_thread.run_sync` onto
a memory channel and never block on anything else.

    advertise(record)      publish our node until cancelled, then say goodbye
    browse(send_channel)   PeerEvent (added / updated / removed) for every node on the LAN
    find_peers(wait_s)     what `browse` saw after wait_s seconds (`swarm peers --wait S`)

What can go wrong: a peer's TXT record may be junk (logged once per service and ignored);
zeroconf may deliver a callback after our trio side has closed (dropped silently); the
goodbye may not get out before the process dies (peers then forget us when the record's
TTL runs out, 75 minutes by zeroconf's default, which is why cancellation is shielded).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import ifaddr
import trio
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from swarm.errors import LocalProtocolError, RemoteProtocolError, UsageError
from swarm.presence import (
    SERVICE_TYPE,
    PeerEvent,
    PeerRecord,
    PeerTable,
    from_txt,
    pick_address,
    server_name,
    service_name,
    to_txt,
)

__all__ = [
    "Advertiser",
    "advertise",
    "browse",
    "find_peers",
    "local_ipv4_interfaces",
    "open_zeroconf",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Goodbye is three packets 125 ms apart (zeroconf's _UNREGISTER_TIME); one second leaves room
# for a loaded machine without making Ctrl-C feel stuck.
GOODBYE_TIMEOUT_S = 1.0
# Closing zeroconf joins its loop thread and, for an owned instance, sends goodbyes too.
CLOSE_TIMEOUT_S = 2.0
# How long to ask the network for a service's SRV/TXT/A records; zeroconf's own default.
RESOLVE_TIMEOUT_MS = 3000
# Browser callbacks queued for the trio side. Events are a few per peer; a LAN that
# overflows this is flooding us, and dropping is better than growing without bound.
CALLBACK_BUFFER = 1024
# Services whose malformed TXT we already logged, remembered so a broken peer that
# re-announces every few seconds does not fill the log (zeroconf's QuietLogger idea).
MAX_QUIET_NAMES = 256

# trio 0.23 renamed to_thread.run_sync's `cancellable` to `abandon_on_cancel`.
_ABANDON_KW = (
    "abandon_on_cancel"
    if "abandon_on_cancel" in inspect.signature(trio.to_thread.run_sync).parameters
    else "cancellable"
)


async def _run_abandonable(fn: Callable[[], T]) -> T:
    """Run fn in a worker thread, but return at once when cancelled, leaving it to finish.

    Only for calls whose late completion is harmless (closing, joining, looking up).
    """
    run: Any = trio.to_thread.run_sync
    result: T = await run(fn, **{_ABANDON_KW: True})
    return result


def local_ipv4_interfaces() -> list[str]:
    """This host's non-loopback IPv4 interfaces as "address/prefix" strings."""
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str) or ipaddress.ip_address(ip.ip).is_loopback:
                continue
            found.append(f"{ip.ip}/{ip.network_prefix}")
    return found


def _default_addresses() -> list[str]:
    """Addresses to publish when the caller names none: every routable local IPv4.

    Link-local (169.254/16) addresses are kept only when there is nothing else, as on two
    laptops joined by a cable without DHCP.
    """
    addresses = [i.split("/")[0] for i in local_ipv4_interfaces()]
    routable = [a for a in addresses if not ipaddress.ip_address(a).is_link_local]
    return list(dict.fromkeys(routable or addresses))


@asynccontextmanager
async def open_zeroconf(interfaces: Sequence[str] | None = None) -> AsyncIterator[Zeroconf]:
    """A Zeroconf instance (IPv4, its own loop thread) that is closed on exit, even if cancelled.

    `interfaces` are local IPv4 addresses to bind to; None means every interface. A node that
    both advertises and browses should share one instance: each one joins the multicast group
    and answers queries on its own.
    """
    choice: Any = list(interfaces) if interfaces else InterfaceChoice.All
    zc = await trio.to_thread.run_sync(
        partial(Zeroconf, interfaces=choice, ip_version=IPVersion.V4Only)
    )
    try:
        yield zc
    finally:
        # close() sends goodbyes for anything still registered: worth waiting a moment for,
        # not worth hanging on.
        with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
            scope.shield = True
            await _run_abandonable(zc.close)


@asynccontextmanager
async def _zeroconf_scope(
    zc: Zeroconf | None, interfaces: Sequence[str] | None
) -> AsyncIterator[Zeroconf]:
    """Use the caller's instance as is, or own one for the duration."""
    if zc is not None:
        yield zc
        return
    async with open_zeroconf(interfaces) as owned:
        yield owned


async def _on_loop(zc: Zeroconf, coro: Any, timeout_s: float) -> Any:
    """Run a coroutine on zeroconf's loop from a worker thread; wait at most timeout_s."""
    assert zc.loop is not None, "zeroconf is not started"
    future = asyncio.run_coroutine_threadsafe(coro, zc.loop)
    return await _run_abandonable(partial(future.result, timeout_s))


class Advertiser:
    """Handle on a published record, given by `advertise` through `task_status.started`."""

    def __init__(self, zc: Zeroconf, info: ServiceInfo, record: PeerRecord) -> None:
        self._zc = zc
        self._info = info
        self._record = record
        # update() and the goodbye must not interleave: zeroconf would re-announce a
        # service we just withdrew.
        self._lock = trio.Lock()
        self._withdrawn = False

    @property
    def record(self) -> PeerRecord:
        return self._record

    @property
    def service_name(self) -> str:
        """The registered name; zeroconf appends "-2" etc. if probing found a clash."""
        return self._info.name

    @property
    def addresses(self) -> list[str]:
        return self._info.parsed_addresses()

    async def update(self, record: PeerRecord) -> None:
        """Re-announce with new TXT (state, score, ...) and port, under the same name.

        The node id is what peers key on, so changing it is a bug (`LocalProtocolError`);
        a new `name` travels in TXT while the service name stays as registered.
        """
        if record.node_id != self._record.node_id:
            raise LocalProtocolError("a node cannot change its node_id while advertised")
        async with self._lock:
            if self._withdrawn:
                raise LocalProtocolError("update() after the advertisement was withdrawn")
            if record == self._record:
                return
            info = _service_info(record, self._info.name, self.addresses)
            # Blocks for the three announcements (about half a second).
            await trio.to_thread.run_sync(self._zc.update_service, info)
            self._info, self._record = info, record

    async def _withdraw(self) -> None:
        """Send the goodbye packets; shielded and bounded, as it runs while cancelled."""
        with trio.move_on_after(GOODBYE_TIMEOUT_S) as scope:
            scope.shield = True
            async with self._lock:
                self._withdrawn = True
                try:
                    await _on_loop(self._zc, _goodbye(self._zc, self._info), GOODBYE_TIMEOUT_S)
                except Exception as exc:  # zeroconf already closed, or its loop stuck
                    log.warning("goodbye for %s failed: %r", self._info.name, exc)
        if scope.cancelled_caught:
            log.warning("goodbye for %s timed out; peers will expire it", self._info.name)


async def _goodbye(zc: Zeroconf, info: ServiceInfo) -> None:
    # async_unregister_service returns the broadcast task; the blocking
    # unregister_service does not wait for it, so closing right after could cut it off.
    broadcast = await zc.async_unregister_service(info)
    await broadcast


def _service_info(record: PeerRecord, name: str, addresses: Sequence[str]) -> ServiceInfo:
    return ServiceInfo(
        SERVICE_TYPE,
        name,
        port=record.port,
        properties=to_txt(record),
        server=server_name(record),
        parsed_addresses=list(addresses),
    )


async def advertise(
    record: PeerRecord,
    *,
    zc: Zeroconf | None = None,
    interfaces: Sequence[str] | None = None,
    addresses: Sequence[str] | None = None,
    task_status: trio.TaskStatus[Advertiser] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Publish `record` on the LAN until cancelled, then send goodbye packets.

    Reports an `Advertiser` through `task_status` once probing and the announcements are done
    (about 1.7 s: RFC 6762 probing is three queries 250 ms apart and cannot be skipped
    without risking a name clash). `addresses` to publish default to `interfaces`, or to all
    routable local IPv4 addresses; `record.host` is not used, peers learn our address from
    the A records. Raises `UsageError` if there is no address to publish.
    """
    published = list(addresses or interfaces or _default_addresses())
    if not published:
        raise UsageError("no non-loopback IPv4 address to advertise on; name peers with --peer")
    async with _zeroconf_scope(zc, interfaces) as zc_:
        info = _service_info(record, service_name(record), published)
        # Not cancellable: an abandoned registration would announce us after we left.
        await trio.to_thread.run_sync(partial(zc_.register_service, info, allow_name_change=True))
        advertiser = Advertiser(zc_, info, record)
        try:
            log.info("advertising %s at %s:%d", info.name, ", ".join(published), record.port)
            task_status.started(advertiser)
            await trio.sleep_forever()
        finally:
            await advertiser._withdraw()


@dataclass(slots=True)
class _Resolver:
    """The trio side of one browse: turns (name, state change) into PeerEvents."""

    zc: Zeroconf
    send: trio.MemorySendChannel[PeerEvent]
    our_interfaces: list[str]
    table: PeerTable
    # Latest ticket per service; a lookup whose ticket is stale lost a race with a newer
    # event (a removal, or an update whose own lookup will report the fresher record).
    tickets: dict[str, int]
    counter: itertools.count[int]
    complained: set[str]
    stop: trio.CancelScope

    async def handle(self, nursery: trio.Nursery, name: str, change: ServiceStateChange) -> None:
        if change is ServiceStateChange.Removed:
            self.tickets.pop(name, None)
            await self._emit(self.table.removed(name))
            return
        ticket = next(self.counter)
        self.tickets[name] = ticket
        # Lookups run side by side so one silent host cannot delay news of the others.
        nursery.start_soon(self._resolve, name, ticket)

    async def _resolve(self, name: str, ticket: int) -> None:
        info = await _run_abandonable(partial(_lookup, self.zc, name))
        if self.tickets.get(name) != ticket or info is None:
            return
        record = self._parse(name, info)
        if record is not None:
            await self._emit(self.table.resolved(name, record))

    def _parse(self, name: str, info: ServiceInfo) -> PeerRecord | None:
        try:
            host = pick_address(info.parsed_addresses(), self.our_interfaces)
            if host is None or info.port is None:
                raise RemoteProtocolError("service has no usable address or port")
            return from_txt(info.properties, host, info.port)
        except RemoteProtocolError as exc:
            if name not in self.complained:
                if len(self.complained) >= MAX_QUIET_NAMES:
                    self.complained.clear()
                self.complained.add(name)
                log.warning("ignoring malformed advertisement %r: %s", name, exc)
            return None

    async def _emit(self, event: PeerEvent | None) -> None:
        if event is None:
            return
        try:
            await self.send.send(event)
        except trio.BrokenResourceError:
            self.stop.cancel()  # the consumer closed its end: nothing left to browse for


def _lookup(zc: Zeroconf, name: str) -> ServiceInfo | None:
    """Resolve SRV, TXT and A records (cache first, then the network); None if it fails."""
    info = ServiceInfo(SERVICE_TYPE, name)
    try:
        return info if info.request(zc, RESOLVE_TIMEOUT_MS) else None
    except Exception as exc:  # zeroconf closing under us raises assorted errors
        log.debug("lookup of %s failed: %s", name, exc)
        return None


async def browse(
    send_channel: trio.MemorySendChannel[PeerEvent],
    *,
    zc: Zeroconf | None = None,
    interfaces: Sequence[str] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send a PeerEvent for every swarm node that appears, changes or leaves, until cancelled.

    Events include our own advertisement and foreign swarms' nodes: use `classify`. Closes
    `send_channel` on exit; returns quietly if the receiving side is closed first.
    """
    token = trio.lowlevel.current_trio_token()
    raw_send, raw_recv = trio.open_memory_channel[tuple[str, ServiceStateChange]](CALLBACK_BUFFER)

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # Runs in the browser's thread; an exception here would kill that thread silently.
        try:
            trio.from_thread.run_sync(raw_send.send_nowait, (name, state_change), trio_token=token)
        except (trio.RunFinishedError, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the trio side has finished or is closing: nobody wants this event
        except trio.WouldBlock:
            log.warning("mDNS event queue full, dropped %s %s", state_change.name, name)
        except Exception:
            log.exception("mDNS callback failed for %s", name)

    async with send_channel, _zeroconf_scope(zc, interfaces) as zc_:
        resolver = _Resolver(
            zc=zc_,
            send=send_channel,
            our_interfaces=local_ipv4_interfaces(),
            table=PeerTable(),
            tickets={},
            counter=itertools.count(),
            complained=set(),
            stop=trio.CancelScope(),
        )
        browser = await trio.to_thread.run_sync(
            partial(ServiceBrowser, zc_, SERVICE_TYPE, handlers=[on_change])
        )
        try:
            task_status.started()
            with resolver.stop:
                async with trio.open_nursery() as nursery:
                    async for name, change in raw_recv:
                        await resolver.handle(nursery, name, change)
        finally:
            # Close first, so a callback racing with shutdown gets ClosedResourceError
            # instead of waiting for a reader; then cancel() can join the browser thread.
            raw_send.close()
            with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
                scope.shield = True
                await _run_abandonable(browser.cancel)


async def find_peers(
    wait_s: float,
    *,
    zc: Zeroconf | None = None,
    interfaces: Sequence[str] | None = None,
) -> list[PeerRecord]:
    """Browse for wait_s seconds; return the nodes still present, ordered by name.

    Includes foreign nodes (other secret, other protocol) so the caller can show them.
    """
    if not (math.isfinite(wait_s) and wait_s >= 0):
        raise UsageError(f"--wait must be a non-negative number of seconds, not {wait_s}")
    send, recv = trio.open_memory_channel[PeerEvent](0)
    table = PeerTable()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(browse, send, zc=zc, interfaces=interfaces))
        with trio.move_on_after(wait_s):
            async for event in recv:
                if event.kind == "removed":
                    table.removed(event.name)
                else:
                    table.resolved(event.name, event.record)
        nursery.cancel_scope.cancel()
    return table.records()
