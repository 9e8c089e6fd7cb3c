"""The settlement queue: every transaction the wallet makes or receives is submitted to ARC, with retry and
exponential backoff, and followed until it is mined (its merkle path then proves the wallet's coins) or fails.

Theory of operation:

1. Jobs live in SQLite (``store.settlement``), written in the same transaction as the payment they settle, so
   nothing queued is lost across a restart: :meth:`Settlement.run` simply carries on with every open job.
2. One task works the queue: it takes the due jobs (oldest first), submits the ``submit`` jobs (``pending``,
   and those ARC accepted already, to learn their status: a resubmission is answered with it) in one
   ``POST /v1/txs`` (in queue order: a later transaction may spend an earlier one), asks ARC the status of
   the ``watch`` jobs and of those ARC accepted already whose BEEF is large (a faucet payout's carries the
   devnet's thousand-output split: submitted again, ARC would parse all of it for a status), applies all
   answers in one durable write (a few statements per table for the whole batch, not several per job:
   ``store.settlement.apply_many``), then sleeps until the next job is due or a
   new one is queued that is due earlier (:meth:`Settlement.kick`), and then ``settle_linger`` more so that a
   busy stream's payments travel many per request (those queued meanwhile, and those coming due one after
   another: a stream's payments come due milliseconds apart, and without the linger each would be a request of
   its own).
3. :func:`decide` (pure) turns each ARC answer into the job's next state with ARC's (docs/design.md, Payments)
   semantics: MINED -> ``mined`` with the merkle path; SEEN_ON_NETWORK -> ``seen`` (settled; polled again
   until mined); PROGRESSING (SEEN_IN_ORPHAN_MEMPOOL included) -> ``progressing``, polled again; FAILED
   (DOUBLE_SPEND_ATTEMPTED even with HTTP 200, REJECTED, 4xx refusals) -> ``failed``; RETRY (network errors,
   5xx, 429) -> same state, retried after ``settle_retry_min`` doubling up to ``settle_retry_max``; NOT_FOUND
   on a status query -> ``pending`` again (submitted anew). A resubmission of a transaction ARC already holds
   is answered with its status, so it counts as success. Nothing is ever marked settled before ARC accepted
   it.
4. ``watch`` jobs (payments the payee never answered) are never submitted: they are only polled, and when ARC
   still does not know the transaction at their deadline they are ``abandoned`` (the coins come back). A poll is
   never scheduled past the deadline (the backoff is cut short there), so the queue wakes at the deadline and
   the job is resolved then, not up to ``settle_retry_max`` later.
5. A job's new state and its effects on the wallet (proofs, dead coins, coins given back, payment and history
   status) commit in one durable write; then the wallet's memory follows (:meth:`Wallet.apply_effects`).

Payer side (decided here): the payer writes its payment ahead of sending it, with a ``watch`` job; when the
payee's receipt arrives the job becomes a ``submit`` job, so the payer broadcasts its own copy too (a
resubmission of a transaction ARC already holds is answered with its status, which counts as success). It
thereby learns the merkle path of its change, and any failure, without depending on the payee's
settlement. That copy is due ``settle_poll_interval`` after the receipt, not at once: the payee has broadcast
the payment already, so the payer's one submission usually comes back MINED with its merkle path, where an
immediate one would be answered SEEN and asked about again (a paid stream at one payment per packet saves a
request per payment on each side of ARC). It is rounded up to a whole step (a fifth of the interval, at least
``settle_linger``: ``Wallet._copy_due``), so that the copies of a busy payer's payments come due together and go
many per request. A payment whose answer never came stays a ``watch`` job (see point
4).

6. A later transaction stands for the earlier ones it spends. Before a batch of submissions goes, the wallet's coins
   of its transactions are read (``coins_of``): a transaction whose coins (it has at least one) are all spent by one
   other transaction of the batch is not sent, and the answer about the end of that run of spenders (:func:`covered_by`)
   decides for it too (:func:`implied`): mined, so is it (a block cannot hold a transaction before the one it
   spends; it gets no merkle path of its own, and the wallet needs none: none of its coins is left, and the wallet's
   BEEFs stop at the proven spender); seen on the network, so is it; anything else, it is sent on its own at once,
   with one attempt more. A spender refused outright may have lacked those very transactions (a payee that never
   broadcast them; its BEEF names them by txid): it is not failed but sent again at once, after them. Only jobs that
   never needed a second try stand or are stood for, so a run that did not settle goes one by one the next time, as
   every batch did before. So a payer whose payments spend each other's change (a run of payments to one payee, a
   paid stream) sends one copy per run and batch instead of one per payment, and ARC parses one; a payee's coins
   (the payments' outputs) are its own, and every payment it received is still sent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import trio

from overlay_node.clock import wall_time
from overlay_node.config import WalletSection
from overlay_node.metrics import Metrics, instrument
from overlay_node.services.arc import ArcOutcome, ArcResult
from overlay_node.services.wallet import Wallet
from overlay_node.store.db import Store
from overlay_node.store.records import JobState
from overlay_node.store.settlement import TERMINAL_STATES, JobUpdate, SettlementJob

__all__ = ["Settlement", "backoff", "covered_by", "decide", "implied"]

logger = logging.getLogger(__name__)

#: status queries in flight at once
_POLL_CONCURRENCY = 16
#: the largest BEEF of a transaction ARC holds already that is submitted again to learn its status (a larger one is
#: asked about with a status query: a resubmission costs ARC a parse of all of it)
_RESUBMIT_BYTES = 4096


def backoff(attempts: int, *, low: float, high: float) -> float:
    """Seconds to wait before try number ``attempts + 1``: ``low`` doubling per attempt, at most ``high``."""
    if attempts <= 0:
        return 0.0
    return min(high, low * 2.0 ** min(attempts - 1, 60))


def decide(job: SettlementJob, result: ArcResult, *, now: float, config: WalletSection) -> JobUpdate:
    """The next state of ``job`` after ARC answered ``result`` (pure; see the module docstring, point 3).

    Args:
        job: the job as stored.
        result: ARC's interpreted answer to a submission or a status query of ``job.txid``.
        now: wall-clock seconds.
        config: retry and poll intervals.
    """
    poll = now + config.settle_poll_interval
    status = result.tx_status
    if result.outcome is ArcOutcome.MINED:
        assert result.merkle_path is not None  # interpret() only says MINED with a path
        return JobUpdate(
            state="mined",
            attempts=0,
            next_at=now,
            arc_status=status,
            detail=f"mined in block {result.block_height}",
            merkle_path=bytes.fromhex(result.merkle_path),
            block_height=result.block_height,
        )
    if result.outcome is ArcOutcome.SEEN:
        return JobUpdate(state="seen", attempts=0, next_at=poll, arc_status=status, detail=result.detail)
    if result.outcome is ArcOutcome.PROGRESSING:
        state: JobState = "seen" if job.state == "seen" else "progressing"
        return JobUpdate(state=state, attempts=0, next_at=poll, arc_status=status, detail=result.detail)
    if result.outcome is ArcOutcome.FAILED:
        double = bool(result.competing_txs) or status == "DOUBLE_SPEND_ATTEMPTED"
        return JobUpdate(
            state="failed",
            attempts=job.attempts,
            next_at=now,
            arc_status=status,
            detail=result.detail,
            double_spend=double,
        )
    attempts = job.attempts + 1
    delay = backoff(attempts, low=config.settle_retry_min, high=config.settle_retry_max)
    if result.outcome is ArcOutcome.NOT_FOUND:
        if job.kind == "watch":
            if job.deadline is not None and now >= job.deadline:
                return JobUpdate(
                    state="abandoned",
                    attempts=attempts,
                    next_at=now,
                    arc_status=None,
                    detail="the payee never answered and ARC never saw the transaction",
                )
            wait = max(delay, config.settle_poll_interval)
            return JobUpdate(
                state=job.state,
                attempts=attempts,
                next_at=_not_past_deadline(job, now, now + wait),
                detail="ARC does not know it (yet)",
            )
        # ARC lost it (or never had it): submit it again, at once the first time, then with backoff
        again = now if job.state != "pending" else now + delay
        return JobUpdate(state="pending", attempts=attempts, next_at=again, detail=result.detail)
    # RETRY: nothing was learnt
    return JobUpdate(
        state=job.state,
        attempts=attempts,
        next_at=_not_past_deadline(job, now, now + delay),
        arc_status=job.arc_status,
        detail=result.detail,
    )


def covered_by(coins: Iterable[tuple[str, str, str | None]], due: Collection[str]) -> dict[str, str]:
    """Which of the transactions ``due`` a later one of them stands for (pure; point 6 of the module docstring).

    Args:
        coins: the wallet's coins that the transactions of ``due`` made, as ``(txid, state, spent_by)``.
        due: the txids of the submissions about to be sent.

    Returns:
        Each transaction of ``due`` whose coins (it has at least one) are all spent by one other transaction of
        ``due``, mapped to that spender. Coins spent by two (a stream's change split in parts) keep a transaction out:
        were one spender to fail, the coin it spent would be ours again, and its transaction would need a proof of
        its own; the spenders of one run are mined together or not at all.
    """
    spenders: dict[str, str] = {}
    kept: set[str] = set()
    for txid, state, spent_by in coins:
        if txid not in due:
            continue
        if state != "spent" or spent_by is None or spent_by == txid or spent_by not in due:
            kept.add(txid)  # a coin still ours (or spent outside this batch): the transaction speaks for itself
        elif spenders.setdefault(txid, spent_by) != spent_by:
            kept.add(txid)
    return {txid: spender for txid, spender in spenders.items() if txid not in kept}


def _stand_in(txid: str, covers: Mapping[str, str]) -> str:
    """The transaction sent for ``txid``: the end of its run of spenders in ``covers``."""
    while txid in covers:
        txid = covers[txid]
    return txid


def implied(job: SettlementJob, stand_in: str, update: JobUpdate, *, now: float) -> JobUpdate:
    """The next state of ``job``, which was not sent because ``stand_in`` (a later transaction spending its coins)
    was, after ARC's answer about ``stand_in`` moved it to ``update`` (pure; point 6 of the module docstring).

    ``stand_in`` mined: so is ``job``'s transaction, which a block cannot hold after its spender (no merkle path of its
    own). ``stand_in`` seen on the network: so is this one. Anything else says nothing about it: it is sent on its
    own at once (one attempt more, so that nothing stands in for it again).
    """
    about = f"{stand_in[:16]}…, which spends it,"
    if update.state == "mined":
        return JobUpdate(state="mined", attempts=0, next_at=now, arc_status="MINED", detail=f"{about} is mined")
    if update.state == "seen":
        return JobUpdate(
            state="seen", attempts=0, next_at=update.next_at, arc_status=update.arc_status, detail=f"{about} is seen"
        )
    return _again(job, now, f"{about} is not settled ({update.state}): sent on its own")


def _again(job: SettlementJob, now: float, detail: str) -> JobUpdate:
    """``job`` as it was, sent again at once with one attempt more (so that it no longer stands or is stood for)."""
    return JobUpdate(state=job.state, attempts=job.attempts + 1, next_at=now, arc_status=job.arc_status, detail=detail)


def _not_past_deadline(job: SettlementJob, now: float, next_at: float) -> float:
    """``next_at``, or the job's deadline when that comes first: a watched payment is asked about again at its
    deadline, not a whole backoff later (up to ``settle_retry_max`` past it, while its coins stay ``unknown``).

    A job past its deadline that could not be asked (ARC unreachable) keeps its backoff: there is no earlier
    moment to wait for, and only ARC's answer can settle it.
    """
    if job.deadline is None or job.deadline <= now:
        return next_at
    return min(next_at, job.deadline)


class Settlement:
    """The settlement queue worker. Start it with ``await nursery.start(settlement.run)`` after the wallet.

    Args:
        config: the ``[wallet]`` section.
        store: the node's store.
        metrics: the node's metrics (instruments are registered on its registry).
        wallet: the running wallet (its ARC client is used, and its coins follow the jobs).
    """

    def __init__(
        self,
        config: WalletSection,
        store: Store,
        metrics: Metrics,
        wallet: Wallet,
        *,
        wall_clock: Callable[[], float] = wall_time,
    ) -> None:
        self._wall = wall_clock
        self._config = config
        self._store = store
        self._wallet = wallet
        self._kicked = trio.Event()
        #: kicks for jobs due before this (wall clock) wake the worker: while it sleeps, when it wakes by itself;
        #: while it reads when the next job is due, +inf (that read may miss a job committed meanwhile); while it
        #: works or lingers, -inf (that read, still to come, sees what is queued meanwhile)
        self._wake_at = -math.inf
        self._changed = trio.Event()
        self._lock = trio.Lock()
        self._results = _counter(metrics)
        self._by_state: dict[str, Any] = {}
        wallet.on_job_queued = self.kick

    def kick(self, due_at: float = -math.inf) -> None:
        """Wake the worker: a job was queued, due at ``due_at`` (wall clock; default: now). A job due no earlier
        than the worker's own next wake-up leaves it asleep (a payer's outcomes queue its copy of each payment a
        poll interval ahead: kicked for each, the worker looked at the queue once per ``settle_linger`` for
        nothing)."""
        if due_at < self._wake_at:
            self._kicked.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Work the queue until cancelled; open jobs from before a restart are taken up at once."""
        await self._wallet.wait_ready()
        counts = await self._store.settlement.counts()
        logger.info("settlement queue started (%s)", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        task_status.started()
        if self._config.settle_delay:
            logger.info("settlement held back for %.1fs (wallet.settle_delay)", self._config.settle_delay)
            await trio.sleep(self._config.settle_delay)
        while True:
            self._kicked = trio.Event()
            self._wake_at = -math.inf
            await self.process()
            self._wake_at = math.inf
            next_due = await self._store.settlement.next_due(self._wall())
            # the clock is read after the query, right before the sleep starts, so that the sleep ends when the job
            # comes due even if time moved on (or a test moved the clocks) while the query ran
            delay = math.inf if next_due is None else max(0.0, next_due - self._wall())
            # from here on (no checkpoint before the sleep) a kick for a job due no earlier is left out
            self._wake_at = math.inf if next_due is None else next_due
            with trio.move_on_after(delay):
                await self._kicked.wait()
            self._wake_at = -math.inf
            # let more jobs gather, those queued meanwhile and those coming due one after another (a paid stream's
            # payments come due milliseconds apart): one request and one durable write for many payments
            await trio.sleep(self._config.settle_linger)

    async def process(self, *, everything: bool = False) -> int:
        """Work the due jobs now (every open job with ``everything``, e.g. right after a block in tests).

        Returns:
            How many jobs were handled.
        """
        async with self._lock:
            now = math.inf if everything else self._wall()
            jobs = await self._store.settlement.due(now, limit=self._config.settle_batch)
            # a transaction ARC accepted already is asked about again by submitting it once more, many in one
            # POST /v1/txs (ARC answers a known transaction with its current status, merkle path included)
            # instead of one GET per job, unless its BEEF is large (one carrying a big ancestor, such as a faucet
            # payout's): ARC would parse it all again for a status, so it gets a GET; a watched payment is only ever
            # asked about, never broadcast by us
            submit = [
                j
                for j in jobs
                if j.kind == "submit"
                and j.beef
                and (j.state == "pending" or (j.state in ("progressing", "seen") and len(j.beef) <= _RESUBMIT_BYTES))
            ]
            # a transaction whose coins one later one of the batch spends, all of them, is not sent: the later one
            # stands for it (point 6); only those that never needed a second try (attempts == 0) stand or are
            # stood for
            fresh = [j.txid for j in submit if j.attempts == 0]
            covers = covered_by(await self._store.settlement.coins_of(fresh), set(fresh)) if len(fresh) > 1 else {}
            # a read in a worker thread is not a cancellation point: if we are being stopped (and the wallet
            # with us), stop here rather than reach for an ARC client that is closing
            await trio.lowlevel.checkpoint_if_cancelled()
            submitted = {j.id for j in submit}
            poll = [j for j in jobs if j.id not in submitted]
            if submit:
                await self._submit(submit, covers)
            if poll:
                await self._poll(poll)
            return len(jobs)

    async def _submit(self, jobs: list[SettlementJob], covers: Mapping[str, str]) -> None:
        """Send ``jobs`` but those another stands for (``covers``: :func:`covered_by`), and apply the answers."""
        arc = self._wallet.arc
        sent = [j for j in jobs if j.txid not in covers]
        if len(sent) == 1:
            results = [await arc.submit(sent[0].beef, txid=sent[0].txid)]
        else:
            results = await arc.submit_many([j.beef for j in sent], txids=[j.txid for j in sent])
        now = self._wall()
        decided: list[tuple[SettlementJob, ArcResult | None, JobUpdate]] = [
            (job, result, decide(job, result, now=now, config=self._config))
            for job, result in zip(sent, results, strict=True)
        ]
        if covers:
            updates = {job.txid: update for job, _, update in decided}
            standing = set(covers.values())
            for i, (job, result, update) in enumerate(decided):
                if job.txid in standing and update.state in ("failed", "abandoned"):
                    # refused perhaps for lack of the transactions it stood for (a payee that never broadcast
                    # them): tried again at once after them, each on its own
                    decided[i] = (
                        job,
                        result,
                        _again(job, now, f"{update.detail}; sent again after the ones it spends"),
                    )
            for job in jobs:
                if job.txid in covers:
                    stand_in = _stand_in(job.txid, covers)
                    decided.append((job, None, implied(job, stand_in, updates[stand_in], now=now)))
        await self._apply(decided, now)
        if covers and any(u.next_at <= now and u.state not in TERMINAL_STATES for _, _, u in decided):
            self.kick(now)  # those sent again at once (asked from outside the worker: wake it)

    async def _poll(self, jobs: list[SettlementJob]) -> None:
        arc = self._wallet.arc
        limiter = trio.CapacityLimiter(_POLL_CONCURRENCY)
        answers: dict[int, ArcResult] = {}

        async def ask(job: SettlementJob) -> None:
            async with limiter:
                answers[job.id] = await arc.status(job.txid)

        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(ask, job)
        await self._apply_all([(job, answers[job.id]) for job in jobs])

    async def _apply_all(self, answered: list[tuple[SettlementJob, ArcResult]]) -> None:
        """Apply ARC's answers for a batch of jobs in one durable transaction (one commit, not one per job)."""
        now = self._wall()
        await self._apply(
            [(job, result, decide(job, result, now=now, config=self._config)) for job, result in answered], now
        )

    async def _apply(self, decided: list[tuple[SettlementJob, ArcResult | None, JobUpdate]], now: float) -> None:
        """Write the jobs' new states (each with ARC's answer about it, None when another's stood for it)."""
        with trio.CancelScope(shield=True):  # the write and the wallet's memory must not part ways
            all_effects = await self._store.settlement.apply_many([(job, u) for job, _, u in decided], now=now)
            for effects in all_effects:
                self._wallet.apply_effects(effects)
        for job, result, update in decided:
            self._noted(job, result, update, now)
        self._changed.set()
        self._changed = trio.Event()

    def _noted(self, job: SettlementJob, result: ArcResult | None, update: JobUpdate, now: float) -> None:
        counter = self._by_state.get(update.state)
        if counter is None:  # a child per state, looked up once (a paid stream settles a payment per packet)
            counter = self._by_state[update.state] = self._results.labels(update.state)
        counter.inc()
        if update.state != job.state:
            # per-payment detail is DEBUG (a paid stream makes many); a failure is worth a WARNING
            log = logger.warning if update.state in ("failed", "abandoned") else logger.debug
            log("settlement of %s: %s -> %s (%s)", job.txid, job.state, update.state, update.detail)
        elif result is not None and result.outcome is ArcOutcome.RETRY:
            quiet = update.attempts not in (1, 5) and update.attempts % 20
            (logger.debug if quiet else logger.info)(
                "settlement of %s: retry in %.1fs (%s)", job.txid, update.next_at - now, result.detail
            )

    def updated(self) -> trio.Event:
        """An event set when the worker next applies a batch of ARC's answers; take it before causing the batch
        (e.g. before moving a test's clocks to when a job comes due)."""
        return self._changed

    async def wait_for(self, txid: str, *states: str) -> SettlementJob:
        """Wait until the job of ``txid`` is in one of ``states``; return it.

        Raises:
            KeyError: no job settles ``txid``.
        """
        while True:
            changed = self._changed
            job = await self._store.settlement.get(txid)
            if job is None:
                raise KeyError(txid)
            if job.state in states:
                # the state was read from the database; the batch that wrote it may still be bringing the
                # wallet's memory in line: wait for the batch to end
                async with self._lock:
                    return job
            await changed.wait()


def _counter(metrics: Metrics) -> Any:
    from prometheus_client import Counter

    return instrument(
        metrics,
        Counter,
        "overlay_settlement_updates",
        "Settlement job updates, by resulting state",
        ["state"],
    )
