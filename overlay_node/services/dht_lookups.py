"""Running one iterative DHT lookup over the datagram layer: the I/O driver of ``protocol.dht_lookup.Lookup``.

Theory of operation: the driver sends what :meth:`Lookup.next_actions` asks for with
:meth:`DhtRpc.start_request`, whose answers land in a queue (no task per request: a lookup sends dozens of
requests and each task would cost more than the request). It then waits for the next answer or the next deadline,
feeds answers to the lookup, sends a request again after ``request_timeout`` (up to ``request_retries`` times), and
reports a request still unanswered after that to the lookup (``on_timeout``) and to the service (``on_failed``,
which counts the failure in the routing table). It stops when the lookup is finished.

Invariants:

1. Every request this driver starts is finished (``DhtRpc.finish_request``) before :meth:`LookupDriver.run`
   returns or raises, so no answer can arrive for a lookup that is gone; except that requests a finished lookup
   stopped waiting for (slow ones, ``protocol.dht_lookup`` invariant 4) are handed to a background task (``spawn``)
   that waits out their retries, so a dead contact is still counted failed in the routing table.
2. Records in VALUES answers reach the lookup only after ``check_records`` (signature, size, expiry).
3. At most ``request_retries + 1`` sends per request, ``request_timeout`` apart; the lookup's own request timeout
   is longer, so it is only a backstop.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from overlay_node.config import DhtSection
from overlay_node.errors import DialError
from overlay_node.protocol.dht_lookup import ContactFailed, Lookup, LookupResult, SendFindNode, SendFindValue
from overlay_node.services.dht_rpc import DhtRpc
from overlay_node.wire.dht import Contact, Envelope, FindNode, FindValue, Message, Nodes, Record, Values

__all__ = ["LookupDriver"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Outgoing:
    contact: Contact
    data: bytes
    sends: int
    deadline: float


class _Inbox:
    """Answers delivered by the receiving task, and the event that wakes the driver."""

    __slots__ = ("answers", "wake")

    def __init__(self) -> None:
        self.answers: deque[tuple[Contact, Envelope]] = deque()
        self.wake = trio.Event()

    def deliverer(self, contact: Contact) -> Callable[[Envelope], None]:
        def deliver(envelope: Envelope) -> None:
            self.answers.append((contact, envelope))
            self.wake.set()

        return deliver


class LookupDriver:
    """Runs lookups for one DHT node.

    Args:
        rpc: the node's datagram layer.
        config: the ``[dht]`` section (k, alpha, timeouts, retries, pages).
        own_id: our node id (never asked).
        on_failed: called for a contact whose request went unanswered after its retries.
        check_records: filters the records of one VALUES answer to the valid ones.
        spawn: starts a background task (``spawn(fn, *args)``), False if it cannot (the service is stopping).
    """

    def __init__(
        self,
        rpc: DhtRpc,
        config: DhtSection,
        own_id: bytes,
        *,
        on_failed: Callable[[Contact], None],
        check_records: Callable[[bytes, Sequence[Record]], list[Record]],
        spawn: Callable[..., bool] | None = None,
    ) -> None:
        self._rpc = rpc
        self._spawn = spawn
        self._config = config
        self._own_id = own_id
        self._on_failed = on_failed
        self._check_records = check_records

    async def run(self, target: bytes, initial: Sequence[Contact], *, find_value: bool) -> LookupResult:
        """Look up ``target`` starting from ``initial`` (our closest contacts) until the lookup is finished."""
        cfg = self._config
        lookup = Lookup(
            target,
            initial,
            own_id=self._own_id,
            find_value=find_value,
            k=cfg.k,
            alpha=cfg.alpha,
            request_timeout=cfg.request_timeout * (cfg.request_retries + 2),
            max_pages=cfg.max_pages,
            stall_timeout=cfg.stall_timeout,
        )
        inbox = _Inbox()
        outgoing: dict[bytes, _Outgoing] = {}
        handed = False
        try:
            while True:
                actions = lookup.next_actions(trio.current_time())
                for action in actions:
                    match action:
                        case SendFindNode(contact=contact, target=t):
                            await self._start(
                                lookup, inbox, outgoing, contact, FindNode(rpc_id=self._rpc.new_rpc_id(), target=t)
                            )
                        case SendFindValue(contact=contact, target=t, cursor=cursor):
                            msg = FindValue(rpc_id=self._rpc.new_rpc_id(), key=t, cursor=cursor)
                            await self._start(lookup, inbox, outgoing, contact, msg)
                        case ContactFailed(contact=contact):
                            self._on_failed(contact)
                if lookup.finished:
                    break
                if not outgoing and not inbox.answers:
                    if actions:  # sends failed at once: the lookup has marked them, ask it again
                        continue
                    # nothing in flight and nothing to send (cannot happen): never wait forever
                    logger.warning("dht lookup of %s stalled with nothing in flight", target.hex()[:16])
                    break
                if not inbox.answers:
                    deadline = min((o.deadline for o in outgoing.values()), default=math.inf)
                    backstop = lookup.next_deadline()
                    inbox.wake = trio.Event()
                    with trio.move_on_at(min(deadline, backstop if backstop is not None else math.inf)):
                        await inbox.wake.wait()
                while inbox.answers:
                    contact, envelope = inbox.answers.popleft()
                    if outgoing.pop(envelope.message.rpc_id, None) is not None:
                        self._rpc.finish_request(envelope.message.rpc_id, timed_out=False)
                    self._apply(lookup, contact, envelope.message)
                await self._expire(lookup, outgoing)
            # requests the finished lookup no longer waits for: their answer or timeout still tells the table
            handed = bool(outgoing) and self._spawn is not None and self._spawn(self._linger, inbox, outgoing)
        finally:
            if not handed:
                for rpc_id in outgoing:
                    self._rpc.finish_request(rpc_id, timed_out=False)
        return lookup.result()

    async def _linger(self, inbox: _Inbox, outgoing: dict[bytes, _Outgoing]) -> None:
        """Wait out the requests a finished lookup left in flight (invariant 1)."""
        try:
            while True:
                while inbox.answers:
                    _, envelope = inbox.answers.popleft()
                    if outgoing.pop(envelope.message.rpc_id, None) is not None:
                        self._rpc.finish_request(envelope.message.rpc_id, timed_out=False)
                if not outgoing:
                    return
                inbox.wake = trio.Event()
                with trio.move_on_at(min(o.deadline for o in outgoing.values())):
                    await inbox.wake.wait()
                await self._expire(None, outgoing)
        finally:
            for rpc_id in outgoing:
                self._rpc.finish_request(rpc_id, timed_out=False)

    async def _start(
        self, lookup: Lookup, inbox: _Inbox, outgoing: dict[bytes, _Outgoing], contact: Contact, msg: Message
    ) -> None:
        address = (contact.host, contact.port)
        try:
            data = await self._rpc.start_request(
                address, msg, expect_id=contact.node_id, deliver=inbox.deliverer(contact)
            )
        except DialError as exc:
            logger.debug("dht lookup: %s", exc)
            lookup.on_timeout(contact.node_id, trio.current_time())
            self._on_failed(contact)
            return
        deadline = trio.current_time() + self._config.request_timeout
        outgoing[msg.rpc_id] = _Outgoing(contact=contact, data=data, sends=1, deadline=deadline)

    async def _expire(self, lookup: Lookup | None, outgoing: dict[bytes, _Outgoing]) -> None:
        cfg = self._config
        now = trio.current_time()
        for rpc_id, out in list(outgoing.items()):
            if now < out.deadline:
                continue
            if out.sends <= cfg.request_retries:
                out.sends += 1
                out.deadline = now + cfg.request_timeout
                try:
                    await self._rpc.resend(out.data, (out.contact.host, out.contact.port))
                except DialError:
                    pass  # counts as one more unanswered send
                continue
            del outgoing[rpc_id]
            self._rpc.finish_request(rpc_id, timed_out=True)
            if lookup is not None:
                lookup.on_timeout(out.contact.node_id, now)
            self._on_failed(out.contact)

    def _apply(self, lookup: Lookup, contact: Contact, message: Message) -> None:
        now = trio.current_time()
        match message:
            case Nodes(contacts=contacts):
                lookup.on_response(contact.node_id, contacts, now=now)
            case Values(key=key, records=records, next_cursor=cursor, contacts=contacts, digest=digest):
                found = self._check_records(key, records)
                lookup.on_response(contact.node_id, contacts, found, next_cursor=cursor, digest=digest, now=now)
            case _:  # DhtRpc delivers only the answer type the request expects
                pass
