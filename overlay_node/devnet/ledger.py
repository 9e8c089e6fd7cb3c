"""The devnet ledger service: takes transactions the way ARC does, validates them fully, keeps a mempool,
makes blocks with merkle paths, and pays out from a faucet. HTTP-free (``app.py`` adapts it to ARC's API).

Theory of operation:

1. Submitting is three steps. (a) Read what the ledger knows: which txids it holds and the outputs the new
   transactions spend. (b) Validate every new transaction in a worker thread (``validation.py``); an ancestor
   carried in the same BEEF provides its outputs to its children. (c) Record all the valid groups in one
   durable write, where the store re-checks that every spent output is still unspent: a double spend is
   decided there, atomically, so two racing spends of one output can never both be accepted.
2. A block is planned from the mempool in a worker thread (coinbase, merkle tree, a BUMP per transaction, an
   80-byte header linked to the tip) and committed in one durable write. ``_mine_lock`` keeps one block maker.
3. The faucet owns every output locked to its key (the genesis block pays the whole supply to it, split into
   ``pool_outputs`` coins so payouts rarely chain on unmined change). A payout is a real transaction signed
   with the faucet key and submitted through the same path as any other; ``_faucet_lock`` keeps two payouts
   from picking the same coin.

ARC statuses used: SEEN_ON_NETWORK (accepted, in the mempool), MINED (with ``merklePath``, ``blockHash``,
``blockHeight``), DOUBLE_SPEND_ATTEMPTED (refused, a competing transaction holds an input; HTTP 200), and
REJECTED (a former double-spend attempt whose competitor was mined).
"""

from __future__ import annotations

import logging
import secrets
from collections import ChainMap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from bsv.keys import PrivateKey
from bsv.script.script import Script
from bsv.script.type import P2PKH
from bsv.transaction import Transaction, TransactionInput, TransactionOutput

from overlay_node.chain.blocks import (
    BLOCK_VERSION,
    NULL_HASH,
    BlockHeader,
    block_merkle_paths,
    merkle_root,
)
from overlay_node.chain.formats import ParsedTx, SourceOutput, Submission, encode_beef_v1, parse_transaction
from overlay_node.chain.refusals import ArcCode, Refusal
from overlay_node.chain.validation import NewOutput, NewTx, Policy, check_transaction, outpoints
from overlay_node.clock import wall_time
from overlay_node.crypto.scripts import is_data_script, p2pkh_script
from overlay_node.devnet.chain import BURN_SCRIPT, GENESIS_SUPPLY, coinbase_tx
from overlay_node.errors import StoreError
from overlay_node.store.ledger import (
    AcceptOutcome,
    AncestorRow,
    BlockEntry,
    BlockPlan,
    BlockRecord,
    LedgerRepository,
    Outpoint,
    StoredOutput,
    TxStatusRecord,
)

logger = logging.getLogger(__name__)

SEEN_ON_NETWORK = "SEEN_ON_NETWORK"
MINED = "MINED"
DOUBLE_SPEND_ATTEMPTED = "DOUBLE_SPEND_ATTEMPTED"
REJECTED = "REJECTED"

_FAUCET_KEY = "faucet_key"


