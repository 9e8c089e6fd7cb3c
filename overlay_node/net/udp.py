"""The UDP endpoint of the DHT: one bound datagram socket on trio, and ``host:port`` parsing and resolving.

This is the only code that touches a UDP socket. It moves bytes and nothing else: no decoding, no rate limiting,
no retries (the DHT service does those). Foreign errors are mapped once, here: a bind failure becomes
:class:`~overlay_node.errors.TransportError`, a failed send :class:`~overlay_node.errors.DialError`, and a name that
cannot be resolved :class:`~overlay_node.errors.DialError` too.

Invariants:

1. :meth:`UdpEndpoint.receive` returns whole datagrams up to :data:`RECEIVE_SIZE` bytes; a larger one arrives
   truncated to that size, which is still far above any size limit of a codec, so the codec sees it as oversized.
2. Addresses are ``(ip, port)`` pairs with the IP as text in one canonical spelling (``ipaddress``), so that a
   source address can be used as a dictionary key and compared with a contact's address.
3. Errors the kernel reports on receive for earlier sends (ICMP port unreachable on some platforms) are not the
   receiver's business: :meth:`UdpEndpoint.receive` skips them and keeps reading.
4. :meth:`UdpEndpoint.receive` and :meth:`UdpEndpoint.receive_batch` are trio checkpoints, and a datagram taken off
   the socket is returned even if the caller is cancelled right then (it is never lost in between).
   :meth:`UdpEndpoint.send` is a cancel point but a schedule point only when the socket's buffer is full: the
   kernel takes a datagram at once, and the DHT sends in bursts (a lookup's requests, the answers to a batch of
   datagrams) whose callers wait on their own right after. A schedule point after every send cost a lookup 11 %
   of its latency at p95 and 6 % of its CPU (``bench/bench_dht.py``, 8 runs in A-B-B-A order); a caller that sends
   in a loop with no other wait must yield itself.
5. :meth:`UdpEndpoint.receive_batch` takes every datagram already waiting (up to its limit) with one checkpoint:
   under a flood the reader keeps up with the socket at the cost of a system call per datagram, so that the
   kernel's buffer does not fill and drop honest datagrams with the flood's.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket as _stdlib_socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio

from overlay_node.errors import BadRequest, DialError, TransportError

__all__ = [
    "RECEIVE_SIZE",
    "Address",
    "UdpEndpoint",
    "format_address",
    "open_udp_endpoint",
    "parse_host_port",
    "resolve_address",
]

logger = logging.getLogger(__name__)

#: Receive buffer per datagram: anything above the codec's limit is enough to see that a datagram is oversized.
RECEIVE_SIZE: Final = 4096
#: Distinct source addresses whose canonical form is remembered.
_SOURCE_CACHE: Final = 4096
#: Errors a receive may report for an earlier send to a closed port (ICMP), which say nothing about this socket.
_SEND_ECHO_ERRNOS: Final = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH})

Address = tuple[str, int]


def _canonical(host: str) -> str:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return str(ip)


def format_address(address: Address) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into a host and a port.

    Raises:
        BadRequest: not of that form, or the port is not in 1..65535.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise BadRequest(f"bad address {text!r}: expected [ipv6]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise BadRequest(f"bad address {text!r}: expected host:port")
    # str.isdigit takes "²", which int() refuses
    if not host or not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise BadRequest(f"bad address {text!r}: expected host:port with a port in 1..65535")
    return host, int(port_text)


async def resolve_address(text: str, *, family: int = _stdlib_socket.AF_UNSPEC) -> Address:
    """Resolve ``host:port`` to an ``(ip, port)`` UDP address (the first the resolver gives).

    Raises:
        BadRequest: the text is not ``host:port``.
        DialError: the host name does not resolve.
    """
    host, port = parse_host_port(text)
    try:
        return _canonical(host), port
    except ValueError:
        pass  # a name, not an IP literal
    try:
        infos = await trio.socket.getaddrinfo(host, port, family=family, type=_stdlib_socket.SOCK_DGRAM)
    except OSError as exc:
        raise DialError(f"cannot resolve {host!r}: {exc}") from exc
    for fam, _type, _proto, _name, sockaddr in infos:
        if fam in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6):
            return _canonical(str(sockaddr[0])), int(sockaddr[1])
    raise DialError(f"cannot resolve {host!r}: no IP address")


class UdpEndpoint:
    """A bound UDP socket. Get one from :func:`open_udp_endpoint`.

    One task receives; any number of tasks may send (a datagram send is atomic). The socket is a non-blocking
    stdlib socket driven with trio's low-level waits, so that a send costs one system call (no address
    resolution per datagram) and each call is still a trio checkpoint.
    """

    def __init__(self, sock: _stdlib_socket.socket) -> None:
        self._sock = sock
        sockname = sock.getsockname()
        self._address: Address = (_canonical(str(sockname[0])), int(sockname[1]))
        self._v6 = sock.family == _stdlib_socket.AF_INET6
        #: source addresses as the kernel gives them -> canonical form (bounded; peers repeat)
        self._sources: dict[tuple[object, ...], Address] = {}

    @property
    def address(self) -> Address:
        """The bound ``(ip, port)``; the real port when bound to port 0."""
        return self._address

    def _source(self, raw: tuple[object, ...]) -> Address:
        address = self._sources.get(raw)
        if address is None:
            if len(self._sources) >= _SOURCE_CACHE:
                self._sources.clear()
            address = self._sources[raw] = (_canonical(str(raw[0])), int(str(raw[1])))
        return address

    async def receive(self) -> tuple[bytes, Address]:
        """Wait for the next datagram and return it with its source address.

        Raises:
            TransportError: the socket failed or was closed.
        """
        (item,) = await self.receive_batch(1)
        return item

    async def receive_batch(self, limit: int) -> list[tuple[bytes, Address]]:
        """Wait for the next datagram and return it with up to ``limit - 1`` more that are already waiting, each
        with its source address (invariant 5).

        Raises:
            TransportError: the socket failed or was closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self._sock
        sources = self._sources
        batch: list[tuple[bytes, Address]] = []
        while True:
            try:
                data, raw = sock.recvfrom(RECEIVE_SIZE)
            except BlockingIOError:
                if batch:
                    break
                try:
                    await trio.lowlevel.wait_readable(sock)
                except trio.ClosedResourceError as exc:
                    raise TransportError(f"udp endpoint {format_address(self._address)} closed") from exc
                continue
            except OSError as exc:
                if exc.errno in _SEND_ECHO_ERRNOS:
                    continue
                if batch:
                    break  # handed out now; the error shows again on the next call
                raise TransportError(f"udp receive on {format_address(self._address)} failed: {exc}") from exc
            source = sources.get(raw)
            if source is None:
                try:
                    source = self._source(raw)
                except ValueError:  # pragma: no cover - the kernel gives IP literals
                    continue
            batch.append((data, source))
            if len(batch) >= limit:
                break
        # datagrams were taken off the socket: yield, but never drop them for a cancellation
        await trio.lowlevel.cancel_shielded_checkpoint()
        return batch

    async def send(self, data: bytes, address: Address) -> None:
        """Send one datagram to ``address`` (a cancel point; it waits only for room in the socket's buffer:
        invariant 4).

        Raises:
            DialError: the kernel refused the send (unreachable network, bad address family, socket closed).
        """
        host, port = address
        if self._v6 and ":" not in host:
            host = f"::ffff:{host}"
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                self._sock.sendto(data, (host, port))
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_writable(self._sock)
                except trio.ClosedResourceError as exc:
                    raise DialError(f"udp endpoint {format_address(self._address)} closed") from exc
                continue
            except OSError as exc:
                raise DialError(f"udp send to {format_address(address)} failed: {exc}") from exc
            return

    async def resolve(self, text: str) -> Address:
        """Resolve ``host:port`` to an address this endpoint can send to (IPv4 only for an IPv4 socket).

        Raises:
            BadRequest: the text is not ``host:port``.
            DialError: the host name does not resolve to a usable address.
        """
        family = _stdlib_socket.AF_UNSPEC if self._v6 else _stdlib_socket.AF_INET
        address = await resolve_address(text, family=family)
        if not self._v6 and ":" in address[0]:
            raise DialError(f"cannot reach {text!r} from an IPv4 endpoint")
        return address

    def close(self) -> None:
        """Close the socket; a task waiting in :meth:`receive` gets a TransportError. Idempotent."""
        if self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()


