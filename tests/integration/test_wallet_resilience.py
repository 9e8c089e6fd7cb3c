"""The wallet after restarts and under concurrent payments, against a real devnet over HTTP, real peer links and
real SQLite files: every coin it considers spendable can be paid with after a restart (its BEEF can be built, from
the ledger when an ancestor is gone from the database), and several payments at once share one coin by waiting for
each other's change."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from overlay_node.crypto.keys import Identity
from overlay_node.errors import InsufficientFunds
from overlay_node.protocol.payments import Receipt

from .test_payments import LIMIT, DevnetFactory, PayNode, link, start_devnet, start_paynode, wallet_config

__all__ = ["start_devnet"]  # a fixture, imported to be used here


async def _pay(a: PayNode, b: PayNode, resource: str, amount: int, *, change_parts: int = 1) -> Receipt:
    quote = await a.payments.request_quote(b.key, resource, amount)
    message, prepared = await a.payments.prepare_payment(quote, change_parts=change_parts)
    link_ = a.peers.link(b.key)
    assert link_ is not None
    return await a.payments.send_payment(link_, message, prepared)


async def test_restarted_payer_pays_with_every_coin_of_a_transaction_the_payee_holds(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """Two coins of one transaction: after a restart the first payment sends that transaction whole (the payee
    now holds it); the second names it by txid to the payee, and its settlement BEEF still needs it whole."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        ident = Identity.generate()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, identity=ident)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url)
        await link(a, b)
        await a.fund(20_000)
        split = await _pay(a, b, "file:split", 100, change_parts=2)
        await a.wallet.flush()
        assert sorted(c.txid for c in a.wallet.coins()) == [split.txid, split.txid]
        await a.stop()

        a2 = await start_paynode(nursery, tmp_path, "a", devnet.url, identity=ident)
        await link(a2, b)
        assert a2.wallet.balance().coins == 2
        # the first takes most of one coin, so that the second takes the other coin of that transaction
        receipts = [await _pay(a2, b, f"file:after-restart-{i}", amount) for i, amount in enumerate((9_000, 1_000))]
        for receipt in receipts:
            await b.settlement.wait_for(receipt.txid, "seen")
        await a2.settle_all()
        for receipt in receipts:
            assert (await a2.settlement.wait_for(receipt.txid, "seen")).state in ("seen", "mined")
        assert b.wallet.balance().satoshis == 10_100
        assert all(c.txid != split.txid for c in a2.wallet.coins())


async def test_an_ancestor_gone_from_the_database_is_fetched_from_the_ledger(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """A spendable coin whose unproven ancestor the wallet no longer holds: the payment builds its BEEF from the
    ledger's copy of the ancestry (and keeps it) instead of failing forever."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        ident = Identity.generate()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, identity=ident)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url)
        await link(a, b)
        funded = await a.wallet.faucet(20_000)
        first = await _pay(a, b, "file:first", 100)
        await a.wallet.flush()
        await a.stop()
        with sqlite3.connect(a.db_path) as conn:  # the faucet payout (unmined) is lost from the wallet
            assert conn.execute("DELETE FROM wallet_txs WHERE txid = ?", (funded["txid"],)).rowcount == 1

        a2 = await start_paynode(nursery, tmp_path, "a", devnet.url, identity=ident)
        await link(a2, b)
        receipt = await _pay(a2, b, "file:second", 100)
        await b.settlement.wait_for(receipt.txid, "seen")
        assert b.wallet.balance().satoshis == 200
        kept = await a2.store.wallet.txs([funded["txid"], first.txid])
        assert set(kept) == {funded["txid"], first.txid}


async def test_an_ancestor_gone_behind_a_mined_transaction_is_not_needed(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """The same loss, but the coin's transaction is mined by now and the wallet has not heard (its settlement queue
    not running): the ledger's merkle path of that transaction ends the ancestry, the lost one is not fetched."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        ident = Identity.generate()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, identity=ident, settlement=False)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url)
        await link(a, b)
        funded = await a.wallet.faucet(20_000)
        first = await _pay(a, b, "file:first", 100)
        await a.wallet.flush()
        await b.settlement.wait_for(first.txid, "seen")  # the payee broadcast it
        await devnet.mine()
        await a.stop()
        with sqlite3.connect(a.db_path) as conn:
            assert conn.execute("DELETE FROM wallet_txs WHERE txid = ?", (funded["txid"],)).rowcount == 1

        a2 = await start_paynode(nursery, tmp_path, "a", devnet.url, identity=ident, settlement=False)
        await link(a2, b)
        receipt = await _pay(a2, b, "file:second", 100)
        await b.settlement.wait_for(receipt.txid, "seen")
        kept = await a2.store.wallet.txs([funded["txid"], first.txid])
        assert set(kept) == {first.txid}
        assert kept[first.txid].merkle_path is not None


