"""The iterative Kademlia lookup (FIND_NODE and FIND_VALUE) as a sans-IO state machine.

Invariants:

1. Every candidate is in exactly one state: ``new`` (known, not asked), ``asked`` (request in flight since
   ``sent_at``), ``answered`` or ``failed``. States only move forward: new -> asked -> answered | failed.
2. Only candidates among the ``k`` closest not-failed ones are asked, and at most ``alpha`` first requests are in
   flight at once. Our own id is never a candidate.
3. The lookup is finished when the ``k`` closest not-failed candidates have all answered (or no candidate is left
   to ask and none is in flight) and no page request is outstanding. Once finished it asks nothing more and
   ignores late answers.
4. A request in flight longer than ``request_timeout`` (measured on the ``now`` passed in) counts as failed; the
   lookup reports it once as :class:`ContactFailed` so the service can tell the routing table.
5. For FIND_VALUE, records from every answering node are kept (never stopping at the first value): per publisher
   the highest ``seq`` wins. Paged answers are followed with the node's cursor, one page request per node at a
   time and at most ``max_pages`` per node.

Theory of operation: the service creates a :class:`Lookup` with the closest contacts of its routing table, sends
what :meth:`Lookup.next_actions` returns, feeds each answer to :meth:`Lookup.on_response` (each timeout to
:meth:`Lookup.on_timeout`), and calls ``next_actions`` again after each event and at :meth:`Lookup.next_deadline`,
until :attr:`Lookup.finished`. :meth:`Lookup.result` then gives the k closest answering contacts and the records.
Records handed in must already be verified (signature, key); this module only merges them.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from overlay_node.protocol.dht_routing import id_to_int
from overlay_node.wire.dht import NODE_ID_LEN, Contact, Record

__all__ = [
    "ContactFailed",
    "Lookup",
    "LookupAction",
    "LookupResult",
    "SendFindNode",
    "SendFindValue",
]

logger = logging.getLogger(__name__)

DEFAULT_ALPHA: Final = 3
DEFAULT_K: Final = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class SendFindNode:
    """Send FIND_NODE(target) to ``contact``."""

    contact: Contact
    target: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SendFindValue:
    """Send FIND_VALUE(target, cursor) to ``contact``; ``cursor=None`` is the first request (contacts + records)."""

    contact: Contact
    target: bytes
    cursor: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactFailed:
    """A request to ``contact`` timed out; the service reports it to the routing table."""

    contact: Contact


LookupAction = SendFindNode | SendFindValue | ContactFailed


class _State(enum.Enum):
    NEW = "new"
    ASKED = "asked"
    ANSWERED = "answered"
    FAILED = "failed"


@dataclass(slots=True)
class _Candidate:
    contact: Contact
    distance: int
    state: _State = _State.NEW
    sent_at: float = 0.0
    pages: int = 0
    #: cursor of the page to ask for next (queued), or of the page in flight
    cursor: bytes | None = None
    page_sent_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupResult:
    """What a finished (or abandoned) lookup found."""

    target: bytes
    #: the k closest contacts that answered, closest first
    closest: tuple[Contact, ...]
    #: one record per publisher (highest seq), tombstones included, ordered by publisher
    records: tuple[Record, ...] = ()
    queried: int = 0
    failed: int = 0
    finished: bool = True
    #: records per answering node id (to re-store the latest record where it was missing or stale)
    holders: dict[bytes, frozenset[bytes]] = field(default_factory=dict)

    @property
    def live_records(self) -> tuple[Record, ...]:
        """The records that are not tombstones (expiry is the caller's business: it needs the wall clock)."""
        return tuple(r for r in self.records if not r.is_tombstone)


class Lookup:
    """One iterative lookup of ``target`` (see the module docstring).

    Args:
        target: the 32-byte id or key looked up.
        initial: starting contacts (the routing table's closest).
        own_id: our node id, never asked.
        find_value: FIND_VALUE (collect records) instead of FIND_NODE.
        k: how many closest contacts must answer.
        alpha: parallel first requests.
        request_timeout: seconds of protocol time before an unanswered request counts as failed.
        max_pages: most page requests sent to one node.
    """

    def __init__(
        self,
        target: bytes,
        initial: Iterable[Contact],
        *,
        own_id: bytes,
        find_value: bool = False,
        k: int = DEFAULT_K,
        alpha: int = DEFAULT_ALPHA,
        request_timeout: float = 2.0,
        max_pages: int = 128,
    ) -> None:
        if len(target) != NODE_ID_LEN:
            raise ValueError("target must be 32 bytes")
        if k < 1 or alpha < 1 or max_pages < 0:
            raise ValueError("k and alpha must be >= 1")
        self.target = target
        self.own_id = own_id
        self.find_value = find_value
        self.k = k
        self.alpha = alpha
        self.request_timeout = request_timeout
        self.max_pages = max_pages
        self._t = id_to_int(target)
        self._candidates: dict[bytes, _Candidate] = {}
        #: node ids ordered by distance; kept sorted on insert
        self._order: list[bytes] = []
        self._records: dict[bytes, Record] = {}
        self._holders: dict[bytes, set[bytes]] = {}
        self._finished = False
        self._add(initial)

    # -- candidates ----------------------------------------------------------------------------------------------

    def _add(self, contacts: Iterable[Contact]) -> None:
        added = False
        for contact in contacts:
            node_id = contact.node_id
            if node_id == self.own_id or node_id in self._candidates:
                continue
            self._candidates[node_id] = _Candidate(contact, id_to_int(node_id) ^ self._t)
            self._order.append(node_id)
            added = True
        if added:
            self._order.sort(key=lambda nid: self._candidates[nid].distance)

    def _top(self) -> list[_Candidate]:
        """The k closest candidates that have not failed."""
        top: list[_Candidate] = []
        for node_id in self._order:
            cand = self._candidates[node_id]
            if cand.state is not _State.FAILED:
                top.append(cand)
                if len(top) == self.k:
                    break
        return top

    @property
    def finished(self) -> bool:
        """True once the lookup has nothing left to ask or wait for (invariant 3)."""
        return self._finished

    def _check_finished(self) -> None:
        if self._finished:
            return
        if any(c.cursor is not None for c in self._candidates.values()):
            return
        # the top-k not-failed candidates (fewer if the network is small) have all answered
        if all(c.state is _State.ANSWERED for c in self._top()):
            self._finished = True

    # -- driving -------------------------------------------------------------------------------------------------

    def _expire(self, now: float) -> list[LookupAction]:
        failed: list[LookupAction] = []
        for cand in self._candidates.values():
            # compared as in next_deadline(): now - sent_at could round below the timeout at that very deadline
            if cand.state is _State.ASKED and now >= cand.sent_at + self.request_timeout:
                cand.state = _State.FAILED
                failed.append(ContactFailed(contact=cand.contact))
            elif cand.page_sent_at is not None and now >= cand.page_sent_at + self.request_timeout:
                # the node answered before, so it stays among the closest; only its remaining pages are lost
                cand.page_sent_at = None
                cand.cursor = None
                failed.append(ContactFailed(contact=cand.contact))
        return failed

    def next_actions(self, now: float) -> list[LookupAction]:
        """Expire overdue requests, then return the requests to send now (and the failures to report)."""
        if self._finished:
            return []
        actions = self._expire(now)
        if self.find_value:
            for cand in self._candidates.values():
                if cand.cursor is not None and cand.page_sent_at is None:
                    cand.page_sent_at = now
                    cand.pages += 1
                    actions.append(SendFindValue(contact=cand.contact, target=self.target, cursor=cand.cursor))
        in_flight = sum(1 for c in self._candidates.values() if c.state is _State.ASKED)
        for cand in self._top():
            if in_flight >= self.alpha:
                break
            if cand.state is _State.NEW:
                cand.state = _State.ASKED
                cand.sent_at = now
                in_flight += 1
                if self.find_value:
                    actions.append(SendFindValue(contact=cand.contact, target=self.target))
                else:
                    actions.append(SendFindNode(contact=cand.contact, target=self.target))
        self._check_finished()
        return actions

    def next_deadline(self) -> float | None:
        """Protocol time at which an in-flight request times out (call ``next_actions`` then), or None."""
        times = [c.sent_at for c in self._candidates.values() if c.state is _State.ASKED]
        times += [c.page_sent_at for c in self._candidates.values() if c.page_sent_at is not None]
        return min(times) + self.request_timeout if times and not self._finished else None

    def on_response(
        self,
        node_id: bytes,
        contacts: Iterable[Contact],
        records: Iterable[Record] = (),
        *,
        next_cursor: bytes | None = None,
        now: float,  # noqa: ARG002 -- every event takes the caller's clock (invariant 4); callers name it
    ) -> None:
        """An answer (NODES, or one VALUES page) from ``node_id`` arrived.

        Answers from nodes not asked, or arriving after the lookup finished or timed the request out, are ignored.
        """
        if self._finished:
            return
        cand = self._candidates.get(node_id)
        if cand is None:
            return
        if cand.state is _State.ASKED:
            cand.state = _State.ANSWERED
            self._add(contacts)
        elif cand.state is _State.ANSWERED and cand.page_sent_at is not None:
            cand.page_sent_at = None
        else:
            return
        cand.cursor = None
        if self.find_value:
            self._merge(node_id, records)
            if next_cursor is not None and cand.pages < self.max_pages:
                cand.cursor = next_cursor
        self._check_finished()

    def _merge(self, node_id: bytes, records: Iterable[Record]) -> None:
        held = self._holders.setdefault(node_id, set())
        for record in records:
            if record.key != self.target:
                continue
            held.add(record.publisher)
            known = self._records.get(record.publisher)
            if known is None or record.seq > known.seq:
                self._records[record.publisher] = record

    def on_timeout(
        self,
        node_id: bytes,
        now: float,  # noqa: ARG002 -- every event takes the caller's clock (invariant 4); callers name it
    ) -> None:
        """The request to ``node_id`` failed (timed out as seen by the service, or unreachable)."""
        cand = self._candidates.get(node_id)
        if cand is None or self._finished:
            return
        if cand.state is _State.ASKED:
            cand.state = _State.FAILED
        elif cand.page_sent_at is not None:
            cand.page_sent_at = None
            cand.cursor = None
        self._check_finished()

    # -- outcome -------------------------------------------------------------------------------------------------

    def result(self) -> LookupResult:
        """The k closest answering contacts and the merged records (final once :attr:`finished`)."""
        answered = [
            self._candidates[nid].contact for nid in self._order if self._candidates[nid].state is _State.ANSWERED
        ][: self.k]
        states = [c.state for c in self._candidates.values()]
        return LookupResult(
            target=self.target,
            closest=tuple(answered),
            records=tuple(sorted(self._records.values(), key=lambda r: r.publisher)),
            queried=sum(1 for s in states if s is not _State.NEW),
            failed=sum(1 for s in states if s is _State.FAILED),
            finished=self._finished,
            holders={nid: frozenset(pubs) for nid, pubs in self._holders.items()},
        )