@asynccontextmanager
async def open_udp_endpoint(host: str, port: int, *, buffer_size: int = 0) -> AsyncIterator[UdpEndpoint]:
    """Bind a UDP socket on ``host:port`` (port 0 picks a free one) and close it when the block exits.

    Args:
        host: an IP literal; ``0.0.0.0`` or ``::`` listen on every interface.
        port: the UDP port, 0 for a free one.
        buffer_size: if > 0, the socket's receive and send buffer sizes (bursts the service has not read yet
            wait there; beyond it the kernel drops datagrams).

    Raises:
        TransportError: ``host`` is not an IP literal or the address cannot be bound.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise TransportError(f"cannot bind udp on {host!r}: the host must be an IP address") from None
    family = _stdlib_socket.AF_INET6 if ip.version == 6 else _stdlib_socket.AF_INET
    await trio.lowlevel.checkpoint()
    sock = _stdlib_socket.socket(family, _stdlib_socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if buffer_size > 0:
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_RCVBUF, buffer_size)
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_SNDBUF, buffer_size)
        if family == _stdlib_socket.AF_INET6:
            sock.setsockopt(_stdlib_socket.IPPROTO_IPV6, _stdlib_socket.IPV6_V6ONLY, 0)
        sock.bind((str(ip), port))  # an IP literal: no name lookup, does not block
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot bind udp on {host}:{port}: {exc.strerror or exc}") from exc
    except BaseException:
        sock.close()
        raise
    endpoint = UdpEndpoint(sock)
    logger.debug("udp endpoint bound on %s", format_address(endpoint.address))
    try:
        yield endpoint
    finally:
        endpoint.close()