async def test_a_task_does_not_wait_for_the_change_of_a_payment_it_has_not_sent(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """A stream's payer prepares a batch and sends it after: the next payment of the batch must not wait for the
    change of one before it (that waits on this very task), it fails at once and the batch goes as it is."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        cfg = dataclasses.replace(wallet_config(), change_wait=LIMIT * 10)
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, config=cfg)
        await a.fund(10_000)
        script = bytes.fromhex(a.wallet.receive()["locking_script"])
        first = await a.wallet.prepare([(script, 1_000)], recipient=None)
        started = trio.current_time()
        with pytest.raises(InsufficientFunds, match="the wallet has 0 spendable satoshis"):
            await a.wallet.prepare([(script, 1_000)], recipient=None)
        assert trio.current_time() - started < 1
        a.wallet.release(first)


async def test_two_tasks_never_wait_for_each_other(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """Two payers, each with a payment prepared and not sent, each wanting one more: the first waits for the other's
    change; the other must not wait for the first's (which waits on it), it fails at once and goes on."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        cfg = dataclasses.replace(wallet_config(), change_wait=LIMIT * 10)
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, config=cfg)
        await a.fund(5_000)
        await a.fund(5_000)
        script = bytes.fromhex(a.wallet.receive()["locking_script"])
        b_first_ready, a_waits, b_done = trio.Event(), trio.Event(), trio.Event()
        outcome: dict[str, object] = {}

        async def payer_a() -> None:
            first = await a.wallet.prepare([(script, 3_000)], recipient=None)
            await b_first_ready.wait()
            a_waits.set()
            second = await a.wallet.prepare([(script, 1_000)], recipient=None)  # waits for b's change
            outcome["a"] = second.spends[0].txid
            a.wallet.release(second)
            a.wallet.release(first)

        async def payer_b() -> None:
            first = await a.wallet.prepare([(script, 3_000)], recipient=None)
            b_first_ready.set()
            await a_waits.wait()
            await trio.testing.wait_all_tasks_blocked()  # a is waiting for change now
            started = trio.current_time()
            with pytest.raises(InsufficientFunds):
                await a.wallet.prepare([(script, 1_000)], recipient=None)
            outcome["b waited"] = trio.current_time() - started
            a.wallet.release(first)  # its coin comes back: a goes on with it
            b_done.set()

        async with trio.open_nursery() as inner:
            inner.start_soon(payer_a)
            inner.start_soon(payer_b)
        assert b_done.is_set()
        assert isinstance(outcome["b waited"], float)
        assert outcome["b waited"] < 1
        assert a.wallet.balance().satoshis == 10_000


async def test_one_coin_pays_several_payments_at_once(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """One coin, four payments at once: each waits for the change of the one before instead of failing."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url)
        await link(a, b)
        await a.fund(10_000)
        receipts: list[Receipt] = []

        async def pay(i: int) -> None:
            receipts.append(await _pay(a, b, f"file:at-once-{i}", 1_000))

        async with trio.open_nursery() as inner:
            for i in range(4):
                inner.start_soon(pay, i)
        assert len({r.txid for r in receipts}) == 4
        assert b.wallet.balance().satoshis == 4_000
        fees = sum(h.fee for h in await a.wallet.history() if h.direction == "out")
        assert a.wallet.balance().satoshis == 10_000 - 4_000 - fees


async def test_a_payment_the_change_on_its_way_cannot_cover_fails_at_once(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """With a payment in flight, one that even its change could not cover is refused at once (no waiting)."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        cfg = dataclasses.replace(wallet_config(), change_wait=LIMIT * 10)
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, config=cfg)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url)
        await link(a, b)
        await a.fund(10_000)
        script = bytes.fromhex(b.wallet.receive()["locking_script"])
        in_flight = await a.wallet.prepare([(script, 3_000)], recipient=None)
        started = trio.current_time()
        with pytest.raises(InsufficientFunds, match="the wallet has 0 spendable satoshis"):
            await a.wallet.prepare([(script, 8_000)], recipient=None)
        assert trio.current_time() - started < 1
        # one the change covers waits for it, and goes once the coins come back
        async with trio.open_nursery() as inner:
            done = trio.Event()

            async def second() -> None:
                prepared = await a.wallet.prepare([(script, 5_000)], recipient=None)
                a.wallet.release(prepared)
                done.set()

            inner.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            a.wallet.release(in_flight)
            await done.wait()
        assert a.wallet.balance().satoshis == 10_000
