"""The wallet service: the node's coins (UTXOs in SQLite with their transactions and derivation data), coin
selection and reservation, building and signing payments as Atomic BEEF, the devnet faucet, and the ARC client
the settlement queue uses.

Theory of operation:

1. SQLite (``store.wallet``) is the truth; the service keeps the spendable coins in memory (loaded at start)
   and changes that copy only right after a committed write, in the same task, with no ``await`` in between.
2. Coins being spent are *reserved* in memory the moment they are selected (synchronously, so two concurrent
   payments never pick the same coin) and released when the payment is refused or fails before commit. A
   crash forgets reservations: nothing was committed, so the coins are simply spendable again.
3. Keys are never stored: every coin records how its key is derived (BRC-42: protocol, key id, counterparty).
   Faucet deposits use the self-derived key ``(2, "overlay node wallet")``/``receive``, change a fresh
   self-derived key per transaction, and received BRC-29 payments the payee key for ``"<prefix> <suffix>"``
   with the payer as counterparty, recomputed when the coin is spent.
4. BEEF stays small: a proven transaction (merkle path known) ends the ancestry; a transaction the recipient
   already holds (we sent it to them before) is written as a BEEF V2 txid-only entry.
5. A payment is written ahead (:meth:`Wallet.begin`: coins spent, change pending, a job watching for it)
   before it is sent (a lone one on the event loop's own thread, several at once by the store's writer thread);
   the payee's answer makes the change spendable at once in memory, and the database follows in batches off the
   critical path (:meth:`Wallet.sent`): the outcome rides with the next payment's write-ahead (one transaction for
   both, where it would be a write of its own), else it is written after ``_SENT_LINGER``; a refusal undoes the
   write (:meth:`Wallet.abort`); no answer leaves it to the watch (:meth:`Wallet.unanswered`). A crash at any
   point loses nothing: the watch finds out from ARC whether the payee took it.
6. Every transaction we make or receive goes into the settlement queue in the same write that records it;
   the settlement service reports back through :meth:`Wallet.apply_effects`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio
from bsv.keys import PublicKey as BsvPublicKey

from overlay_node.chain.formats import SourceOutput, atomic_beef, parse_submission
from overlay_node.chain.refusals import Refusal
from overlay_node.chain.validation import Policy
from overlay_node.clock import wall_time
from overlay_node.config import WalletSection
from overlay_node.crypto.brc42 import ProtocolID, child_secret, own_child_key
from overlay_node.crypto.keys import Identity
from overlay_node.crypto.scripts import p2pkh_for_key
from overlay_node.crypto.sighash import Spend, UnlockForm, outpoint_bytes
from overlay_node.errors import (
    ApiError,
    BadRequest,
    ConfigError,
    Conflict,
    DialError,
    InsufficientFunds,
    OverlayError,
)
from overlay_node.lru import LruMap
from overlay_node.metrics import Metrics, instrument
from overlay_node.services.arc import DevnetClient
from overlay_node.services.chaintracker import ChainTracker
from overlay_node.services.group_commit import GroupCommit
from overlay_node.services.wallet_beef import beef_entries, outputs_of, tx_record
from overlay_node.services.wallet_build import BuiltTx, CoinSet, build_transaction, select_coins
from overlay_node.store.db import Store
from overlay_node.store.records import NewJob, UtxoRecord
from overlay_node.store.settlement import SettlementEffects
from overlay_node.store.wallet import Deposit, HistoryEntry, HistoryRecord, Outgoing, SentUpdate, TxRecord

__all__ = ["RECEIVE_KEY_ID", "WALLET_PROTOCOL", "Balance", "PreparedTx", "Wallet"]

logger = logging.getLogger(__name__)

#: the wallet's own keys (faucet deposits, change): self-derived with this protocol
WALLET_PROTOCOL: Final[ProtocolID] = (2, "overlay node wallet")
#: the key id of the wallet's deposit key (faucet payouts and `wallet receive`)
RECEIVE_KEY_ID = "receive"
_WALLET_PROTOCOL_TEXT = f"{WALLET_PROTOCOL[0]}-{WALLET_PROTOCOL[1]}"
#: transactions (and their outputs) kept in memory for building and checking BEEF without the database
_TX_CACHE = 20_000
#: txids remembered per peer as "already holds it" (BEEF txid-only entries)
_KNOWN_PER_PEER = 20_000
#: change is split into coins of at least this many satoshis, else kept whole
_MIN_CHANGE_PART = 1_000
#: how long the outcomes of sent payments wait for the next write-ahead to take them along (one transaction for
#: both) before they are written on their own
_SENT_LINGER = 0.05
#: our copies of payments come due at whole steps of this fraction of ``settle_poll_interval`` (see _copy_due)
_COPY_STEPS = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Balance:
    """The wallet's coins in satoshis: ``satoshis`` is what can be spent now (confirmed + unconfirmed, minus
    reserved), ``confirmed`` the part in mined transactions, ``unconfirmed`` the rest."""

    satoshis: int
    confirmed: int
    unconfirmed: int
    reserved: int
    coins: int

    def as_json(self) -> dict[str, int]:
        return {
            "satoshis": self.satoshis,
            "confirmed": self.confirmed,
            "unconfirmed": self.unconfirmed,
            "reserved": self.reserved,
            "coins": self.coins,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ForeignInput:
    """An output of ours that is not a wallet coin (a token), spent by :meth:`Wallet.prepare`: where it is, what it
    holds, the private key that unlocks it and how (``pushdrop``: the signature alone)."""

    txid: str
    vout: int
    satoshis: int
    script: bytes
    secret: bytes
    unlock: UnlockForm = "pushdrop"


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedTx:
    """A signed transaction whose coins are reserved, not yet committed: commit or release it.

    ``beef`` is the Atomic BEEF for ``recipient`` (txid-only entries for what it holds); ``settle_beef`` the
    one our settlement queue submits.
    """

    txid: str
    raw: bytes
    beef: bytes
    settle_beef: bytes
    spends: tuple[UtxoRecord, ...]
    change: tuple[UtxoRecord, ...]
    fee: int
    amount: int
    recipient: str | None
    sent_txids: tuple[str, ...]
    record: TxRecord
    outputs: tuple[SourceOutput, ...]


class Wallet:
    """The node's wallet. Start it with ``await nursery.start(wallet.run)``.

    Args:
        identity: the node's key (every wallet key is derived from it).
        config: the ``[wallet]`` section.
        store: the node's store.
        metrics: the node's metrics (the wallet registers its own instruments on its registry).
        arc_url: the ledger to use when ``config.arc_url`` is empty (the devnet the node started or was
            given).

    Raises:
        ConfigError: neither ``config.arc_url`` nor ``arc_url`` names a ledger.
    """

    def __init__(
        self,
        identity: Identity,
        config: WalletSection,
        store: Store,
        metrics: Metrics,
        *,
        arc_url: str | None = None,
        wall_clock: Callable[[], float] = wall_time,
    ) -> None:
        url = config.arc_url or arc_url or ""
        if not url:
            raise ConfigError("wallet.arc_url: empty, and no devnet ledger was given to the wallet")
        self._identity = identity
        self._config = config
        self._store = store
        self._url = url
        self._wall = wall_clock
        self._arc: DevnetClient | None = None
        self._coins = CoinSet()
        self._txs: LruMap[str, TxRecord] = LruMap(_TX_CACHE)  # by txid
        self._outputs: LruMap[str, list[SourceOutput]] = LruMap(_TX_CACHE)  # by txid
        # txid -> True: in our settlement queue (submitted in order)
        self._queued: LruMap[str, bool] = LruMap(_TX_CACHE)
        # invoice -> our public key (change made by this process)
        self._own_publics: LruMap[str, bytes] = LruMap(_TX_CACHE)
        # invoice -> its private key (a stream's change shares one)
        self._own_secrets: LruMap[str, bytes] = LruMap(_TX_CACHE)
        self._known: dict[str, LruMap[str, bool]] = {}  # peer -> txids it holds
        # txid -> the change of a payment prepared and not yet answered (its coins reserved)
        self._incoming: dict[str, tuple[UtxoRecord, ...]] = {}
        # txid -> the task that prepared it, until it begins; the tasks waiting for change (see _select)
        self._preparers: dict[str, trio.lowlevel.Task] = {}
        self._waiting: set[trio.lowlevel.Task] = set()
        self._coins_changed = trio.Event()  # set (and replaced) when coins become free: see _select
        self._tracker: ChainTracker | None = None
        self._fee_rate = config.fee_rate
        self._policy = Policy(mining_fee_satoshis=self._fee_rate, mining_fee_bytes=1000)
        self._ready = trio.Event()
        self._sent_queue: list[SentUpdate] = []
        self._sent_wakeup = trio.Event()
        self._sent_now = trio.Event()  # set by flush(): write the queue without lingering
        self._sent_done = trio.Event()
        self._sent_writing = False
        self._sent_riding = 0  # outcomes taken along by write-aheads not committed yet
        self._ahead_inflight = 0  # write-aheads being written (a lone one is written inline: _write_ahead)
        # payments written ahead, many per database transaction (a paid stream makes many at once)
        # written ahead by the store's writer thread itself (group commit): the next batch starts as soon as the
        # last one is committed
        self._ahead = GroupCommit[Outgoing, Conflict | None](
            store.wallet.outgoing_txn(now=lambda: self._wall(), submit_at=self._copy_due),
            max_batch=config.record_batch,
        )
        #: called after a job was queued, with when it is due (wall clock; -inf: now); the settlement service sets
        #: it to wake itself
        self.on_job_queued: Callable[[float], None] = lambda _due_at: None
        gauge = _gauge(metrics)
        # read from the coins when scraped, not set on every change of the coins (three locked sets per payment)
        for i, state in enumerate(("confirmed", "unconfirmed", "reserved")):
            gauge.labels(state).set_function(lambda i=i: self._coins.totals()[i])
        receive_pub = self._own_key(RECEIVE_KEY_ID)
        self._receive_pub = receive_pub
        self._receive_script = p2pkh_for_key(receive_pub)

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def arc(self) -> DevnetClient:
        """The ARC client (a devnet client: its extra routes are only used against a devnet)."""
        if self._arc is None:
            raise OverlayError("the wallet is not running")
        return self._arc

    @property
    def tracker(self) -> ChainTracker:
        """Block roots for SPV checks (the ledger's headers, or the configured headers service)."""
        if self._tracker is None:
            raise OverlayError("the wallet is not running")
        return self._tracker

    @property
    def arc_url(self) -> str:
        return self._url

    @property
    def identity_key(self) -> str:
        return self._identity.public_key_hex

    @property
    def policy(self) -> Policy:
        """The fee policy payments must meet (the higher of ours and ARC's)."""
        if self._policy.mining_fee_satoshis != self._fee_rate:  # made once per rate: a payee reads it per payment
            self._policy = Policy(mining_fee_satoshis=self._fee_rate, mining_fee_bytes=1000)
        return self._policy

    @property
    def fee_rate(self) -> int:
        return self._fee_rate

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the ARC client, load the coins and ARC's fee policy, then serve until cancelled."""
        async with DevnetClient(self._url, api_key=self._config.arc_api_key, timeout=self._config.arc_timeout) as arc:
            self._arc = arc
            self._tracker = ChainTracker(
                arc,
                headers_url=self._config.headers_url,
                api_key=self._config.headers_api_key,
                timeout=self._config.arc_timeout,
            )
            try:
                await self._load()
                await self._refresh_policy()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._serve_sent)
                    await nursery.start(self._ahead.run)
                    self._ready.set()
                    logger.info(
                        "wallet ready: %d coins, %d satoshis, ARC %s, fee rate %d sat/kB",
                        len(self._coins),
                        self.balance().satoshis,
                        self._url,
                        self._fee_rate,
                    )
                    task_status.started()
            finally:
                self._arc = None
                self._tracker = None

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def _load(self) -> None:
        self._coins = CoinSet()
        for coin in await self._store.wallet.spendable():
            self._coins.add(coin)

    async def _refresh_policy(self) -> None:
        try:
            policy = await self.arc.policy()
        except (ApiError, DialError) as exc:
            logger.warning("ARC policy unavailable at %s (%s); using fee rate %d", self._url, exc, self._fee_rate)
            return
        arc_rate = -(-policy.mining_fee_satoshis * 1000 // policy.mining_fee_bytes)
        self._fee_rate = max(self._config.fee_rate, arc_rate)

    # -- reading ---------------------------------------------------------------------------------------------

    def balance(self) -> Balance:
        confirmed, unconfirmed, reserved = self._coins.totals()
        return Balance(
            satoshis=confirmed + unconfirmed,
            confirmed=confirmed,
            unconfirmed=unconfirmed,
            reserved=reserved,
            coins=len(self._coins),
        )

    def coins(self) -> list[UtxoRecord]:
        """The spendable coins (reserved ones included)."""
        return self._coins.all()

    def receive(self) -> dict[str, str]:
        """Where to send money to this wallet: the deposit key, its P2PKH address and script."""
        return {
            "identity_key": self._identity.public_key_hex,
            "pubkey": self._receive_pub.hex(),
            "address": str(BsvPublicKey(self._receive_pub.hex()).address()),
            "locking_script": self._receive_script.hex(),
            "derivation": f"{_WALLET_PROTOCOL_TEXT}-{RECEIVE_KEY_ID} (self)",
        }

    async def history(self, *, limit: int = 100, before_id: int | None = None) -> list[HistoryEntry]:
        """History entries, newest first (payment outcomes noted so far included)."""
        await self.flush()
        return await self._store.wallet.history(limit=limit, before_id=before_id)

    # -- faucet ----------------------------------------------------------------------------------------------

    async def faucet(self, satoshis: int) -> dict[str, Any]:
        """Have the devnet faucet pay ``satoshis`` to the deposit key, and record the coin.

        Raises:
            BadRequest: ``satoshis`` is not a positive integer.
            ApiError: the ledger refused (not a devnet, amount too large, faucet empty).
            DialError: the ledger cannot be reached.
        """
        if not isinstance(satoshis, int) or isinstance(satoshis, bool) or satoshis < 1:
            raise BadRequest("satoshis must be a positive integer")
        payout = await self.arc.faucet(satoshis, pubkey=self._receive_pub.hex())
        if payout.locking_script != self._receive_script or payout.satoshis != satoshis:
            raise ApiError("the faucet paid another script or amount", code="bad_answer", status=200)
        try:
            submission = parse_submission(payout.beef)
        except Refusal as exc:
            raise ApiError(f"the faucet's BEEF is malformed: {exc}", code="bad_answer", status=200) from exc
        records = tuple(tx_record(t) for t in submission.txs)
        subject = next((r for r in records if r.txid == payout.txid), None)
        if subject is None:
            raise ApiError("the faucet's BEEF does not hold its payout", code="bad_answer", status=200)
        utxo = UtxoRecord(
            txid=payout.txid,
            vout=payout.vout,
            satoshis=payout.satoshis,
            script=payout.locking_script,
            protocol=_WALLET_PROTOCOL_TEXT,
            key_id=RECEIVE_KEY_ID,
            counterparty="self",
            origin="faucet",
            proven=subject.proven,
        )
        now = self._wall()
        deposit = Deposit(
            txs=records,
            utxo=utxo,
            history=HistoryRecord(txid=payout.txid, direction="in", kind="faucet", amount=satoshis),
            # seen already (the ledger made it): asked about again a poll interval on, when it may be mined
            job=NewJob(
                txid=payout.txid, beef=payout.beef, state="seen", next_at=now + self._config.settle_poll_interval
            ),
        )
        await self._store.wallet.add_deposit(deposit, now=now)
        self._coins.add(utxo)
        self._remember_txs(records)
        self._queued.put(payout.txid, True)
        self._wake()
        self.on_job_queued(deposit.job.next_at)
        logger.debug("faucet paid %d satoshis to the wallet in %s", satoshis, payout.txid)
        return {"txid": payout.txid, "vout": payout.vout, "satoshis": satoshis}

    # -- paying ----------------------------------------------------------------------------------------------

    def coin_count(self) -> int:
        """How many coins the wallet holds (those reserved by payments being made included)."""
        return len(self._coins)

    async def prepare(
        self,
        outputs: Sequence[tuple[bytes, int]],
        *,
        recipient: str | None,
        change_parts: int = 1,
        change_key: str | None = None,
        extra_inputs: Sequence[ForeignInput] = (),
    ) -> PreparedTx:
        """Select and reserve coins, and build and sign a transaction paying ``outputs`` (script, satoshis)
        plus change to fresh keys, with its Atomic BEEF for ``recipient`` (a peer identity key, or None).

        ``change_parts`` > 1 splits the change into that many coins of about equal value (fewer if the change
        is small), so that as many later payments can be in flight at once, each spending its own coin.

        ``change_key``: the change goes to the key of that name instead of a fresh key per coin. A paid stream
        gives one per subscription: its payments spend each other's change, so the chain already ties them
        together, and one key saves a key derivation per payment and per coin spent.

        ``extra_inputs``: outputs of ours that are not wallet coins (a SHIP/SLAP or UHRP token being spent to revoke
        it), spent after the coins; their value goes to the outputs first, any rest to the change.

        Cancellation and errors: the reservation is released before the exception leaves.

        Coins reserved by payments in flight: when the free coins fall short and the change of those payments
        would cover it, this waits for that change (at most ``wallet.change_wait`` seconds).

        Raises:
            InsufficientFunds: not enough spendable, unreserved coins, nor change on its way to make up for it.
        """
        paid = sum(s for _, s in outputs)
        brought = sum(e.satoshis for e in extra_inputs)
        amount = max(0, paid - brought)
        lens = [len(s) for s, _ in outputs]
        picked, fee, change_sats, parts = await self._select(amount, lens, max(1, change_parts), len(extra_inputs))
        surplus = max(0, brought - paid)  # what the extra inputs bring beyond the outputs
        if change_sats:
            change_sats += surplus
        else:
            fee += surplus  # no change output to take it (a satoshi or so of a token)
        reservation = [c.outpoint for c in picked]
        self._coins.reserve(picked)
        txid = ""
        try:
            change_keys: list[str] = []
            all_outputs = list(outputs)
            for i in range(parts if change_sats else 0):
                sats = change_sats // parts + (1 if i < change_sats % parts else 0)
                key_id = f"change {change_key or secrets.token_hex(12)}"
                change_keys.append(key_id)
                all_outputs.append((p2pkh_for_key(self._own_key(key_id)), sats))
            extra = [
                Spend(outpoint_bytes(e.txid, e.vout), e.script, e.satoshis, e.secret, unlock=e.unlock)
                for e in extra_inputs
            ]
            built: BuiltTx = build_transaction(
                picked, all_outputs, self._private_key, fee=fee, public_for=self._public_key, extra=extra
            )
            first = len(outputs)  # the change outputs come after the payment's
            change = tuple(
                UtxoRecord(
                    txid=built.txid,
                    vout=first + i,
                    satoshis=all_outputs[first + i][1],
                    script=all_outputs[first + i][0],
                    protocol=_WALLET_PROTOCOL_TEXT,
                    key_id=key_id,
                    counterparty="self",
                    origin="change",
                )
                for i, key_id in enumerate(change_keys)
            )
            txid = built.txid
            self._incoming[txid] = change  # before the first await: a payment waiting for change counts on it
            self._preparers[txid] = trio.lowlevel.current_task()
            parents = [*(c.txid for c in picked), *(e.txid for e in extra_inputs)]
            record = TxRecord(txid=built.txid, raw=built.raw, parents=tuple(dict.fromkeys(parents)))
            peer_known: Collection[str] = (self._known.get(recipient) or ()) if recipient else ()
            txs = await self._ancestry(record, peer_known)
            entries = beef_entries(built.txid, txs, known=peer_known)
            # our queue submits in order, so what it holds already can be named by txid only
            settle_entries = beef_entries(built.txid, txs, known=self._queued)
            return PreparedTx(
                txid=built.txid,
                raw=built.raw,
                beef=atomic_beef(built.txid, entries),
                settle_beef=atomic_beef(built.txid, settle_entries),
                spends=tuple(picked),
                change=change,
                fee=fee,
                amount=amount,
                recipient=recipient,
                sent_txids=tuple(e.txid for e in entries if e.raw is not None),
                record=record,
                outputs=built.outputs,
            )
        except BaseException:
            self._incoming.pop(txid, None)
            self._preparers.pop(txid, None)
            self._coins.release(reservation)
            self._wake()
            raise

    async def _select(
        self, amount: int, lens: Sequence[int], parts: int, n_extra: int
    ) -> tuple[list[UtxoRecord], int, int, int]:
        """Coins for ``amount`` (see ``select_coins``) and how many change parts they make: ``(coins, fee, change,
        parts)``.

        When the free coins fall short but the change of payments in flight would cover it (their coins are
        reserved: one coin and several payments at once), wait for that change, at most ``wallet.change_wait``
        seconds; when even that change could not cover it, fail at once. A payment prepared and not begun by this
        very task, or by a task waiting here too, does not count: it cannot go out while they wait (a stream's payer
        prepares a batch of payments, then sends them together; two such payers must not wait for each other).

        Raises:
            InsufficientFunds: not enough now, nor in the change on its way (or it did not come in time).
        """
        deadline = trio.current_time() + self._config.change_wait
        while True:
            free = self._coins.free()
            try:
                return self._pick(free, amount, lens, parts, n_extra)
            except InsufficientFunds as exc:
                short = exc
            me = trio.lowlevel.current_task()
            stuck = {me, *self._waiting}
            coming = [
                c for txid, change in self._incoming.items() if self._preparers.get(txid) not in stuck for c in change
            ]
            # not even with the change on its way: say so now
            if (
                not coming
                or trio.current_time() >= deadline
                or not self._covers([*free, *coming], amount, lens, n_extra)
            ):
                raise short
            self._waiting.add(me)
            try:
                with trio.move_on_at(deadline):
                    await self._coins_changed.wait()
            finally:
                self._waiting.discard(me)

    def _pick(
        self, free: Sequence[UtxoRecord], amount: int, lens: Sequence[int], parts: int, n_extra: int
    ) -> tuple[list[UtxoRecord], int, int, int]:
        rate = self._fee_rate
        picked, fee, change_sats = select_coins(free, amount, lens, rate, change_outputs=parts, extra_inputs=n_extra)
        if change_sats and parts > 1 and change_sats < parts * _MIN_CHANGE_PART:
            # too little for that many parts: as many as it makes (and the fee of those)
            parts = max(1, change_sats // _MIN_CHANGE_PART)
            picked, fee, change_sats = select_coins(
                free, amount, lens, rate, change_outputs=parts, extra_inputs=n_extra
            )
        return picked, fee, change_sats, parts

    def _covers(self, coins: Sequence[UtxoRecord], amount: int, lens: Sequence[int], n_extra: int) -> bool:
        try:
            select_coins(coins, amount, lens, self._fee_rate, extra_inputs=n_extra)
        except InsufficientFunds:
            return False
        return True

    def _wake(self) -> None:
        """Coins became free (or change stopped being on its way): payments waiting in :meth:`_select` look again."""
        self._coins_changed.set()
        self._coins_changed = trio.Event()

    def release(self, prepared: PreparedTx) -> None:
        """Give back the coins of a transaction that will not be committed."""
        self._incoming.pop(prepared.txid, None)
        self._preparers.pop(prepared.txid, None)
        self._coins.release(c.outpoint for c in prepared.spends)
        self._wake()

    async def begin(self, prepared: PreparedTx, history: HistoryRecord) -> None:
        """Write a payment ahead of sending it: its coins spent, its change pending, its history entry
        (``sending``) and a settlement job that watches for it. Then send it and call :meth:`sent`,
        :meth:`unanswered` or :meth:`abort`.

        Written ahead so that a crash at any point after this loses nothing: if the payee took the payment,
        the watch finds the transaction and the change becomes spendable; if not, the coins come back
        after ``unanswered_timeout``.

        Raises:
            Conflict: a coin is no longer spendable (the reservation is released).
            StoreError: the database failed (the reservation is released).
        """
        (error,) = await self.begin_many([(prepared, history)])
        if error is not None:
            raise error

    async def begin_many(
        self, payments: Sequence[tuple[PreparedTx, HistoryRecord]], *, before: Callable[[Any], None] | None = None
    ) -> list[OverlayError | None]:
        """:meth:`begin` for several payments at once (one wait for the group commit); one outcome each: None
        (written), or the Conflict or StoreError that stopped it (its reservation released). ``before``: a store
        transaction function run first in the transaction that writes the first payment (a stream subscription's
        row: ``GroupCommit.submit_many``); if it fails, so do the payments of that transaction."""
        now = self._wall()
        for prepared, _ in payments:
            self._preparers.pop(prepared.txid, None)  # on its way: a payment waiting for its change may count on it
        outs = [self._outgoing(prepared, history, now) for prepared, history in payments]
        # the outcomes of earlier payments not written yet ride along: one transaction for both
        riding, self._sent_queue = self._sent_queue, []
        if riding:
            outs[0] = dataclasses.replace(outs[0], sent=tuple(riding))
            self._sent_riding += len(riding)
        written = False
        try:
            written, results = await self._write_ahead(outs, before)  # shielded inside, once anything is queued
        except BaseException:
            for prepared, _ in payments:
                self.release(prepared)
            raise
        finally:
            if riding:
                self._rode(riding, written)
        if written:  # the watch jobs are due a poll interval from now (the copies of those riding along later)
            self.on_job_queued(now + self._config.settle_poll_interval)
        for (prepared, _), error in zip(payments, results, strict=True):
            if error is not None:
                self.release(prepared)
        return results

    async def _write_ahead(
        self, outs: list[Outgoing], before: Callable[[Any], None] | None
    ) -> tuple[bool, list[OverlayError | None]]:
        """Write payments ahead: whether their transaction committed, and one outcome each (None, or the Conflict or
        StoreError that stopped it). A lone payment (no other write-ahead of this wallet in flight) is written on the
        event loop's own thread while the store's writer thread is idle (``inline``: ``store/engine.py`` invariant 8;
        a write-ahead is not durable, so no fsync blocks the loop): the hand-off to the writer thread and back, two
        thread wake-ups, cost a payer more CPU than the write itself. Several at once go to the group commit, which
        the writer thread batches.

        Cancellation: once a write is queued, it is waited for (shielded: the wallet must know whether the payment
        was written); before, the cancellation comes with nothing written. The lone payment's shield is the store's
        (``shielded``), so that an inline write costs no cancel scope of its own."""
        self._ahead_inflight += 1
        try:
            if len(outs) == 1 and before is None and self._ahead_inflight == 1:
                now = self._wall()
                try:
                    outcomes = await self._store.wallet.commit_outgoing(
                        outs, now=now, submit_at=self._copy_due(now), inline=True, shielded=True
                    )
                except OverlayError as exc:
                    return False, [exc]
                return True, list(outcomes)
            with trio.CancelScope(shield=True):
                slots = await self._ahead.submit_many(outs, before=before)
        finally:
            self._ahead_inflight -= 1
        return slots[0].error is None, [slot.error or slot.outcome for slot in slots]

    def _outgoing(self, prepared: PreparedTx, history: HistoryRecord, now: float) -> Outgoing:
        job = NewJob(
            txid=prepared.txid,
            beef=prepared.settle_beef,
            kind="watch",
            next_at=now + self._config.settle_poll_interval,
            deadline=now + self._config.unanswered_timeout,
        )
        return Outgoing(
            txid=prepared.txid,
            spends=tuple(c.outpoint for c in prepared.spends),
            txs=(prepared.record,),
            change=prepared.change,
            history=history if history.status == "sending" else dataclasses.replace(history, status="sending"),
            job=job,
            change_state="pending",
        )

    def sent(self, prepared: PreparedTx, receipt: bytes | None, *, detail: str = "") -> None:
        """The payee took a payment written with :meth:`begin`: its change is ours to spend now and its job
        submits it. The database follows in the background (:meth:`flush` waits for it)."""
        self._spent(prepared)
        self._incoming.pop(prepared.txid, None)
        self._preparers.pop(prepared.txid, None)
        for coin in prepared.change:
            self._coins.add(coin)
        self._wake()
        self._queued.put(prepared.txid, True)
        if prepared.recipient is not None:
            known = self._known.setdefault(prepared.recipient, LruMap(_KNOWN_PER_PEER))
            for txid in prepared.sent_txids:
                known.put(txid, True)
        self._note_sent(SentUpdate(txid=prepared.txid, answered=True, receipt=receipt, detail=detail))

    def unanswered(self, prepared: PreparedTx, detail: str) -> None:
        """A payment written with :meth:`begin` got no answer: its coins stay spent and its change pending
        while the settlement queue watches for the transaction (history ``unknown``)."""
        self._spent(prepared)
        self._preparers.pop(prepared.txid, None)
        self._incoming.pop(prepared.txid, None)  # its change comes only if the watch finds the transaction
        self._wake()
        self._note_sent(SentUpdate(txid=prepared.txid, answered=False, detail=detail))

    async def abort(self, prepared: PreparedTx) -> None:
        """The payee refused a payment written with :meth:`begin` (or, after :meth:`unanswered`, declared it
        never taken): undo it, its coins are spendable again."""
        try:
            with trio.CancelScope(shield=True):
                await self._store.wallet.abort_outgoing(prepared.txid)
        finally:
            self.release(prepared)
            for coin in prepared.spends:
                if coin.outpoint not in self._coins:  # taken out by unanswered()
                    self._coins.add(coin)
            self._wake()

    async def flush(self) -> None:
        """Wait until the outcomes of payments noted so far are in the database."""
        while self._sent_queue or self._sent_writing or self._sent_riding:
            if self._sent_queue:
                self._sent_now.set()  # no lingering for them
            await self._sent_done.wait()

    def _rode(self, riding: list[SentUpdate], written: bool) -> None:
        """The write-ahead that took ``riding`` along ended: written, or back in the queue (its batch failed)."""
        self._sent_riding -= len(riding)
        if written:
            done, self._sent_done = self._sent_done, trio.Event()
            done.set()
        else:
            self._sent_queue[:0] = riding
            self._sent_wakeup.set()

    def _spent(self, prepared: PreparedTx) -> None:
        for coin in prepared.spends:
            self._coins.remove(coin.outpoint)
        self._txs.put(prepared.txid, prepared.record)
        self._outputs.put(prepared.txid, list(prepared.outputs))

    def _note_sent(self, update: SentUpdate) -> None:
        self._sent_queue.append(update)
        self._sent_wakeup.set()

    async def _serve_sent(self) -> None:
        """Write the outcomes of sent payments, many at a time, off the payer's critical path: those that the next
        write-ahead did not take along within ``_SENT_LINGER`` (at once when :meth:`flush` asks; and when the
        service stops, those still waiting)."""
        try:
            while True:
                while not self._sent_queue:
                    await self._sent_wakeup.wait()
                    self._sent_wakeup = trio.Event()
                if not self._sent_now.is_set():
                    with trio.move_on_after(_SENT_LINGER):
                        await self._sent_now.wait()
                self._sent_now = trio.Event()
                if self._sent_queue:  # else a write-ahead took them along
                    await self._write_sent()
        finally:
            pending = len(self._sent_queue)
            if pending:
                try:
                    with trio.CancelScope(shield=True):
                        await self._write_sent()
                except OverlayError as exc:  # the watch of each payment finds out from ARC instead
                    logger.warning("wallet: the outcomes of %d payments were not recorded: %s", pending, exc)

    async def _write_sent(self) -> None:
        batch, self._sent_queue = self._sent_queue, []
        self._sent_writing = True
        try:
            submit_at = self._copy_due(self._wall())
            with trio.CancelScope(shield=True):
                await self._store.wallet.record_sent(batch, now=self._wall(), submit_at=submit_at)
        finally:
            self._sent_writing = False
            done, self._sent_done = self._sent_done, trio.Event()
            done.set()
        self.on_job_queued(submit_at)

    def _copy_due(self, now: float) -> float:
        """When our copy of a payment the payee took (at ``now``) goes to ARC: one poll interval later (the payee
        broadcasts at once, and by then our one submission usually learns the merkle path: a resubmission is
        answered with the status), rounded up to a whole ``_COPY_STEPS``-th of the interval (at least
        ``settle_linger``), so that the copies of the payments of that step come due together and go in one
        request (one per ``settle_linger`` made a busy payer's settlement about a tenth of its CPU)."""
        poll = self._config.settle_poll_interval
        step = max(self._config.settle_linger, poll / _COPY_STEPS)
        return math.ceil((now + poll) / step) * step

    def _private_key(self, coin: UtxoRecord) -> bytes:
        if coin.counterparty != "self":
            return child_secret(self._identity, coin.counterparty, coin.invoice)
        secret: bytes | None = self._own_secrets.get(coin.invoice)
        if secret is None:
            secret = child_secret(self._identity, self._identity.public_key, coin.invoice)
            self._own_secrets.put(coin.invoice, secret)
        return secret

    def _own_key(self, key_id: str) -> bytes:
        """Our self-derived wallet public key for ``key_id`` (its private key remembered for signing when its coin
        is spent; a key id used again costs nothing)."""
        invoice = f"{_WALLET_PROTOCOL_TEXT}-{key_id}"
        public: bytes | None = self._own_publics.get(invoice)
        if public is None:
            secret, public = own_child_key(self._identity, self._identity.public_key, invoice)
            self._own_publics.put(invoice, public)
            self._own_secrets.put(invoice, secret)
        return public

    def _public_key(self, coin: UtxoRecord) -> bytes | None:
        """The public key of one of our coins when we still remember it (the signer computes it otherwise)."""
        if coin.counterparty != "self":
            return None
        public: bytes | None = self._own_publics.get(coin.invoice)
        return public

    async def _ancestry(self, record: TxRecord, peer_known: Collection[str]) -> dict[str, TxRecord]:
        """``record`` and its unproven ancestors (memory first, then the database), not past a transaction both the
        recipient (``peer_known``) and our settlement queue hold: both BEEFs name it by txid only. (Stopping at what
        the recipient alone holds lost the ancestors the settlement BEEF needs after a restart, which empties the
        queue's memory: "ancestor ... is not in the wallet".)

        An ancestor missing all the same is repaired from the ledger (:meth:`_repair`).
        """
        found = await self._walk(record, peer_known)
        gaps = self._gaps(found, peer_known)
        if gaps:
            await self._repair(gaps, {t: tx for t, tx in found.items() if t != record.txid})
            found = await self._walk(record, peer_known)
        return found

    def _stop(self, txid: str, peer_known: Collection[str]) -> bool:
        return txid in peer_known and txid in self._queued

    async def _walk(self, record: TxRecord, peer_known: Collection[str]) -> dict[str, TxRecord]:
        found: dict[str, TxRecord] = {record.txid: record}
        missing: set[str] = set()
        todo = list(record.parents)
        while todo:
            txid = todo.pop()
            if txid in found or self._stop(txid, peer_known):
                continue
            tx = self._txs.get(txid)
            if tx is None:
                missing.add(txid)
                continue
            found[txid] = tx
            if not tx.proven:
                todo.extend(tx.parents)
        if missing:
            small, large = sorted((peer_known, self._queued), key=len)
            both = {t for t in small if t in large}
            found.update(await self._store.wallet.ancestry(missing, stop={*both, *found}))
        return found

    def _gaps(self, found: Mapping[str, TxRecord], peer_known: Collection[str]) -> dict[str, str]:
        """Ancestors a BEEF needs that ``found`` lacks: missing txid -> the transaction of ours that spends it."""
        gaps: dict[str, str] = {}
        for tx in found.values():
            if tx.proven:
                continue
            for parent in tx.parents:
                if parent not in found and not self._stop(parent, peer_known):
                    gaps.setdefault(parent, tx.txid)
        return gaps

    async def _repair(self, gaps: Mapping[str, str], held: Mapping[str, TxRecord]) -> None:
        """Fetch what the ancestors in ``gaps`` (missing txid -> its child) stand for from the ledger, and keep it.

        First, when the child is a transaction we hold (``held``) and it is mined by now, its merkle path (ARC's
        ``GET /v1/tx/{txid}``): the ancestry ends there, the missing one is not needed. Else the ledger's BEEF of the
        missing transaction (its unmined ancestors down to mined ones with their merkle paths; the devnet's
        ``/v1/tx/{txid}/beef``). What cannot be repaired is left: building the BEEF then fails with ``PaymentError``
        naming the ancestor, and the next payment tries again (the settlement queue records the child's merkle path
        once it is mined).
        """
        kept: list[TxRecord] = []
        for txid, child in gaps.items():
            proof = await self._ledger_proof(held[child]) if child in held else None
            records = [proof] if proof is not None else await self._ledger_beef(txid)
            kept.extend(records or ())
        if not kept:
            return
        with trio.CancelScope(shield=True):
            await self._store.wallet.keep_txs(kept, now=self._wall())
        self._remember_txs(kept)
        for tx in kept:
            if tx.proven:
                self._coins.mark_proven(tx.txid)
        logger.warning(
            "wallet: repaired the ancestry of its coins from the ledger at %s: %s",
            self._url,
            ", ".join(sorted(gaps)),
        )

    async def _ledger_beef(self, txid: str) -> list[TxRecord] | None:
        try:
            submission = parse_submission(await self.arc.beef(txid))
        except (ApiError, DialError, Refusal) as exc:
            logger.info("wallet: the ledger has no BEEF of %s: %s", txid, exc)
            return None
        records = [tx_record(t) for t in submission.txs]
        # the txids are the hashes of the bytes: the ledger cannot hand us another transaction under this txid
        return records if any(r.txid == txid for r in records) else None

    async def _ledger_proof(self, child: TxRecord) -> TxRecord | None:
        try:
            status = await self.arc.status(child.txid)
        except (ApiError, DialError) as exc:
            logger.info("wallet: no status of %s from the ledger: %s", child.txid, exc)
            return None
        if not status.mined or not status.merkle_path:
            return None
        path = bytes.fromhex(status.merkle_path)
        return dataclasses.replace(child, merkle_path=path, block_height=status.block_height)

    # -- receiving (the payments service) --------------------------------------------------------------------

    def payment_coin(
        self, *, txid: str, satoshis: int, script: bytes, prefix: str, suffix: str, payer: str
    ) -> UtxoRecord:
        """The coin a received BRC-29 payment gives us (output 0)."""
        return UtxoRecord(
            txid=txid,
            vout=0,
            satoshis=satoshis,
            script=script,
            protocol="2-3241645161d8",
            key_id=f"{prefix} {suffix}",
            counterparty=payer,
            origin="payment",
        )

    def note_received(self, coin: UtxoRecord, txs: Iterable[TxRecord], outputs: Sequence[SourceOutput]) -> None:
        """A received payment was committed (with its job): make its coin spendable and remember its txs."""
        self._coins.add(coin)
        self._remember_txs(txs)
        self._outputs.put(coin.txid, list(outputs))
        self._queued.put(coin.txid, True)
        self._wake()
        self.on_job_queued(-math.inf)

    async def held_outputs(self, txids: Collection[str]) -> dict[str, list[SourceOutput]]:
        """The outputs of the transactions among ``txids`` that we hold (for BEEF txid-only entries)."""
        out: dict[str, list[SourceOutput]] = {}
        missing = []
        for txid in txids:
            cached = self._outputs.get(txid)
            if cached is not None:
                out[txid] = cached
            else:
                missing.append(txid)
        if missing:
            for txid, tx in (await self._store.wallet.txs(missing)).items():
                outputs = outputs_of(tx.raw)
                self._outputs.put(txid, outputs)
                out[txid] = outputs
        return out

    # -- settlement ------------------------------------------------------------------------------------------

    def apply_effects(self, effects: SettlementEffects) -> None:
        """Bring the in-memory coins in line with a settlement change already committed."""
        for txid in effects.proven:
            self._coins.mark_proven(txid)
            self._txs.pop(txid, None)  # the database copy has the merkle path
        for op in effects.dead:
            self._coins.remove(op)
        for coin in effects.restored:
            self._coins.add(coin)
        if effects.dead or effects.restored:
            for txid in {op[0] for op in effects.dead}:
                self._queued.pop(txid, None)
        if effects.restored:
            self._wake()

    def _remember_txs(self, txs: Iterable[TxRecord]) -> None:
        for tx in txs:
            self._txs.put(tx.txid, tx)


def _gauge(metrics: Metrics) -> Any:
    from prometheus_client import Gauge

    return instrument(metrics, Gauge, "overlay_wallet_satoshis", "Satoshis in the wallet", ["state"])
