"""BRC-29 payments between real nodes: peer managers on 127.0.0.1 (real websockets), wallets on real SQLite
files, settlement through a real devnet ledger over HTTP. Also holds the harness the wallet tests share
(``start_devnet``, ``PayNode``, ``start_paynode``).

Every test has a trio-clock time limit and waits on events (``nursery.start``, ``Settlement.wait_for``);
nothing sleeps and polls. Blocks are made on demand (``/v1/mine``) and the settlement queue is worked with
``Settlement.process(everything=True)`` right after, instead of waiting for its poll interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from bsv.script.script import Script
from bsv.transaction import Transaction

from overlay_node.chain.formats import atomic_beef
from overlay_node.config import StoreSection, SwarmSection, WalletSection
from overlay_node.crypto.brc29 import payer_locking_script
from overlay_node.crypto.keys import Identity
from overlay_node.crypto.sighash import P2pkhSpend, outpoint_bytes, sign_p2pkh
from overlay_node.devnet import DevnetInfo, DevnetSettings, run_devnet
from overlay_node.errors import (
    BadRequest,
    Conflict,
    InsufficientPayment,
    InvalidPayment,
    NotFound,
    OverlayError,
    PaymentReplayed,
)
from overlay_node.metrics import Metrics
from overlay_node.net.peers import PeerLink, PeerManager
from overlay_node.protocol.payments import PaymentMessage, Receipt
from overlay_node.services.arc import ArcOutcome, DevnetClient
from overlay_node.services.payments import RECEIPTS_KEY_ID, Payments
from overlay_node.services.settlement import Settlement
from overlay_node.services.wallet import PreparedTx, Wallet
from overlay_node.services.wallet_beef import beef_entries
from overlay_node.services.wallet_build import build_transaction
from overlay_node.store.db import Store, open_store
from overlay_node.store.records import UtxoRecord
from overlay_node.store.wallet import HistoryRecord, TxRecord

LIMIT = 20  # seconds of trio time per test


# -- harness -------------------------------------------------------------------------------------------------


def wallet_config(**overrides: Any) -> WalletSection:
    """Fast settlement for tests (built directly: some values are below the loader's minimums)."""
    base = WalletSection(settle_retry_min=0.05, settle_retry_max=0.5, settle_poll_interval=30.0)
    return dataclasses.replace(base, **overrides)


@dataclass
class Devnet:
    info: DevnetInfo
    client: DevnetClient

    @property
    def url(self) -> str:
        return self.info.url

    async def mine(self) -> None:
        await self.client.mine()


DevnetFactory = Callable[[], Awaitable[Devnet]]


@pytest.fixture
async def start_devnet(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[DevnetFactory]:
    """``devnet = await start_devnet()``: a devnet ledger on 127.0.0.1, blocks only on demand."""
    stops: list[trio.Event] = []
    clients: list[DevnetClient] = []

    async def factory() -> Devnet:
        stop = trio.Event()
        settings = DevnetSettings(
            data_dir=tmp_path / f"devnet{len(stops)}",
            port=0,
            block_interval=0,
            pool_outputs=8,
            graceful_timeout=0.5,
        )
        info: DevnetInfo = await nursery.start(
            lambda task_status: run_devnet(settings, shutdown=stop, task_status=task_status)
        )
        stops.append(stop)
        client = DevnetClient(info.url)
        clients.append(client)
        return Devnet(info=info, client=client)

    yield factory
    for client in clients:
        await client.aclose()
    for stop in stops:
        stop.set()


@dataclass
class PayNode:
    """A node reduced to what payments need: peer manager, wallet, settlement and payments, on its own
    SQLite file. ``stop()`` tears its services down (as a crash would: nothing is flushed on purpose)."""

    name: str
    identity: Identity
    db_path: Path
    store: Store
    peers: PeerManager
    wallet: Wallet
    settlement: Settlement
    payments: Payments
    url: str
    scope: trio.CancelScope
    stopped: trio.Event

    @property
    def key(self) -> str:
        return self.identity.public_key_hex

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()

    async def fund(self, satoshis: int) -> None:
        await self.wallet.faucet(satoshis)

    async def settle_all(self) -> None:
        """Work every open settlement job now."""
        await self.settlement.process(everything=True)


async def start_paynode(
    nursery: trio.Nursery,
    tmp_path: Path,
    name: str,
    arc_url: str,
    *,
    identity: Identity | None = None,
    settlement: bool = True,
    config: WalletSection | None = None,
    **swarm: Any,
) -> PayNode:
    """Start a PayNode in ``nursery`` (its SQLite file is ``tmp_path/<name>.db``; reuse ``identity`` and the
    name to restart one on the same database). With ``settlement=False`` the settlement task is not started;
    ``swarm`` overrides fields of its ``[swarm]`` section."""
    ident = identity or Identity.generate()
    cfg = config or wallet_config()
    db_path = tmp_path / f"{name}.db"
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[PayNode] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as scope:
                async with open_store(db_path, StoreSection()) as store, trio.open_nursery() as inner:
                    metrics = Metrics()
                    base = SwarmSection(host="127.0.0.1", port=0, keepalive_interval=60.0, request_timeout=10.0)
                    peers = PeerManager(ident, dataclasses.replace(base, **swarm), metrics)
                    wallet = Wallet(ident, cfg, store, metrics, arc_url=arc_url)
                    settle = Settlement(cfg, store, metrics, wallet)
                    payments = Payments(ident, cfg, store, metrics, peers, wallet)
                    urls: list[str] = await inner.start(peers.run)
                    await inner.start(wallet.run)
                    await inner.start(payments.run)
                    if settlement:
                        await inner.start(settle.run)
                    node = PayNode(
                        name, ident, db_path, store, peers, wallet, settle, payments, urls[0], scope, stopped
                    )
                    task_status.started(node)
        finally:
            stopped.set()

    node: PayNode = await nursery.start(run)
    return node


async def link(a: PayNode, b: PayNode) -> None:
    await a.peers.connect(b.url, expect_key=b.key)
    await b.peers.wait_linked(a.key)


async def funded_pair(nursery: trio.Nursery, tmp_path: Path, arc_url: str, satoshis: int) -> tuple[PayNode, PayNode]:
    """A payer ``a`` funded with ``satoshis`` and a payee ``b``, linked."""
    a = await start_paynode(nursery, tmp_path, "a", arc_url)
    b = await start_paynode(nursery, tmp_path, "b", arc_url)
    await link(a, b)
    await a.fund(satoshis)
    return a, b


# -- the whole path ------------------------------------------------------------------------------------------


async def test_pay_settle_mine_and_spend_back(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 100_000)
        assert a.wallet.balance().satoshis == 100_000

        quote = await a.payments.request_quote(b.key, "file:report.csv", 1_000)
        assert quote.payee == b.key
        assert quote.payer == a.key
        assert quote.amount == 1_000
        receipt = await a.payments.pay(quote.quote_id)
        assert receipt.verify()
        assert receipt.amount == 1_000
        assert receipt.payer == a.key
        fee = 100_000 - 1_000 - a.wallet.balance().satoshis
        assert 0 < fee < 10
        assert b.wallet.balance().satoshis == 1_000

        # B recorded it durably before answering, and its settlement submits it to the devnet
        payment = await b.store.payments.get(quote.quote_id)
        assert payment is not None
        assert payment.txid == receipt.txid
        job = await b.settlement.wait_for(receipt.txid, "seen")
        assert job.arc_status == "SEEN_ON_NETWORK"
        assert (await devnet.client.status(receipt.txid)).outcome is ArcOutcome.SEEN

        await devnet.mine()
        for node in (a, b):
            await node.settle_all()
        assert (await b.settlement.wait_for(receipt.txid, "mined")).state == "mined"
        assert a.wallet.balance().confirmed == 100_000 - 1_000 - fee
        assert a.wallet.balance().unconfirmed == 0
        assert b.wallet.balance().confirmed == 1_000
        assert (await b.store.payments.get(quote.quote_id)).status == "mined"  # type: ignore[union-attr]
        history_a = await a.wallet.history()
        assert [(h.direction, h.kind, h.amount, h.status) for h in history_a] == [
            ("out", "payment", 1_000, "confirmed"),
            ("in", "faucet", 100_000, "confirmed"),
        ]

        # B spends what it received: its key comes back from the stored prefix, suffix and payer
        back = await b.payments.request_quote(a.key, "refund", 400)
        receipt2 = await b.payments.pay(back)
        assert receipt2.payee == a.key
        assert receipt2.amount == 400
        await a.settlement.wait_for(receipt2.txid, "seen")
        await devnet.mine()
        for node in (a, b):
            await node.settle_all()
        await a.settlement.wait_for(receipt2.txid, "mined")
        fee2 = 1_000 - 400 - b.wallet.balance().satoshis
        assert 0 < fee2 < 10
        assert b.wallet.balance().confirmed == 1_000 - 400 - fee2
        assert a.wallet.balance().confirmed == 100_000 - 1_000 - fee + 400


async def test_chained_payments_name_known_transactions_by_txid_only(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """Unmined payments chain on their change; the payee already holds the parent, so the BEEF stays small."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 50_000)
        sizes = []
        txids = []
        for i in range(5):
            quote = await a.payments.request_quote(b.key, f"packet:{i}", 10)
            message, prepared = await a.payments.prepare_payment(quote)
            sizes.append(len(message.transaction))
            receipt = await a.payments.send_payment(_link_to(a, b), message, prepared)
            txids.append(receipt.txid)
        # the first BEEF carries the faucet payout and its proven ancestor; later ones name the parent by txid
        assert sizes[1] < sizes[0]
        assert max(sizes[1:]) - min(sizes[1:]) <= 2
        assert b.wallet.balance().satoshis == 50
        for txid in txids:
            await b.settlement.wait_for(txid, "seen")
        await devnet.mine()
        await b.settle_all()
        await a.settle_all()
        for txid in txids:
            assert (await b.settlement.wait_for(txid, "mined")).state == "mined"
        assert b.wallet.balance().confirmed == 50
        assert a.wallet.balance().unconfirmed == 0


# -- refusals ------------------------------------------------------------------------------------------------


def _link_to(a: PayNode, b: PayNode) -> PeerLink:
    found = a.peers.link(b.key)
    assert found is not None
    return found


async def _send_raw(a: PayNode, b: PayNode, message: PaymentMessage) -> Any:
    return await _link_to(a, b).request("pay.submit", message.to_wire())


async def _beef_for(node: PayNode, tx: Any) -> bytes:
    """An Atomic BEEF of a hand-made transaction spending the node's coins."""
    raw = bytes(tx.serialize())
    txid = str(tx.txid())
    parents = tuple(dict.fromkeys(str(i.source_txid) for i in tx.inputs))
    record = TxRecord(txid=txid, raw=raw, parents=parents)
    txs = await node.store.wallet.ancestry(parents)
    return atomic_beef(txid, beef_entries(txid, {**txs, txid: record}))


def _balances(*nodes: PayNode) -> list[tuple[int, int]]:
    return [(n.wallet.balance().satoshis, n.wallet.balance().reserved) for n in nodes]


async def test_refusals_leave_balances_unchanged(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 20_000)
        before = _balances(a, b)

        # below the price
        quote = await a.payments.request_quote(b.key, "file:x", 500)
        message, prepared = await a.payments.prepare_payment(quote, amount=499)
        with pytest.raises(InsufficientPayment, match="pays 499 satoshis, the quoted price is 500"):
            await a.payments.send_payment(_link_to(a, b), message, prepared)
        assert _balances(a, b) == before

        # to the wrong key: the message names another suffix than the one output 0 was derived with
        message, prepared = await a.payments.prepare_payment(quote)
        wrong = dataclasses.replace(message, derivation_suffix="d3JvbmdzdWZmaXg=")
        with pytest.raises(InvalidPayment, match="output 0 does not pay the key derived"):
            await a.payments.send_payment(_link_to(a, b), wrong, prepared)
        assert _balances(a, b) == before

        # a bad signature: one bit of input 0's signature flipped
        message, prepared = await a.payments.prepare_payment(quote)
        tx = Transaction.from_hex(prepared.raw)
        unlock = bytearray(tx.inputs[0].unlocking_script.serialize())
        unlock[10] ^= 1
        tx.inputs[0].unlocking_script = Script(bytes(unlock))
        forged = dataclasses.replace(message, transaction=await _beef_for(a, tx))
        with pytest.raises(InvalidPayment, match=r"the payment is invalid: .*input 0 script failed"):
            await _send_raw(a, b, forged)
        a.wallet.release(prepared)
        assert _balances(a, b) == before

        # an unbalanced transaction: correctly signed, but paying out more than its input holds
        coin = a.wallet.coins()[0]
        script = payer_locking_script(a.identity, b.key, quote.prefix, "c3VmZml4c3VmZml4")
        greedy = _sign_unbalanced(a, coin, [(script, coin.satoshis + 1)])
        unbalanced = PaymentMessage(
            quote=quote,
            derivation_prefix=quote.prefix,
            derivation_suffix="c3VmZml4c3VmZml4",
            sender_identity_key=a.key,
            transaction=await _beef_for(a, greedy),
        )
        with pytest.raises(InvalidPayment, match="exceed inputs"):
            await _send_raw(a, b, unbalanced)
        assert _balances(a, b) == before

        # refusals leave no trace in the database either: no history, the coin spendable
        assert [h.kind for h in await a.wallet.history()] == ["faucet"]
        assert set((await a.store.wallet.utxo_states([coin.outpoint])).values()) == {"spendable"}

        # the quote is still open after all those refusals: a correct payment goes through once...
        message, prepared = await a.payments.prepare_payment(quote)
        receipt = await a.payments.send_payment(_link_to(a, b), message, prepared)
        assert b.wallet.balance().satoshis == 500
        # ...and a replay of the same message (same prefix) is refused
        with pytest.raises(PaymentReplayed):
            await _send_raw(a, b, message)
        assert b.wallet.balance().satoshis == 500
        assert len(await b.store.payments.recent()) == 1
        assert (await b.store.payments.get(quote.quote_id)).txid == receipt.txid  # type: ignore[union-attr]

        # a payer that never got an answer asks for its receipt: "not found" is final, the quote is void
        unpaid = await a.payments.request_quote(b.key, "file:y", 300)
        with pytest.raises(NotFound, match="void"):
            await _link_to(a, b).request("pay.receipt", {"quote_id": unpaid.quote_id})
        message, prepared = await a.payments.prepare_payment(unpaid)
        with pytest.raises(PaymentReplayed, match="void"):
            await _send_raw(a, b, message)  # a late copy of the payment is refused, so the payer keeps its coins
        a.wallet.release(prepared)
        assert b.wallet.balance().satoshis == 500


def _sign_unbalanced(node: PayNode, coin: UtxoRecord, outputs: list[tuple[bytes, int]]) -> Any:
    """A transaction spending ``coin`` to ``outputs`` whatever they add up to, properly signed."""
    spend = P2pkhSpend(outpoint_bytes(coin.txid, coin.vout), coin.script, coin.satoshis, node.wallet._private_key(coin))
    return Transaction.from_hex(sign_p2pkh([spend], outputs))


async def test_double_spends_are_refused_or_fail_at_settlement(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 10_000)
        coin = a.wallet.coins()[0]

        # 1. A spends its coin elsewhere first (straight to the ledger, behind its wallet's back) ...
        elsewhere = build_transaction([coin], [(coin.script, coin.satoshis - 1)], a.wallet._private_key, fee=1)
        assert (await devnet.client.submit(elsewhere.raw)).outcome is ArcOutcome.SEEN
        # ... then pays B with the same coin. B cannot know: it accepts (zero-conf) and answers a receipt
        quote = await a.payments.request_quote(b.key, "file:1", 700)
        receipt = await a.payments.pay(quote)
        assert b.wallet.balance().satoshis == 700
        # the devnet reports the double spend when B settles; B marks the payment failed, the coin dead
        job = await b.settlement.wait_for(receipt.txid, "failed")
        assert job.arc_status == "DOUBLE_SPEND_ATTEMPTED"
        assert "double spend" in job.detail.lower()
        payment = await b.store.payments.get(quote.quote_id)
        assert payment is not None
        assert payment.status == "failed"
        assert b.wallet.balance().satoshis == 0
        assert [(h.status, h.amount) for h in await b.wallet.history()] == [("failed", 700)]
        # A's own settlement of its copy (due a poll interval after the receipt: sent now) fails the same way: its
        # change is gone too
        await a.wallet.flush()
        await a.settle_all()
        await a.settlement.wait_for(receipt.txid, "failed")
        assert a.wallet.balance().satoshis == 0

        # 2. a payment spending an output B already accepted in an earlier payment is refused at once
        await a.fund(5_000)
        q1 = await a.payments.request_quote(b.key, "file:2", 300)
        await a.payments.pay(q1)
        paid = await b.store.payments.get(q1.quote_id)
        assert paid is not None
        txid, vout = await _first_input(b, paid.txid)
        q2 = await a.payments.request_quote(b.key, "file:3", 300)
        # the deposit that payment spent, as A's wallet recorded it
        coin2 = UtxoRecord(
            txid=txid,
            vout=vout,
            satoshis=5_000,
            script=bytes.fromhex(a.wallet.receive()["locking_script"]),
            protocol="2-overlay node wallet",
            key_id="receive",
            counterparty="self",
            origin="faucet",
        )
        suffix = "c2Vjb25kc3VmZml4"
        script = payer_locking_script(a.identity, b.key, q2.prefix, suffix)
        again = build_transaction(
            [coin2], [(script, 300), (coin2.script, coin2.satoshis - 301)], a.wallet._private_key, fee=1
        )
        message = PaymentMessage(
            quote=q2,
            derivation_prefix=q2.prefix,
            derivation_suffix=suffix,
            sender_identity_key=a.key,
            transaction=await _beef_for(a, Transaction.from_hex(again.raw)),
        )
        balance = b.wallet.balance().satoshis
        with pytest.raises(InvalidPayment, match=r"double spend: output .* was already spent by payment"):
            await _send_raw(a, b, message)
        assert b.wallet.balance().satoshis == balance


async def _first_input(node: PayNode, txid: str) -> tuple[str, int]:
    tx = (await node.store.wallet.txs([txid]))[txid]
    parsed = Transaction.from_hex(tx.raw)
    return str(parsed.inputs[0].source_txid), int(parsed.inputs[0].source_output_index)


# -- crash safety --------------------------------------------------------------------------------------------


async def test_accepted_payment_survives_teardown_and_settles_after_restart(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        # A's settlement stays off too, so that only B can bring the payment to the ledger
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, settlement=False)
        b_identity = Identity.generate()
        b = await start_paynode(nursery, tmp_path, "b", devnet.url, identity=b_identity, settlement=False)
        await link(a, b)
        await a.fund(10_000)
        quote = await a.payments.request_quote(b.key, "file:crash", 2_500)
        receipt = await a.payments.pay(quote)
        # B answered, so the payment was committed; tear B down before its settlement ever ran
        await b.stop()
        assert (await devnet.client.status(receipt.txid)).outcome is ArcOutcome.NOT_FOUND

        b2 = await start_paynode(nursery, tmp_path, "b", devnet.url, identity=b_identity)
        payment = await b2.store.payments.get(quote.quote_id)
        assert payment is not None
        assert payment.txid == receipt.txid
        assert payment.amount == 2_500
        assert b2.wallet.balance().satoshis == 2_500
        # the signed receipt was kept too: the payer can fetch it again
        relinked = await a.peers.connect(b2.url, expect_key=b2.key)
        again = await relinked.request("pay.receipt", {"quote_id": quote.quote_id})
        assert Receipt.from_wire(again["receipt"]) == receipt
        assert again["status"] in ("accepted", "settled")
        await b2.settlement.wait_for(receipt.txid, "seen")
        await devnet.mine()
        await b2.settle_all()
        assert (await b2.settlement.wait_for(receipt.txid, "mined")).state == "mined"
        assert b2.wallet.balance().confirmed == 2_500


async def test_payer_crash_after_the_payee_took_the_payment_loses_nothing(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """The payer writes a payment ahead of sending it; it dies after the payee accepted it and before it
    noted the answer. On restart its settlement queue finds the transaction at ARC and the change is back."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a_identity = Identity.generate()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, identity=a_identity)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url)
        await link(a, b)
        await a.fund(10_000)
        quote = await a.payments.request_quote(b.key, "file:crash", 1_500)
        message, prepared = await a.payments.prepare_payment(quote)
        history = HistoryRecord(txid=prepared.txid, direction="out", kind="payment", amount=1_500)
        await a.wallet.begin(prepared, history)
        answer = await _send_raw(a, b, message)
        assert Receipt.from_wire(answer["receipt"]).txid == prepared.txid
        await a.stop()  # the answer is lost with the payer

        await b.settlement.wait_for(prepared.txid, "seen")
        a2 = await start_paynode(nursery, tmp_path, "a", devnet.url, identity=a_identity)
        assert a2.wallet.balance().satoshis == 0  # the coin is spent, the change not known to be ours yet
        await a2.settle_all()
        assert a2.wallet.balance().satoshis == 10_000 - 1_500 - prepared.fee
        latest = (await a2.wallet.history())[0]
        assert (latest.direction, latest.status) == ("out", "unconfirmed")


async def test_payments_written_ahead_together_get_an_outcome_each(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """A stream's payer writes a batch of payments ahead in one group commit: one whose coin was spent by an
    earlier one of the batch is refused alone (its reservation released), the others are written."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 10_000)
        q1 = await a.payments.request_quote(b.key, "file:one", 1_000)
        q2 = await a.payments.request_quote(b.key, "file:two", 1_000)
        _, first = await a.payments.prepare_payment(q1)
        a.wallet.release(first)  # a reservation forgotten: the next payment takes the same coin
        _, second = await a.payments.prepare_payment(q2)
        assert [c.outpoint for c in first.spends] == [c.outpoint for c in second.spends]

        def history(prepared: PreparedTx) -> HistoryRecord:
            return HistoryRecord(txid=prepared.txid, direction="out", kind="payment", amount=1_000)

        errors = await a.wallet.begin_many([(first, history(first)), (second, history(second))])
        assert errors[0] is None
        assert isinstance(errors[1], Conflict)
        assert "no longer spendable" in str(errors[1])
        written = {entry.txid for entry in await a.wallet.history()}
        assert first.txid in written
        assert second.txid not in written


async def test_the_payee_is_named_by_its_key_in_any_case_and_a_bad_key_changes_nothing(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """The payer finds its link to the payee by the key (parsed once per payee, upper-case hex taken as the
    same key); a key that is not one, or the payer's own, is refused before anything is asked or reserved."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 10_000)
        quote = await a.payments.request_quote(b.key.upper(), "file:upper", 1_000)
        assert quote.payee == b.key
        receipt = await a.payments.pay(quote)
        assert receipt.verify()
        assert receipt.payee == b.key
        balance = a.wallet.balance()
        for bad in ["zz" * 33, "04" + "00" * 32, b.key[:-2], b.key + "00", " " * 66]:
            with pytest.raises(BadRequest, match="public key"):
                await a.payments.request_quote(bad, "file:bad", 1_000)
        with pytest.raises(BadRequest, match="cannot pay itself"):
            await a.payments.request_quote(a.key.upper(), "file:self", 1_000)
        assert a.wallet.balance() == balance
        assert b.wallet.balance().satoshis == 1_000


async def test_a_receipt_asked_for_while_its_payment_is_checked_waits_for_the_outcome(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """``pay.receipt`` for a quote whose payment is being checked waits for it (the payee makes the event it waits on
    only then), answers the receipt once the payment is recorded, and a later ask waits afresh for a later payment."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, settlement=False)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url, settlement=False)
        await link(a, b)
        await a.fund(10_000)
        quote = await a.payments.request_quote(b.key, "file:held", 1_000)
        message, _ = await a.payments.prepare_payment(quote)
        held, release = trio.Event(), trio.Event()

        async def hold() -> None:
            held.set()
            await release.wait()

        outcomes: list[Receipt | OverlayError] = []
        answers: list[dict[str, Any]] = []

        async def accept() -> None:
            outcomes.extend(await b.payments.accept_payments(a.key, [(message, None)], before_commit=hold))

        async def ask() -> None:
            answers.append(await _link_to(a, b).request("pay.receipt", {"quote_id": quote.quote_id}))

        async with trio.open_nursery() as inner:
            inner.start_soon(accept)
            await held.wait()  # checked and signed, not yet recorded
            inner.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            assert answers == []  # waiting for the outcome, not answering "not found" (which would void the quote)
            release.set()
        (receipt,) = outcomes
        assert isinstance(receipt, Receipt)
        assert Receipt.from_wire(answers[0]["receipt"]) == receipt
        assert answers[0]["status"] == "accepted"
        # asked again once it is recorded: answered at once, and the quote is not void
        again = await _link_to(a, b).request("pay.receipt", {"quote_id": quote.quote_id})
        assert Receipt.from_wire(again["receipt"]) == receipt


async def test_single_payments_committed_together_share_one_signature_and_each_receipt_stands_alone(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """Two payers' single payments that one group commit records get receipts with one signature over the list of
    both bodies' digests (key id ``receipts``), each salted (no next quote), each verifying alone, each the one the
    payee stored (``pay.receipt``); the payers take them as they take any receipt."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, settlement=False)
        c = await start_paynode(nursery, tmp_path, "c", devnet.url, settlement=False)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url, settlement=False)
        for payer in (a, c):
            await link(payer, b)
            await payer.fund(10_000)
        quotes = {p.key: await p.payments.request_quote(b.key, f"file:{p.key[:8]}", 1_000) for p in (a, c)}
        prepared = {p.key: await p.payments.prepare_payment(quotes[p.key]) for p in (a, c)}
        messages = {key: message for key, (message, _tx) in prepared.items()}
        held, both_held, release = [0], trio.Event(), trio.Event()

        async def hold() -> None:  # each waits, checked, until both are: then both go to one group commit
            held[0] += 1
            if held[0] == 2:
                both_held.set()
            await release.wait()

        receipts: dict[str, Receipt | OverlayError] = {}

        async def accept(payer: str) -> None:
            (receipts[payer],) = await b.payments.accept_payments(payer, [(messages[payer], None)], before_commit=hold)

        async with trio.open_nursery() as inner:
            for payer in (a, c):
                inner.start_soon(accept, payer.key)
            await both_held.wait()
            for payer in (a, c):
                assert payer.key not in receipts  # nothing is answered before the commit
            release.set()
        ra, rc = receipts[a.key], receipts[c.key]
        assert isinstance(ra, Receipt)
        assert isinstance(rc, Receipt)
        assert ra.sig == rc.sig
        assert ra.batch == rc.batch
        assert len(ra.batch) == 2
        for payer, receipt in ((a, ra), (c, rc)):
            assert receipt.key_id == RECEIPTS_KEY_ID
            assert len(receipt.salt) == 16
            assert receipt.next_quote == b""
            assert receipt.matches(quotes[payer.key], prepared[payer.key][1].txid)
            alone = Receipt.from_wire(receipt.to_wire())  # as its payer gets it, with nothing of the other
            assert alone.verify()
            assert not dataclasses.replace(alone, salt=bytes(16)).verify()  # the salt is signed
            stored = await _link_to(payer, b).request("pay.receipt", {"quote_id": receipt.quote_id})
            assert Receipt.from_wire(stored["receipt"]) == receipt
        assert ra.salt != rc.salt
