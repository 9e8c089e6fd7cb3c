"""The overlay engine: BRC-22 submission and BRC-24 lookup over the hosted topic managers and lookup services.

Theory of operation (the reference engine's, ``@bsv/overlay`` ``Engine``, with our durability rule):

``submit(beef, topics, mode)``
1. Every topic must be hosted, else the whole request is refused (``This server does not support this topic``).
2. The BEEF is read (V1, V2 or Atomic; a raw transaction is refused) and, unless the mode is
   ``historical-tx-no-spv``, verified: every merkle path against the chain tracker (``overlay.spv = "headers"``;
   ``"scripts-only"`` skips the block check, as the reference's ``'scripts only'`` tracker), every unproven
   transaction's scripts, balance and ``overlay.fee_rate`` (:func:`overlay_node.chain.spv.verify_beef`).
3. Per topic, read-only: a transaction the topic already applied is a duplicate (empty instructions); the inputs
   that spend the topic's outputs are its previous coins; the topic manager names the outputs to admit and the
   previous coins to retain. A manager that raises refuses its own topic only. The read is skipped when the
   filter of applied txids (``overlay_known.py``) shows that neither the transaction nor any it spends was
   applied here: its answer would be empty.
4. Unless the mode is historical, an unproven transaction is broadcast to ARC **before** anything is stored. ARC
   refusing it for good (invalid, double spend) refuses the submission; ARC unreachable is logged and the
   submission goes on (the reference's default), since the node's settlement of its own payments retries anyway.
5. One durable transaction (written alone when no other submission is being written, else group-committed with
   the others; alone and with nothing else in flight, on the event loop's own thread: see ``_commit``) marks the
   previous coins spent, deletes the unretained ones with their unretained history, admits
   the outputs with their BEEF and BRC-64 links, records the applied transaction and the lookup services' index
   entries. The STEAK is answered **after** that commit, so an acknowledged admission survives a crash (the
   reference answers before its writes).
6. After the commit: the lookup services that have the optional hooks of
   :class:`~overlay_node.topics.plugins.LookupEvents` hear of each output admitted, spent and evicted (what they
   raise is logged), and in ``current-tx`` mode the transaction is propagated to the other hosts of the topics that
   admitted or removed something (``on_applied`` listeners).

``lookup(service, query)``: the service answers outpoints from its index; each is hydrated with the BEEF it was
admitted with, and, when the formula asks for history, the BEEFs of its retained predecessors down to that depth
(BRC-64), merged into one BEEF whose last transaction is the output's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from overlay_node.chain.formats import Submission, encode_beef, merge_entries, parse_submission
from overlay_node.chain.refusals import Refusal
from overlay_node.chain.spv import claims, verify_beef
from overlay_node.chain.validation import Policy
from overlay_node.clock import wall_time
from overlay_node.config import OverlaySection
from overlay_node.errors import BadRequest, OverlayError
from overlay_node.metrics import Metrics
from overlay_node.services.group_commit import GroupCommit
from overlay_node.services.overlay_known import KnownTxids
from overlay_node.store.db import Store
from overlay_node.store.overlay import (
    IndexWrite,
    PreviousCoins,
    StoredOutput,
    SubmitOutcome,
    SubmitWrite,
    TopicWrite,
)
from overlay_node.topics.plugins import (
    SUBMIT_MODES,
    Admittance,
    AdmittedOutput,
    FormulaItem,
    LookupService,
    SpentOutput,
    SubmitMode,
    TaggedTx,
    TopicManager,
)

logger = logging.getLogger(__name__)

__all__ = ["AnswerOutput", "Applied", "OverlayEngine", "Steak"]

Outpoint = tuple[str, int]
#: applied transactions read per page when the filter of known txids is filled at start
_KNOWN_PAGE = 10_000
_HOOKS = ("output_admitted", "output_spent", "output_evicted")
#: BRC-22's STEAK: per topic, ``outputsToAdmit``, ``coinsToRetain`` and (once applied) ``coinsRemoved``
Steak = dict[str, dict[str, list[int]]]


class BroadcastRefused(BadRequest):
    """ARC refused the transaction for good: nothing was stored."""

    code = "broadcast_refused"


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerOutput:
    """One output of a lookup answer: the BEEF whose last transaction holds it, and the service's context."""

    txid: str
    vout: int
    beef: bytes
    context: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    """What ``on_applied`` listeners hear after a submission was committed."""

    txid: str
    beef: bytes
    mode: SubmitMode
    steak: Steak
    #: topics that admitted or removed something (the reference propagates only those)
    relevant: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryNode:
    """One output of a BRC-64 history, ``depth`` spends back from the output asked about."""

    output: StoredOutput
    depth: int

    def as_json(self) -> dict[str, Any]:
        out = self.output
        return {
            "txid": out.txid,
            "outputIndex": out.vout,
            "topic": out.topic,
            "depth": self.depth,
            "satoshis": out.satoshis,
            "spent": out.spent,
            "consumed": [f"{t}.{v}" for t, v in out.consumed],
            "consumedBy": [f"{t}.{v}" for t, v in out.consumed_by],
        }