@dataclass(frozen=True, slots=True, kw_only=True)
class TxAnswer:
    """The ledger's answer about one transaction, in ARC's terms."""

    txid: str
    tx_status: str
    extra_info: str = ""
    block_hash: str | None = None
    block_height: int | None = None
    merkle_path: str | None = None
    competing_txs: tuple[str, ...] = ()

    def as_arc(self, timestamp: str) -> dict[str, Any]:
        """ARC's transaction response object (like ARC: ``blockHeight`` 0 and empty strings until mined)."""
        return {
            "timestamp": timestamp,
            "txid": self.txid,
            "txStatus": self.tx_status,
            "extraInfo": self.extra_info,
            "blockHash": self.block_hash or "",
            "blockHeight": self.block_height or 0,
            "merklePath": self.merkle_path or "",
            "competingTxs": list(self.competing_txs) or None,
            "status": 200,
            "title": "OK",
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FaucetPayout:
    """A faucet payment: output ``vout`` of ``txid`` pays ``satoshis`` to ``locking_script``.

    ``beef`` is a BEEF V1 of the payout with its unmined ancestors down to mined ones with their merkle paths,
    so the receiver can hold and spend it with proof.
    """

    txid: str
    vout: int
    satoshis: int
    locking_script: bytes
    raw: bytes
    beef: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MinedBlock:
    """A block just made: its height, hash and the mempool transactions it holds (coinbase excluded)."""

    height: int
    hash: str
    txids: tuple[str, ...]


@dataclass(slots=True)
class _Group:
    """One submission on its way through :meth:`Ledger.submit`."""

    submission: Submission
    new: list[ParsedTx] = field(default_factory=list)
    checked: list[NewTx] = field(default_factory=list)
    refusal: Refusal | None = None


class Ledger:
    """The devnet ledger over its repository. Call :meth:`start` once before anything else.

    Args:
        repo: the ledger database.
        policy: fee and size policy.
        faucet_max: the largest single faucet payout, in satoshis.
        pool_outputs: how many coins the genesis block gives the faucet.
        validation_threads: how many worker threads may validate at once.
    """

    def __init__(
        self,
        repo: LedgerRepository,
        *,
        policy: Policy,
        faucet_max: int = 100 * 100_000_000,
        pool_outputs: int = 1000,
        validation_threads: int = 2,
    ) -> None:
        self._repo = repo
        self._policy = policy
        self._faucet_max = faucet_max
        self._pool_outputs = pool_outputs
        self._cpu = trio.CapacityLimiter(validation_threads)
        self._mine_lock = trio.Lock()
        self._faucet_lock = trio.Lock()
        self._block_made = trio.Event()  # set (and replaced) after every block commit
        self._key: Any = None  # bsv PrivateKey, set by start()
        self._faucet_script = b""

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def repo(self) -> LedgerRepository:
        return self._repo

    @property
    def faucet_script(self) -> bytes:
        """The locking script of the faucet's coins."""
        return self._faucet_script

    async def start(self) -> None:
        """Load (or create) the faucet key and make the genesis block on a new ledger."""
        key_hex = await self._repo.meta_default(_FAUCET_KEY, secrets.token_bytes(32).hex())
        self._key = PrivateKey(bytes.fromhex(key_hex))
        self._faucet_script = p2pkh_script(bytes(self._key.public_key().hash160()))
        if await self._repo.tip() is None:
            async with self._mine_lock:
                plan = await trio.to_thread.run_sync(self._plan_genesis, int(wall_time()), limiter=self._cpu)
                await self._repo.commit_block(plan)
            logger.info("devnet genesis block %s created in %s", plan.block.hash, self._repo.path)
        tip = await self._require_tip()
        logger.info("devnet ledger at height %d (%s)", tip.height, tip.hash)

    # -- submissions -----------------------------------------------------------------------------------------

    async def submit(self, submissions: Sequence[Submission]) -> list[TxAnswer | Refusal]:
        """Validate and record each submission (a transaction, or a BEEF with its unmined ancestors).

        Each submission is taken whole or refused whole; the answers come in the same order. A transaction the
        ledger already holds is answered with its current status.

        Returns:
            Per submission, the status of its subject transaction or the refusal.
        """
        groups = [_Group(submission=s) for s in submissions]
        ids = {t.txid for s in submissions for t in s.txs}
        known = await self._repo.known(ids)
        heights: dict[int, BlockRecord | None] = {}
        for g in groups:
            try:
                await self._select_new(g, known, heights)
            except Refusal as refusal:
                g.refusal = refusal
        wanted: set[Outpoint] = set()
        for g in groups:
            inside = {t.txid for t in g.new}
            wanted.update(op for t in g.new for op in outpoints(t) if op[0] not in inside)
        stored = await self._repo.outputs(wanted)
        if any(g.new and g.refusal is None for g in groups):
            await trio.to_thread.run_sync(self._check_groups, groups, stored, limiter=self._cpu)
        todo = [g for g in groups if g.checked and g.refusal is None]
        outcomes = await self._repo.accept([g.checked for g in todo], now=wall_time()) if todo else []
        by_group = {id(g): o for g, o in zip(todo, outcomes, strict=True)}
        answers: list[TxAnswer | Refusal | None] = []
        for g in groups:
            subject = g.submission.subject.txid
            outcome = by_group.get(id(g))
            if g.refusal is not None:
                answers.append(_about(g.refusal, subject))
            elif outcome is not None and outcome.conflict_txid is not None:
                answers.append(_conflict_answer(subject, outcome))
            elif outcome is not None and outcome.missing is not None:
                txid, (ptxid, vout) = outcome.missing
                info = f"{txid} spends output {ptxid}:{vout}, which the ledger does not hold"
                answers.append(Refusal(ArcCode.INPUTS, info, txid=subject))
            elif outcome is not None and subject in outcome.accepted:
                answers.append(TxAnswer(txid=subject, tx_status=SEEN_ON_NETWORK))
            else:
                answers.append(None)  # held already (or taken by an earlier item): its status, below
        # resubmissions (how payers and payees follow their transactions) are answered with their status, all
        # read in one transaction
        held = [g.submission.subject.txid for g, a in zip(groups, answers, strict=True) if a is None]
        records = await self._repo.statuses(held) if held else {}
        accepted = sum(len(o.accepted) for o in outcomes)
        if accepted:
            logger.debug("accepted %d transactions from %d submissions", accepted, len(submissions))
        return [
            _answer(g.submission.subject.txid, records[g.submission.subject.txid]) if a is None else a
            for g, a in zip(groups, answers, strict=True)
        ]

    async def _select_new(self, g: _Group, known: set[str], heights: dict[int, BlockRecord | None]) -> None:
        """Check the BUMPs a BEEF carries against the chain and keep the transactions the ledger lacks."""
        for ptx in g.submission.txs:
            if ptx.bump is not None:
                height = ptx.block_height
                assert height is not None  # read with the BUMP
                if height not in heights:
                    heights[height] = await self._repo.block_at(height)
                block = heights[height]
                if block is None or block.merkle_root != ptx.bump_root:
                    raise Refusal(
                        ArcCode.VALIDATING_MERKLE_ROOTS,
                        f"the merkle path of {ptx.txid} does not match devnet block {height}",
                        txid=ptx.txid,
                    )
                if ptx.txid not in known:
                    raise Refusal(
                        ArcCode.MINED_ANCESTORS_NOT_FOUND,
                        f"{ptx.txid} is not mined on the devnet",
                        txid=ptx.txid,
                    )
            elif ptx.txid not in known:
                g.new.append(ptx)

    def _check_groups(self, groups: Sequence[_Group], stored: dict[Outpoint, StoredOutput]) -> None:
        """Worker thread: validate the new transactions of each group (a group stops at its first refusal)."""
        base = {op: SourceOutput(satoshis=o.satoshis, locking_script=o.script) for op, o in stored.items()}
        # outputs created by the groups validated so far: a batch may hold a chain, parents first
        batch: dict[Outpoint, SourceOutput] = {}
        for g in groups:
            if g.refusal is not None or not g.new:
                continue
            created: dict[Outpoint, SourceOutput] = {}
            sources = ChainMap(created, batch, base)  # what this group creates, before what the others did
            try:
                for ptx in g.new:
                    new_tx = check_transaction(ptx, sources, self._policy)
                    for out in new_tx.outputs:
                        created[(ptx.txid, out.vout)] = SourceOutput(satoshis=out.satoshis, locking_script=out.script)
                    g.checked.append(new_tx)
            except Refusal as refusal:
                g.refusal = refusal
                g.checked = []
            else:
                batch.update(created)

    async def status(self, txid: str) -> TxAnswer:
        """The current status of ``txid``.

        Raises:
            Refusal: NOT_FOUND (404) when the ledger never saw it.
        """
        return _answer(txid, await self._repo.status(txid))

    async def beef(self, txid: str) -> bytes:
        """A BEEF V1 of ``txid`` with its unmined ancestors, down to mined ones carrying their merkle paths.

        Raises:
            Refusal: NOT_FOUND when the ledger does not hold ``txid``.
        """
        rows = await self._repo.ancestry(txid)
        if not rows:
            raise Refusal(ArcCode.NOT_FOUND, f"transaction {txid} is unknown", txid=txid)
        return encode_beef_v1([(r.raw, r.merkle_path) for r in _parents_first(rows)])

    # -- blocks ----------------------------------------------------------------------------------------------

    async def mine(self, *, only_if_pending: bool = False) -> MinedBlock | None:
        """Make a block of the whole mempool now, linked to the tip, and commit it durably.

        Args:
            only_if_pending: make no block (and return None) when the mempool is empty.
        """
        async with self._mine_lock:
            tip = await self._require_tip()
            txids = await self._repo.mempool()
            if only_if_pending and not txids:
                return None
            plan = await trio.to_thread.run_sync(
                self._plan_block, tip, txids, max(int(wall_time()), tip.time), limiter=self._cpu
            )
            await self._repo.commit_block(plan)
            self._block_made.set()
            self._block_made = trio.Event()
        logger.info("devnet block %d %s with %d transactions", plan.block.height, plan.block.hash, len(txids))
        return MinedBlock(height=plan.block.height, hash=plan.block.hash, txids=tuple(txids))

    async def serve_block_maker(self, interval: float) -> None:
        """Make a block every ``interval`` seconds while transactions wait. Runs until cancelled."""
        while True:
            await trio.sleep(interval)
            await self.mine(only_if_pending=True)

    async def wait_for_height(self, height: int) -> BlockRecord:
        """Wait until the chain reaches ``height``; return the tip then."""
        while True:
            made = self._block_made
            tip = await self._require_tip()
            if tip.height >= height:
                return tip
            await made.wait()

    async def header(self, height: int) -> BlockRecord:
        """Raises Refusal NOT_FOUND when there is no block at ``height``."""
        block = await self._repo.block_at(height)
        if block is None:
            raise Refusal(ArcCode.NOT_FOUND, f"no block at height {height}")
        return block

    async def chaintip(self) -> BlockRecord:
        return await self._require_tip()

    async def _require_tip(self) -> BlockRecord:
        tip = await self._repo.tip()
        if tip is None:
            raise StoreError(f"{self._repo.path} holds no genesis block")
        return tip

    def _plan_block(self, tip: BlockRecord, txids: Sequence[str], now: int) -> BlockPlan:
        height = tip.height + 1
        coinbase = coinbase_tx(height, [(0, BURN_SCRIPT)])
        return _plan(height, tip.hash, now, [_new_tx(coinbase, fee=0)], list(txids))

    def _plan_genesis(self, now: int) -> BlockPlan:
        coinbase = coinbase_tx(0, [(GENESIS_SUPPLY, self._faucet_script)])
        share = GENESIS_SUPPLY // self._pool_outputs
        outputs = [TransactionOutput(Script(self._faucet_script), share) for _ in range(self._pool_outputs)]
        tx_in = TransactionInput(
            source_transaction=coinbase,
            source_output_index=0,
            unlocking_script_template=P2PKH().unlock(self._key),
        )
        split = Transaction([tx_in], outputs)
        split.sign()
        fee = GENESIS_SUPPLY - share * self._pool_outputs
        return _plan(0, NULL_HASH, now, [_new_tx(coinbase, fee=0), _new_tx(split, fee=fee)], [])

    # -- faucet ----------------------------------------------------------------------------------------------

    async def faucet(self, locking_script: bytes, satoshis: int) -> FaucetPayout:
        """Pay ``satoshis`` to ``locking_script`` with a real signed transaction from the faucet's coins.

        Raises:
            Refusal: BAD_REQUEST for an amount out of range or a data-carrier script; GENERIC when the faucet
                cannot pay (no coin large enough).
        """
        if not 1 <= satoshis <= self._faucet_max:
            raise Refusal(ArcCode.BAD_REQUEST, f"faucet pays 1 to {self._faucet_max} satoshis, not {satoshis}")
        if not locking_script or is_data_script(locking_script):
            raise Refusal(ArcCode.BAD_REQUEST, "faucet cannot pay to an empty or data-carrier script")
        async with self._faucet_lock:
            margin = self._policy.required_fee(400 + len(locking_script)) + 1
            coins = await self._repo.unspent_by_script(self._faucet_script, min_satoshis=satoshis + margin, limit=1)
            if not coins:
                raise Refusal(ArcCode.GENERIC, f"the faucet holds no coin of {satoshis + margin} satoshis")
            coin = coins[0]
            source_raw = await self._repo.raw_tx(coin.txid)
            if source_raw is None:
                raise StoreError(f"faucet coin {coin.txid}:{coin.vout} has no transaction")
            ptx = self._faucet_tx(coin, source_raw, locking_script, satoshis)
            (answer,) = await self.submit([Submission(format="raw", txs=(ptx,))])
        if isinstance(answer, Refusal):
            raise Refusal(ArcCode.GENERIC, f"faucet payout was refused: {answer}")
        if answer.tx_status not in (SEEN_ON_NETWORK, MINED):
            raise Refusal(ArcCode.GENERIC, f"faucet payout was not accepted: {answer.tx_status}")
        logger.info("faucet paid %d satoshis in %s", satoshis, ptx.txid)
        return FaucetPayout(
            txid=ptx.txid,
            vout=0,
            satoshis=satoshis,
            locking_script=locking_script,
            raw=ptx.raw,
            beef=await self.beef(ptx.txid),
        )

    def _faucet_tx(self, coin: StoredOutput, source_raw: bytes, locking_script: bytes, satoshis: int) -> ParsedTx:
        source = Transaction.from_hex(source_raw)
        tx_in = TransactionInput(
            source_transaction=source,
            source_output_index=coin.vout,
            unlocking_script_template=P2PKH().unlock(self._key),
        )
        pay = TransactionOutput(Script(locking_script), satoshis)
        change = TransactionOutput(Script(self._faucet_script), coin.satoshis - satoshis)
        tx = Transaction([tx_in], [pay, change])
        tx.sign()
        # a DER signature may be one or two bytes shorter or longer when re-signed
        fee = self._policy.required_fee(len(tx.serialize()) + 2)
        change.satoshis = coin.satoshis - satoshis - fee
        if change.satoshis < 1:
            tx.outputs.pop()
        tx.sign(bypass=False)
        return parse_transaction(bytes(tx.serialize()))


def _answer(txid: str, record: TxStatusRecord | None) -> TxAnswer:
    """ARC's answer about ``txid`` from its stored status.

    Raises:
        Refusal: NOT_FOUND (404) when the ledger never saw it.
    """
    if record is None:
        raise Refusal(ArcCode.NOT_FOUND, f"transaction {txid} is unknown", txid=txid)
    if record.state == "mempool":
        return TxAnswer(txid=txid, tx_status=SEEN_ON_NETWORK)
    if record.state == "mined":
        return TxAnswer(
            txid=txid,
            tx_status=MINED,
            block_hash=record.block_hash,
            block_height=record.block_height,
            merkle_path=None if record.merkle_path is None else record.merkle_path.hex(),
        )
    if record.competitor_mined:
        return TxAnswer(
            txid=txid,
            tx_status=REJECTED,
            extra_info="previously double spend attempted: a competing transaction was mined",
            competing_txs=record.competing,
        )
    return TxAnswer(
        txid=txid,
        tx_status=DOUBLE_SPEND_ATTEMPTED,
        extra_info="double spend: an input is already spent by a competing transaction",
        competing_txs=record.competing,
    )


def _new_tx(tx: Any, *, fee: int) -> NewTx:
    raw = bytes(tx.serialize())
    parsed = parse_transaction(raw)
    outputs = [
        NewOutput(vout=vout, satoshis=satoshis, script=script)
        for vout, (satoshis, script) in enumerate(parsed.outputs)
        if not is_data_script(script)
    ]
    spends = tuple(op for op in outpoints(parsed) if op[0] != NULL_HASH)
    return NewTx(txid=parsed.txid, raw=raw, fee=fee, spends=spends, outputs=tuple(outputs))


def _plan(height: int, prev_hash: str, now: int, own: Sequence[NewTx], mempool: Sequence[str]) -> BlockPlan:
    """A block at ``height``: the coinbase (first of ``own``), the ``mempool``, then the rest of ``own``."""
    txids = [own[0].txid, *mempool, *(t.txid for t in own[1:])]
    root = merkle_root(txids)
    paths = block_merkle_paths(txids, height)
    header = BlockHeader(version=BLOCK_VERSION, prev_hash=prev_hash, merkle_root=root, time=now)
    block = BlockRecord(
        height=height,
        hash=header.hash,
        prev_hash=prev_hash,
        merkle_root=root,
        time=now,
        header=header.serialize(),
        tx_count=len(txids),
    )
    entries = tuple(BlockEntry(txid=t, index=i, merkle_path=paths[i]) for i, t in enumerate(txids))
    return BlockPlan(block=block, new_txs=tuple(own), entries=entries)


def _about(refusal: Refusal, subject: str) -> Refusal:
    """``refusal`` naming the submission's subject (saying which ancestor it was about, if another)."""
    if refusal.txid in (None, subject):
        return refusal.with_txid(subject)
    return Refusal(refusal.arc_code, f"ancestor {refusal.txid}: {refusal.extra_info}", txid=subject)


def _conflict_answer(subject: str, outcome: AcceptOutcome) -> TxAnswer:
    culprit = "" if outcome.conflict_txid == subject else f" (its ancestor {outcome.conflict_txid})"
    if outcome.competitor_mined:
        return TxAnswer(
            txid=subject,
            tx_status=REJECTED,
            extra_info=f"double spend{culprit}: an input was already spent by a mined transaction",
            competing_txs=outcome.competing,
        )
    return TxAnswer(
        txid=subject,
        tx_status=DOUBLE_SPEND_ATTEMPTED,
        extra_info=f"double spend{culprit}: an input is already spent by a competing transaction",
        competing_txs=outcome.competing,
    )


def _parents_first(rows: Sequence[AncestorRow]) -> list[AncestorRow]:
    """``rows`` (subject first, from ``LedgerRepository.ancestry``) reordered so parents precede children."""
    by_id = {r.txid: r for r in rows}
    out: list[AncestorRow] = []
    done: set[str] = set()
    stack: list[tuple[str, bool]] = [(rows[0].txid, False)]
    while stack:
        txid, expanded = stack.pop()
        if txid in done:
            continue
        if expanded:
            done.add(txid)
            out.append(by_id[txid])
            continue
        stack.append((txid, True))
        stack.extend((p, False) for p in by_id[txid].parents if p in by_id and p not in done)
    return out
