"""The iterative Kademlia lookup (FIND_NODE and FIND_VALUE) as a sans-IO state machine.

Invariants:

1. Every candidate is in exactly one state: ``new`` (known, not asked), ``asked`` (request in flight since
   ``sent_at``), ``slow`` (still in flight past the stall time), ``answered`` or ``failed``. States only move
   forward: new -> asked -> (slow ->) answered | failed.
2. Only candidates among the ``k`` closest not-failed ones are asked. While answers still bring closer contacts, at
   most ``alpha`` first requests are in flight at once; once ``alpha`` answers in a row brought none closer than the
   closest known (a round without progress, the Kademlia paper's final round), every not-yet-asked one of the ``k``
   closest is asked at once. Our own id is never a candidate.
3. The lookup is finished when the ``k`` closest not-failed candidates have all answered (or no candidate is left
   to ask and none is in flight) and no page request is outstanding. Once finished it asks nothing more and
   ignores late answers.
4. A request in flight longer than ``request_timeout`` (measured on the ``now`` passed in) counts as failed; the
   lookup reports it once as :class:`ContactFailed` so the service can tell the routing table. Once some node has
   answered, a request in flight longer than the stall time (``stall_timeout``, or ``STALL_FACTOR`` times the
   slowest answer of this lookup if that is longer) is ``slow``: the lookup no longer waits for it (it leaves the
   k closest and frees its slot, so a dead node costs the stall time, not the request timeout), but still takes its
   answer if one comes before the lookup finishes.
5. For FIND_VALUE, records from every answering node are kept (never stopping at the first value): per publisher
   the highest ``seq`` wins. Paged answers are followed with the node's cursor, one page request per node at a
   time and at most ``max_pages`` per node.
6. A first page with more pages after it names the holder's records by their digest (``wire.dht.records_digest``).
   The pages of only one holder per digest are followed at a time; the others with that digest wait. Once every page
   of that holder arrived and the (publisher, seq) pairs received hash to the digest it named, the holders naming
   the same digest are not asked for more pages (they hold nothing else); if they do not hash to it (or its pages
   fail, or one of them is slow: past the stall time of invariant 4), the waiting holders are paged as usual.
7. What each event needs is kept up to date by the events that change it, not recounted over every candidate: the k
   closest not-failed candidates (recomputed only after a candidate is added, fails, turns slow or answers after
   being slow), the number of first requests in flight, whether a page may be due, and a time before which no
   request in flight can be overdue (a lower bound: the earliest deadline when they were last all looked at, or the
   deadline of a request sent since; reset when the first answer starts the stall time). They always agree with a
   recount: the first two equal it, the flag is set whenever a page is due, and the time is never after the earliest
   deadline (``tests/unit/test_dht_lookup.py`` checks it after every event of random lookups).

Theory of operation: the service creates a :class:`Lookup` with the closest contacts of its routing table, sends
what :meth:`Lookup.next_actions` returns, feeds each answer to :meth:`Lookup.on_response` (each timeout to
:meth:`Lookup.on_timeout`), and calls ``next_actions`` again after each event and at :meth:`Lookup.next_deadline`,
until :attr:`Lookup.finished`. :meth:`Lookup.result` then gives the k closest answering contacts and the records.
Records handed in must already be verified (signature, key); this module only merges them.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from overlay_node.protocol.dht_routing import id_to_int
from overlay_node.wire.dht import NODE_ID_LEN, Contact, Record, records_digest

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
#: a request is slow after this many times the slowest answer of its lookup (if above ``stall_timeout``)
STALL_FACTOR: Final = 4.0


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
    SLOW = "slow"
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
    #: the digest its first page named (invariant 6), and the (publisher, seq) of the records it sent
    digest: bytes | None = None
    received: list[Record] = field(default_factory=list)
    #: its next page waits for another holder of the same digest
    waiting: bool = False


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
        stall_timeout: seconds after which a request is slow, once another node answered (invariant 4; ``inf``:
            never).
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
        stall_timeout: float = math.inf,
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
        self.stall_timeout = stall_timeout
        #: the longest a first request took to be answered in this lookup (0: no answer yet)
        self._slowest = 0.0
        self._t = id_to_int(target)
        self._candidates: dict[bytes, _Candidate] = {}
        #: node ids ordered by distance; kept sorted on insert
        self._order: list[bytes] = []
        self._records: dict[bytes, Record] = {}
        self._holders: dict[bytes, set[bytes]] = {}
        self._finished = False
        #: answers in a row that brought no contact closer than the closest known (invariant 2)
        self._no_progress = 0
        #: digests whose records we received in full (-> the publishers), and the holder being paged for each
        self._complete: dict[bytes, frozenset[bytes]] = {}
        self._paging: dict[bytes, bytes] = {}
        # kept as the events change them, not counted again on every event (each answer took several passes over every
        # candidate; invariant 7):
        #: the k closest not failed and not slow (None: to be computed again)
        self._top_cache: list[_Candidate] | None = None
        #: candidates in the ASKED state (first requests in flight)
        self._asked = 0
        #: a candidate may have a page to ask for (a cursor was set, or a holder stopped waiting)
        self._pages_due = False
        #: nothing in flight can be overdue before this protocol time (-inf: look)
        self._due_at = -math.inf
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
            self._top_cache = None

    def _closest_distance(self) -> int | float:
        return self._candidates[self._order[0]].distance if self._order else math.inf

    def _top(self) -> list[_Candidate]:
        """The k closest candidates that have not failed (and are not slow); kept (invariant 7)."""
        top = self._top_cache
        if top is None:
            top = []
            for node_id in self._order:
                cand = self._candidates[node_id]
                if cand.state is not _State.FAILED and cand.state is not _State.SLOW:
                    top.append(cand)
                    if len(top) == self.k:
                        break
            self._top_cache = top
        return top

    def _leave_top(self, cand: _Candidate, state: _State) -> None:
        """``cand`` fails or turns slow: it leaves the k closest."""
        if cand.state is _State.ASKED:
            self._asked -= 1
        cand.state = state
        self._top_cache = None

    @property
    def finished(self) -> bool:
        """True once the lookup has nothing left to ask or wait for (invariant 3)."""
        return self._finished

    def _check_finished(self) -> None:
        if self._finished:
            return
        # the top-k not-failed candidates (fewer if the network is small) have all answered, and no page is left
        if all(c.state is _State.ANSWERED for c in self._top()) and all(
            c.cursor is None for c in self._candidates.values()
        ):
            self._finished = True

    # -- driving -------------------------------------------------------------------------------------------------

    def _stall(self) -> float:
        """Seconds after which a request in flight is slow (invariant 4); ``inf`` before any answer."""
        return max(self.stall_timeout, STALL_FACTOR * self._slowest) if self._slowest else math.inf

    def _expire(self, now: float) -> list[LookupAction]:
        failed: list[LookupAction] = []
        if now < self._due_at:
            return failed
        stall = self._stall()
        wait = min(stall, self.request_timeout)
        due = math.inf
        for cand in self._candidates.values():
            # compared as in next_deadline(): now - sent_at could round below the timeout at that very deadline
            if cand.state in (_State.ASKED, _State.SLOW) and now >= cand.sent_at + self.request_timeout:
                self._leave_top(cand, _State.FAILED)
                failed.append(ContactFailed(contact=cand.contact))
            elif cand.state is _State.ASKED and now >= cand.sent_at + stall:
                self._leave_top(cand, _State.SLOW)
            elif cand.page_sent_at is not None and now >= cand.page_sent_at + self.request_timeout:
                # the node answered before, so it stays among the closest; only its remaining pages are lost
                cand.page_sent_at = None
                cand.cursor = None
                self._release(cand)
                failed.append(ContactFailed(contact=cand.contact))
            elif cand.page_sent_at is not None and now >= cand.page_sent_at + stall and self._pages_for_digest(cand):
                self._release(cand)  # a slow page: the holders waiting on it are paged themselves
            if cand.state is _State.ASKED:
                due = min(due, cand.sent_at + wait)
            elif cand.state is _State.SLOW:
                due = min(due, cand.sent_at + self.request_timeout)
            if cand.page_sent_at is not None:
                due = min(due, cand.page_sent_at + wait)
        self._due_at = due
        return failed

    def _pages_for_digest(self, cand: _Candidate) -> bool:
        """Whether ``cand`` is the holder being paged for its digest, others waiting on it (invariant 6)."""
        return cand.digest is not None and self._paging.get(cand.digest) == cand.contact.node_id

    def next_actions(self, now: float) -> list[LookupAction]:
        """Expire overdue requests, then return the requests to send now (and the failures to report)."""
        if self._finished:
            return []
        actions = self._expire(now)
        # what is sent now is due no sooner than this (the stall time only grows once the first answer has set it)
        self._due_at = min(self._due_at, now + min(self._stall(), self.request_timeout))
        if self._pages_due:
            self._pages_due = False
            for cand in self._candidates.values():
                if cand.cursor is not None and cand.page_sent_at is None and not cand.waiting:
                    cand.page_sent_at = now
                    cand.pages += 1
                    actions.append(SendFindValue(contact=cand.contact, target=self.target, cursor=cand.cursor))
        limit = self.k if self._no_progress >= self.alpha else self.alpha
        for cand in self._top():
            if self._asked >= limit:
                break
            if cand.state is _State.NEW:
                cand.state = _State.ASKED
                cand.sent_at = now
                self._asked += 1
                if self.find_value:
                    actions.append(SendFindValue(contact=cand.contact, target=self.target))
                else:
                    actions.append(SendFindNode(contact=cand.contact, target=self.target))
        self._check_finished()
        return actions

    def next_deadline(self) -> float | None:
        """Protocol time at which an in-flight request times out (call ``next_actions`` then), or None."""
        if self._finished:
            return None
        stall = self._stall()
        times = [c.sent_at + self.request_timeout for c in self._candidates.values() if c.state is _State.SLOW]
        times += [
            c.sent_at + min(stall, self.request_timeout) for c in self._candidates.values() if c.state is _State.ASKED
        ]
        for c in self._candidates.values():
            if c.page_sent_at is not None:
                wait = min(stall, self.request_timeout) if self._pages_for_digest(c) else self.request_timeout
                times.append(c.page_sent_at + wait)
        return min(times) if times else None

    def on_response(
        self,
        node_id: bytes,
        contacts: Iterable[Contact],
        records: Iterable[Record] = (),
        *,
        next_cursor: bytes | None = None,
        digest: bytes | None = None,
        now: float,
    ) -> None:
        """An answer (NODES, or one VALUES page) from ``node_id`` arrived; ``digest`` is what a first page says the
        node holds in all (invariant 6).

        Answers from nodes not asked, or arriving after the lookup finished or timed the request out, are ignored.
        """
        if self._finished:
            return
        cand = self._candidates.get(node_id)
        if cand is None:
            return
        first = cand.state in (_State.ASKED, _State.SLOW)
        if first:
            if cand.state is _State.ASKED:
                self._asked -= 1
            else:
                self._top_cache = None  # a slow one is back among the k closest
            cand.state = _State.ANSWERED
            if not self._slowest:
                self._due_at = -math.inf  # the stall time starts to count: requests in flight may be slow sooner
            self._slowest = max(self._slowest, now - cand.sent_at, 1e-9)
            closest = self._closest_distance()
            self._add(contacts)
            self._no_progress = 0 if self._closest_distance() < closest else self._no_progress + 1
        elif cand.state is _State.ANSWERED and cand.page_sent_at is not None:
            cand.page_sent_at = None
        else:
            return
        cand.cursor = None
        if self.find_value:
            records = [r for r in records if r.key == self.target]
            self._merge(node_id, records)
            if next_cursor is not None and cand.pages < self.max_pages:
                cand.cursor = next_cursor
                self._pages_due = True
            if first and digest is not None and next_cursor is not None:
                self._first_page(cand, digest)
            if cand.digest is not None:
                cand.received += records
                if cand.cursor is None:
                    self._last_page(cand, complete=next_cursor is None)
        self._check_finished()

    def _first_page(self, cand: _Candidate, digest: bytes) -> None:
        """A first page with more after it, naming ``digest`` (invariant 6)."""
        publishers = self._complete.get(digest)
        if publishers is not None:  # we have every record it holds
            cand.cursor = None
            self._holders.setdefault(cand.contact.node_id, set()).update(publishers)
            return
        cand.digest = digest
        if digest in self._paging:
            cand.waiting = True
        else:
            self._paging[digest] = cand.contact.node_id

    def _last_page(self, cand: _Candidate, *, complete: bool) -> None:
        """The last page of a holder with a digest arrived (``complete``: it had no more; else the page limit
        stopped it)."""
        digest = cand.digest
        assert digest is not None
        received = sorted(cand.received, key=lambda r: r.publisher)
        if complete and records_digest(received) == digest:
            publishers = frozenset(r.publisher for r in received)
            self._complete[digest] = publishers
            self._paging.pop(digest, None)
            for other in self._candidates.values():
                if other.waiting and other.digest == digest:
                    other.waiting = False
                    other.cursor = None
                    self._holders.setdefault(other.contact.node_id, set()).update(publishers)
        else:
            self._release(cand)

    def _release(self, cand: _Candidate) -> None:
        """``cand``'s pages did not give its digest's records in full: page the holders waiting on it."""
        digest = cand.digest
        if digest is None or self._paging.get(digest) != cand.contact.node_id:
            return
        del self._paging[digest]
        for other in self._candidates.values():
            if other.waiting and other.digest == digest:
                other.waiting = False
                self._pages_due = True

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
        if cand.state in (_State.ASKED, _State.SLOW):
            self._leave_top(cand, _State.FAILED)
        elif cand.page_sent_at is not None:
            cand.page_sent_at = None
            cand.cursor = None
            self._release(cand)
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