@dataclass(slots=True)
class _Plan:
    """One topic's part of a submission, between the managers and the write."""

    topic: str
    duplicate: bool
    failed: bool
    previous: dict[int, Outpoint]
    admittance: Admittance


#: what a fresh transaction's previous coins are known to be (read only)
_NOTHING_HELD = PreviousCoins()

Broadcaster = Callable[[bytes, str], Awaitable[None]]
Tracker = Callable[[Mapping[int, set[str]]], Awaitable[Mapping[int, str | None]]]
LookupHook = Callable[[str, Any], Awaitable[None]]


class _Index:
    """One lookup service's view of its index (what :meth:`LookupService.lookup` gets)."""

    def __init__(self, store: Store, service: str) -> None:
        self._store = store
        self._service = service

    async def find(
        self,
        where: Mapping[str, Sequence[str]],
        *,
        limit: int | None = None,
        skip: int = 0,
        newest_first: bool = True,
    ) -> list[Outpoint]:
        return await self._store.overlay.find_index(
            self._service, where, limit=limit, skip=skip, newest_first=newest_first
        )

    async def fields(self, outpoint: Outpoint) -> dict[str, list[str]] | None:
        return await self._store.overlay.index_fields(self._service, outpoint)


class OverlayEngine:
    """The overlay host's engine (see the module docstring).

    Args:
        config: the ``[overlay]`` section.
        store: the node's store (``store.overlay``).
        metrics: the node's instruments.
        managers: hosted topic managers by name.
        services: hosted lookup services by name.
        tracker: block roots for SPV (``ChainTracker.roots``); None with ``overlay.spv = "scripts-only"``.
        broadcaster: sends an unproven transaction to ARC, raising :class:`BroadcastRefused` when ARC refuses it
            for good; None: no broadcast.
    """

    def __init__(
        self,
        config: OverlaySection,
        store: Store,
        metrics: Metrics,
        managers: Mapping[str, TopicManager],
        services: Mapping[str, LookupService],
        *,
        tracker: Tracker | None,
        broadcaster: Broadcaster | None,
        clock: Callable[[], float] = wall_time,
    ) -> None:
        self._config = config
        self._store = store
        self._metrics = metrics
        self.managers = dict(managers)
        self.services = dict(services)
        self._tracker = tracker
        self._broadcaster = broadcaster
        self._clock = clock
        self._policy = Policy(mining_fee_satoshis=config.fee_rate, mining_fee_bytes=1000)
        self._unindex_on_spend = tuple(name for name, s in self.services.items() if not s.keeps_spent)
        #: the lookup services that have after-commit hooks (``_notify``)
        self._listening = [(name, s) for name, s in self.services.items() if any(hasattr(s, h) for h in _HOOKS)]
        # the instruments each submission counts with, each looked up once (on first use)
        self._counters: dict[tuple[str, str], Any] = {}
        self._indexes = {name: _Index(store, name) for name in self.services}
        self._writer = GroupCommit[SubmitWrite, SubmitOutcome](self._write, max_batch=config.commit_batch)
        self._slots = trio.Semaphore(config.max_concurrent_submits)
        self._pending = 0  # submissions handed to the store and not yet committed (or failed)
        self._begun = 0  # submissions begun so far (``_commit``: was this one alone all along?)
        self._lone = 0  # lone submissions in a row, up to the last one written (``_commit``)
        #: the txids applied so far (``overlay_known.py``): a fresh transaction's first read is skipped
        self.known = KnownTxids()
        #: set once :attr:`known` holds every txid applied before this start (or failed to: then it stays unready)
        self.known_loaded = trio.Event()
        self._last_score = 0
        self._listeners: list[Callable[[Applied], None]] = []
        self._before_lookup: dict[str, LookupHook] = {}
        self._applied_events: dict[str, trio.Event] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write admitted submissions until cancelled."""
        # scores keep increasing across restarts (GASP peers page from the last one they saw)
        self._last_score = await self._store.overlay.max_score()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._load_known)
            await self._writer.run(task_status=task_status)

    async def _load_known(self) -> None:
        """Fill :attr:`known` with every txid applied before this start, a page at a time (submissions go on
        meanwhile, each reading the store)."""
        after: tuple[str, str] | None = None
        try:
            while True:
                page = await self._store.overlay.applied_txids(after, _KNOWN_PAGE)
                self.known.add_all(txid for _, txid in page)
                if len(page) < _KNOWN_PAGE:
                    break
                after = page[-1]
        except OverlayError:
            logger.warning("cannot load the applied transactions: every submission reads the store", exc_info=True)
        else:
            self.known.ready = True
        finally:
            self.known_loaded.set()

    def before_lookup(self, service: str, hook: LookupHook) -> None:
        """Run ``hook(service, query)`` before ``service`` answers (e.g. to admit what the DHT knows of)."""
        self._before_lookup[service] = hook

    async def wait_applied(self, txid: str, topic: str) -> None:
        """Return once ``topic`` has applied ``txid`` (at once if it already has): for callers that wait for a
        propagated or synced transaction to arrive."""
        while True:
            # the event first: an application committed while the store is read still wakes us
            event = self._applied_events.get(txid)
            if event is None:
                event = self._applied_events[txid] = trio.Event()
            found = await self._store.overlay.previous_coins(txid, [topic], ())
            if topic in found.applied:
                return
            await event.wait()

    def on_applied(self, listener: Callable[[Applied], None]) -> None:
        """Call ``listener`` after each committed submission (synchronously: start work, do not wait in it)."""
        self._listeners.append(listener)

    # -- BRC-22 ----------------------------------------------------------------------------------------------

    async def submit(
        self,
        beef: bytes,
        topics: Sequence[str],
        *,
        off_chain: bytes | None = None,
        mode: SubmitMode = "current-tx",
        sole: bool = False,
    ) -> Steak:
        """Submit a transaction to ``topics`` (see the module docstring) and return the STEAK. ``sole``: it came
        on the HTTP server's only connection, so no other client's request can be waiting to begin (``_commit``).

        Raises:
            BadRequest: an unhosted topic, a body that is not BEEF, a failed SPV check, too many transactions,
                an unknown mode, or ARC refusing the transaction; nothing was stored.
            StoreError: the database failed; nothing was stored.
        """
        if mode not in SUBMIT_MODES:
            raise BadRequest(f"unknown submit mode {mode!r}: one of {', '.join(SUBMIT_MODES)}")
        topic_list = list(dict.fromkeys(topics))
        for topic in topic_list:
            if topic not in self.managers:
                raise BadRequest(f"This server does not support this topic: {topic}")
        self._begun += 1
        # begun while no other submission was in flight: its number, else 0 (``_commit``)
        alone = self._begun if self._slots.value == self._config.max_concurrent_submits else 0
        try:
            # a free slot costs no turn of the event loop: a submission that writes yields there (but a lone one,
            # written inline, with nothing else in flight), the others at their end (so that a client's stream of
            # duplicates or refusals never starves the other tasks)
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            steak = await self._submit(beef, topic_list, off_chain, mode, alone, sole)
        except OverlayError as exc:
            self._counter("submissions", "refused").inc()
            logger.debug("submission refused: %s", exc)
            await trio.lowlevel.checkpoint()
            raise
        finally:
            self._slots.release()
        return steak

    def _read(self, beef: bytes) -> Submission:
        if len(beef) < 4 or beef[:4] not in (b"\x01\x00\xbe\xef", b"\x02\x00\xbe\xef", b"\x01\x01\x01\x01"):
            raise BadRequest("the body is not a BEEF (BRC-62, BRC-96 or Atomic BEEF BRC-95)")
        try:
            submission = parse_submission(beef)
        except Refusal as exc:
            raise BadRequest(f"the BEEF cannot be read: {exc.extra_info}") from None
        if len(submission.txs) + len(submission.txid_only) > self._config.max_beef_txs:
            raise BadRequest(f"the BEEF holds more than {self._config.max_beef_txs} transactions")
        return submission

    async def _verify(self, submission: Submission) -> None:
        held: dict[str, Any] = {}
        needed = set(submission.txid_only)
        if needed:
            held = await self.held_outputs(needed)
        roots: Mapping[int, str | None] | None = None
        if self._tracker is not None:
            claimed = claims(submission)
            roots = await self._tracker(claimed) if claimed else {}
        try:
            verify_beef(submission, roots=roots, held=held, policy=self._policy)
        except Refusal as exc:
            raise BadRequest(f"Unable to verify SPV information: {exc.extra_info}") from None

    async def _submit(
        self, beef: bytes, topics: list[str], off_chain: bytes | None, mode: SubmitMode, alone: int, sole: bool
    ) -> Steak:
        submission = self._read(beef)
        if mode != "historical-tx-no-spv":
            await self._verify(submission)
        tagged = TaggedTx(beef=beef, submission=submission, off_chain=off_chain, mode=mode)
        tx = tagged.tx
        spends = [(i.txid, i.vout) for i in tx.inputs]
        known = self.known
        if known.may_hold(tx.txid) or any(known.may_hold(txid) for txid, _ in spends):
            found = await self._store.overlay.previous_coins(tx.txid, topics, spends)
        else:  # neither applied here nor spending anything a topic holds (overlay_known.py)
            found = _NOTHING_HELD
        plans = [self._plan(tagged, topic, found.applied, found.outputs.get(topic, set())) for topic in topics]
        if mode != "historical-tx" and self._broadcaster is not None and tx.bump is None:
            await self._broadcaster(beef, tx.txid)
        if self._lone and alone == self._begun and not self._pending and not sole:
            # it may be written inline (``_commit``): two turns of the loop first, so that requests that came
            # meanwhile (another client's) run and begin here, and it is not (before the score: ``_commit``);
            # not when it came on the HTTP server's only connection: no other request can be there to begin
            await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()
        write = self._write_for(tagged, plans)
        if write.topics:
            outcome = await self._commit(write, alone)
        else:
            outcome = SubmitOutcome()
            await trio.lowlevel.checkpoint()
        steak: Steak = {}
        relevant: list[str] = []
        for plan in plans:
            instructions = plan.admittance.as_json()
            if not plan.duplicate and not plan.failed and plan.topic not in outcome.duplicate_topics:
                removed = [i for i, op in plan.previous.items() if i not in plan.admittance.coins_to_retain]
                instructions["coinsRemoved"] = sorted(removed)
                if instructions["outputsToAdmit"] or removed:
                    relevant.append(plan.topic)
            steak[plan.topic] = instructions
        await self._notify(write, outcome)
        duplicate = all(p.duplicate or p.topic in outcome.duplicate_topics for p in plans)
        self._counter("submissions", "duplicate" if duplicate else "applied").inc()
        for topic in relevant:
            self._counter("admitted", topic).inc(len(steak[topic]["outputsToAdmit"]))
        if self._applied_events:
            event = self._applied_events.pop(tx.txid, None)
            if event is not None:
                event.set()
        if self._listeners:
            applied = Applied(txid=tx.txid, beef=beef, mode=mode, steak=steak, relevant=tuple(relevant))
            for listener in self._listeners:
                try:
                    listener(applied)
                except Exception:
                    logger.exception("overlay listener failed")
        return steak

    def _counter(self, family: str, label: str) -> Any:
        counter = self._counters.get((family, label))
        if counter is None:
            metrics = self._metrics
            parent = {
                "submissions": metrics.overlay_submissions,
                "admitted": metrics.overlay_admitted,
                "lookups": metrics.overlay_lookups,
            }[family]
            counter = self._counters[(family, label)] = parent.labels(label)
        return counter

    def _plan(self, tagged: TaggedTx, topic: str, applied: set[str], held: set[Outpoint]) -> _Plan:
        tx = tagged.tx
        if topic in applied:
            return _Plan(topic=topic, duplicate=True, failed=False, previous={}, admittance=Admittance())
        previous = {i: (inp.txid, inp.vout) for i, inp in enumerate(tx.inputs) if (inp.txid, inp.vout) in held}
        try:
            raw = self.managers[topic].admissible_outputs(tagged, sorted(previous))
            admittance = Admittance(
                outputs_to_admit=tuple(sorted({i for i in raw.outputs_to_admit if 0 <= i < len(tx.outputs)})),
                coins_to_retain=tuple(sorted({i for i in raw.coins_to_retain if i in previous})),
            )
        except Exception:
            logger.warning("topic manager %s failed on %s", topic, tx.txid, exc_info=True)
            return _Plan(topic=topic, duplicate=False, failed=True, previous={}, admittance=Admittance())
        return _Plan(topic=topic, duplicate=False, failed=False, previous=previous, admittance=admittance)

    def _write_for(self, tagged: TaggedTx, plans: Sequence[_Plan]) -> SubmitWrite:
        tx = tagged.tx
        now = self._clock()
        # GASP pages by score, a whole number of ms (GASP clients refuse other timestamps): strictly increasing, even
        # when the clock is not, or admits more than one transaction per ms
        score = max(int(now * 1000), self._last_score + 1)
        self._last_score = score
        topics: list[TopicWrite] = []
        for plan in plans:
            if plan.duplicate or plan.failed:
                continue
            admit = tuple(
                (vout, tx.outputs[vout].script, tx.outputs[vout].satoshis) for vout in plan.admittance.outputs_to_admit
            )
            index: list[IndexWrite] = []
            for vout, script, satoshis in admit:
                output = AdmittedOutput(
                    txid=tx.txid,
                    vout=vout,
                    topic=plan.topic,
                    satoshis=satoshis,
                    script=script,
                    off_chain=tagged.off_chain,
                )
                for name, service in self.services.items():
                    try:
                        fields = service.index(output)
                    except Exception:
                        logger.warning("lookup service %s failed to index %s.%d", name, tx.txid, vout, exc_info=True)
                        continue
                    if fields:
                        index.append(IndexWrite(service=name, vout=vout, fields=dict(fields)))
            topics.append(
                TopicWrite(
                    topic=plan.topic,
                    admit=admit,
                    previous=tuple(plan.previous.values()),
                    retained=tuple(plan.previous[i] for i in plan.admittance.coins_to_retain),
                    index=tuple(index),
                    unindex_on_spend=self._unindex_on_spend,
                )
            )
        return SubmitWrite(
            txid=tx.txid,
            beef=tagged.beef,
            block_height=tx.block_height,
            score=score,
            created_at=now,
            topics=tuple(topics),
        )

    async def _notify(self, write: SubmitWrite, outcome: SubmitOutcome) -> None:
        """The optional after-commit hooks of the lookup services (see the module docstring)."""
        listening = self._listening
        if not listening:
            return
        tx = parse_submission(write.beef).subject
        for topic in write.topics:
            if topic.topic in outcome.duplicate_topics:
                continue
            # the reference's order: spends, then evictions, then admissions
            calls: list[tuple[str, tuple[Any, ...]]] = [
                ("output_spent", (SpentOutput(txid=t, vout=v, topic=topic.topic, spending_txid=tx.txid),))
                for t, v in topic.previous
            ]
            calls += [("output_evicted", (t, v, name)) for name, t, v in outcome.evicted if name == topic.topic]
            calls += [
                ("output_admitted", (AdmittedOutput(txid=tx.txid, vout=v, topic=topic.topic, satoshis=n, script=s),))
                for v, s, n in topic.admit
            ]
            for name, service in listening:
                for hook, args in calls:
                    method = getattr(service, hook, None)
                    if method is None:
                        continue
                    try:
                        await method(*args)
                    except Exception:
                        logger.warning("lookup service %s failed in %s", name, hook, exc_info=True)

    async def _commit(self, write: SubmitWrite, alone: int = 0) -> SubmitOutcome:
        """Write one submission durably: alone, straight from this task, when no other is being written (the
        writer thread wakes this task after its commit, with no group commit task in between: a lone client's
        submissions each save two turns of the event loop); else through the group commit, with whatever else
        waits. Writes reach the writer thread in the order of their scores either way: a submission goes alone
        only when none is pending, and the group commit keeps its queue's order.

        A submission that began with no other in flight (``alone``: its number in :attr:`_begun`) and saw none
        begin since, even after two turns of the event loop (``_submit``: whatever arrived meanwhile runs first,
        and begins), is a lone one; the second lone submission in a row and those after it are written on the
        event loop's own thread (``inline``, ``store/engine.py`` invariant 8): a lone client's, whose loop has
        nothing else to do while it waits for the commit; sparing the two thread wake-ups of a hand-off to the
        writer thread and back takes a tenth off each of its submissions. Several clients' submissions stay in
        the writer thread, so that the loop reads and checks the others' while one commits: without the two
        turns, a request that had come during an inline commit began only after it, alone, and was written
        inline too, and so on: eight clients were served one at a time. A submission that came on the HTTP
        server's only connection (``sole``) takes no turns: another client's request could only come on a
        connection not accepted yet, which then waits for one commit (the two turns cost a lone client 3 % of
        its CPU)."""
        self.known.add(write.txid)  # before the store has it (overlay_known.py, invariant 1)
        self._pending += 1
        # a run of lone submissions ends at any other (written alone or not)
        self._lone = self._lone + 1 if alone == self._begun and self._pending == 1 else 0
        try:
            if self._pending == 1:
                inline = self._lone >= 2
                (outcome,) = await self._store.overlay.apply([write], durable=self._config.durable, inline=inline)
                return outcome
            return await self._writer.submit(write)
        finally:
            self._pending -= 1

    async def _write(self, writes: list[SubmitWrite]) -> list[SubmitOutcome]:
        return await self._store.overlay.apply(writes, durable=self._config.durable)

    # -- BRC-24 ----------------------------------------------------------------------------------------------

    async def lookup(self, service: str, query: Any, *, fill: bool = True) -> list[AnswerOutput]:
        """Answer ``query`` with ``service`` (see the module docstring); ``fill``: run its ``before_lookup`` hook
        first.

        Raises:
            BadRequest: an unknown service, or the service refused the query (its message).
            OverlayError: the service failed otherwise (logged; the HTTP layer answers 500).
        """
        plugin = self.services.get(service)
        if plugin is None:
            raise BadRequest(f"Lookup service not found for provider: {service}")
        hook = self._before_lookup.get(service) if fill else None
        if hook is not None:
            await hook(service, query)
        try:
            formula = await plugin.lookup(query, self._indexes[service])
        except (BadRequest, ValueError, TypeError) as exc:
            self._counter("lookups", "refused").inc()
            raise BadRequest(str(exc)) from None
        except OverlayError:
            self._counter("lookups", "failed").inc()
            raise
        except Exception as exc:
            self._counter("lookups", "failed").inc()
            logger.exception("lookup service %s failed", service)
            raise OverlayError(f"lookup service {service} failed") from exc
        items = list(formula)[: self._config.max_lookup_outputs]
        answer = await self.hydrate(items)
        self._counter("lookups", "answered").inc()
        return answer

    async def hydrate(self, items: Sequence[FormulaItem]) -> list[AnswerOutput]:
        """Each stored output among ``items`` with its BEEF (and its retained history when asked); outpoints not
        stored are left out, as the reference does."""
        if not items:
            return []
        answer: list[AnswerOutput] = []
        if all(item.history is None or item.history < 1 for item in items):
            # no history asked for: whether each is stored, and its BEEF (no output read whole)
            found = await self._store.overlay.answerable({(i.txid, i.vout) for i in items})
            for item in items:
                beef = found.pop((item.txid, item.vout), None)  # popped: an outpoint named twice is answered once
                if beef is not None:
                    answer.append(AnswerOutput(txid=item.txid, vout=item.vout, beef=beef, context=item.context))
            return answer
        outputs, beefs = await self._store.overlay.outputs_with_beefs({(i.txid, i.vout) for i in items})
        seen: set[Outpoint] = set()
        for item in items:
            op = (item.txid, item.vout)
            output = outputs.get(op)
            beef = beefs.get(item.txid)
            if output is None or beef is None or op in seen:
                continue
            seen.add(op)
            if item.history is not None and item.history >= 1 and output.consumed:
                beef = await self._with_history(output, beef, min(item.history, self._config.max_history_depth))
            answer.append(AnswerOutput(txid=item.txid, vout=item.vout, beef=beef, context=item.context))
        return answer

    async def _with_history(self, output: StoredOutput, beef: bytes, depth: int) -> bytes:
        """``beef`` merged with the BEEFs of ``output``'s retained predecessors down to ``depth`` (BRC-64)."""
        submissions: list[Submission] = []
        level = list(output.consumed)
        seen: set[Outpoint] = {output.outpoint}
        for _ in range(depth):
            level = [op for op in level if op not in seen]
            if not level:
                break
            seen.update(level)
            found, beefs = await self._store.overlay.outputs_with_beefs(level, topic=output.topic)
            nxt: list[Outpoint] = []
            for op in level:
                pred = found.get(op)
                data = beefs.get(op[0])
                if pred is None or data is None:
                    continue
                submissions.append(parse_submission(data))
                nxt.extend(pred.consumed)
            level = nxt
        submissions.reverse()  # the oldest first, so that the output's own transaction ends the BEEF
        submissions.append(parse_submission(beef))
        return encode_beef(merge_entries(submissions), version=1)

    @staticmethod
    def aggregate(outputs: Sequence[AnswerOutput]) -> bytes:
        """The binary answer (``X-Aggregation: yes``): the outpoints, then one BEEF V2 of every output's
        transactions (the reference's format, read by the official ``LookupResolver``)."""
        from overlay_node.crypto.bump import varint_bytes

        head = bytearray(varint_bytes(len(outputs)))
        for out in outputs:
            context = out.context or b""
            head += bytes.fromhex(out.txid) + varint_bytes(out.vout) + varint_bytes(len(context)) + context
        entries = merge_entries([parse_submission(o.beef) for o in outputs])
        return bytes(head) + encode_beef(entries, version=2)

    async def history(self, txid: str, vout: int, depth: int) -> tuple[list[HistoryNode], bytes | None]:
        """The BRC-64 history of an output: it and its retained predecessors down to ``depth``, breadth first,
        with the merged BEEF a lookup would answer (None when the output is not stored)."""
        found = await self._store.overlay.outputs([(txid, vout)])
        start = found.get((txid, vout))
        if start is None:
            return [], None
        nodes = [HistoryNode(output=start, depth=0)]
        level, seen = [start], {start.outpoint}
        for d in range(1, depth + 1):
            wanted = [op for out in level for op in out.consumed if op not in seen]
            if not wanted:
                break
            seen.update(wanted)
            preds = await self._store.overlay.outputs(wanted, topic=start.topic)
            level = [preds[op] for op in wanted if op in preds]
            nodes.extend(HistoryNode(output=out, depth=d) for out in level)
        (answer,) = await self.hydrate([FormulaItem(txid=txid, vout=vout, history=depth)])
        return nodes, answer.beef

    # -- GASP (BRC-76, the reference's pull variant) -----------------------------------------------------------

    async def sync_response(self, topic: str, since: int, limit: int | None) -> list[dict[str, Any]]:
        """The ``UTXOList`` of a ``/requestSyncResponse``: the unspent outputs of ``topic`` admitted at
        ``score >= since``, oldest first, at most ``limit`` (an unhosted topic has none)."""
        if topic not in self.managers:
            return []
        capped = min(limit or self._config.sync_page, self._config.sync_page)
        outputs = await self._store.overlay.unspent(topic, since=since, limit=capped)
        return [{"txid": o.txid, "outputIndex": o.vout, "score": int(o.score)} for o in outputs]

    async def gasp_node(self, graph_id: str, txid: str, vout: int) -> dict[str, Any]:
        """A ``/requestForeignGASPNode`` answer: transaction ``txid`` of the graph of the stored output
        ``graph_id``, found in that output's BEEF or in its retained predecessors' (with its merkle path, if the
        BEEF has one).

        Raises:
            BadRequest: the reference's messages: no such output, or no such transaction in its graph.
        """
        root_txid, _, root_vout = graph_id.rpartition(".")
        if not (root_vout.isascii() and root_vout.isdigit() and len(root_vout) <= 10):  # str.isdigit takes "²"
            raise BadRequest(f"bad graphID {graph_id!r}: expected TXID.VOUT")
        found, beefs = await self._store.overlay.outputs_with_beefs([(root_txid, int(root_vout))])
        root = found.get((root_txid, int(root_vout)))
        if root is None or root.txid not in beefs:
            raise BadRequest("No matching output found!")
        level, seen = [root], {root.outpoint}
        for _ in range(self._config.max_history_depth + 1):
            for output in level:
                data = beefs.get(output.txid)
                if data is None:
                    continue
                for ptx in parse_submission(data).txs:
                    if ptx.txid == txid:
                        node: dict[str, Any] = {"graphID": graph_id, "rawTx": ptx.raw.hex(), "outputIndex": vout}
                        if ptx.bump is not None:
                            node["proof"] = ptx.bump.hex()
                        return node
            wanted = [op for out in level for op in out.consumed if op not in seen]
            if not wanted:
                break
            seen.update(wanted)
            preds, beefs = await self._store.overlay.outputs_with_beefs(wanted)
            level = list(preds.values())
        raise BadRequest("Unable to find output associated with your request!")

    async def holds(self, topic: str, outpoints: Sequence[Outpoint]) -> set[Outpoint]:
        """Which of ``outpoints`` are outputs of ``topic`` here (spent or not)."""
        found = await self._store.overlay.outputs(outpoints, topic=topic)
        return set(found)

    # -- what else the node shows -----------------------------------------------------------------------------

    def list_topic_managers(self) -> dict[str, dict[str, str]]:
        return {name: _metadata(name, m) for name, m in self.managers.items()}

    def list_lookup_services(self) -> dict[str, dict[str, str]]:
        return {name: _metadata(name, s) for name, s in self.services.items()}

    def topic_documentation(self, name: str) -> str:
        manager = self.managers.get(name)
        if manager is None:
            raise BadRequest(f"No documentation found for topic manager: {name}")
        return manager.documentation()

    def service_documentation(self, name: str) -> str:
        service = self.services.get(name)
        if service is None:
            raise BadRequest(f"No documentation found for lookup service: {name}")
        return service.documentation()

    async def counts(self) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
        """``({topic: (outputs, unspent)}, {service: indexed outputs})`` of what is stored now."""
        return await self._store.overlay.counts()

    async def held_outputs(self, txids: set[str]) -> dict[str, Any]:
        """The outputs of the transactions among ``txids`` this engine holds (for BEEF txid-only entries)."""
        from overlay_node.chain.formats import SourceOutput

        beefs = await self._store.overlay.beefs(txids)
        out: dict[str, list[SourceOutput]] = {}
        for txid, data in beefs.items():
            tx = parse_submission(data).subject
            out[txid] = [SourceOutput(satoshis=o.satoshis, locking_script=o.script) for o in tx.outputs]
        return out


def _metadata(name: str, plugin: TopicManager | LookupService) -> dict[str, str]:
    try:
        return plugin.metadata().as_json()
    except Exception:
        logger.warning("plug-in %s has no metadata", name, exc_info=True)
        return {"name": name, "shortDescription": "No description."}


def arc_broadcaster(client: Callable[[], Any]) -> Broadcaster:
    """Broadcast through the node's ARC client (``client()`` returns it: the wallet's, once it runs).

    ARC refusing the transaction for good (invalid, double spend, rejected) refuses the submission; an
    unreachable or undecided ARC does not (logged), as the reference engine's default.
    """

    async def broadcast(beef: bytes, txid: str) -> None:
        result = await client().submit(beef)
        if result.failed:
            raise BroadcastRefused(f"Failed to broadcast transaction! Error: {result.detail or result.tx_status}")
        if not result.accepted:
            logger.warning("broadcast of %s undecided (%s): admitting it anyway", txid, result.detail)

    return broadcast
