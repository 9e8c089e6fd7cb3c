"""The wallet on a real SQLite file against a real devnet over HTTP: faucet, balances, history, restarts,
reservations, proven coins and small BEEF, unanswered payments; the control routes and the CLI commands over
a real unix socket."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import typer
from starlette.applications import Starlette
from typer.testing import CliRunner, Result

from overlay_cli import wallet_cmd
from overlay_cli.output import CliState
from overlay_node.api.common import HTTP_EXCEPTION_HANDLERS, serve
from overlay_node.api.control_wallet import wallet_routes
from overlay_node.chain.formats import parse_submission
from overlay_node.crypto.keys import Identity
from overlay_node.errors import InsufficientFunds, PeerTimeout
from overlay_node.net.listen import bind_unix, serve_app
from overlay_node.net.peers import PeerLink
from overlay_node.services.payments import Payments
from overlay_node.services.wallet import Wallet
from overlay_node.store import engine
from overlay_node.store.wallet import HistoryRecord

from .test_payments import (
    LIMIT,
    DevnetFactory,
    PayNode,
    funded_pair,
    link,
    start_devnet,
    start_paynode,
    wallet_config,
)

__all__ = ["start_devnet"]  # a fixture, imported to be used here


async def test_faucet_balance_history_and_restart(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        ident = Identity.generate()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, identity=ident)
        assert a.wallet.balance().as_json() == {
            "satoshis": 0,
            "confirmed": 0,
            "unconfirmed": 0,
            "reserved": 0,
            "coins": 0,
        }
        receive = a.wallet.receive()
        assert receive["identity_key"] == a.key
        assert receive["address"].startswith("1")
        await a.fund(3_000)
        await a.fund(4_000)
        assert a.wallet.balance().unconfirmed == 7_000
        assert a.wallet.balance().confirmed == 0
        await devnet.mine()
        await a.settle_all()
        assert a.wallet.balance().confirmed == 7_000
        history = await a.wallet.history()
        assert [(h.direction, h.kind, h.amount, h.status) for h in history] == [
            ("in", "faucet", 4_000, "confirmed"),
            ("in", "faucet", 3_000, "confirmed"),
        ]
        # the coins and their proofs come back from the database
        await a.stop()
        again = await start_paynode(nursery, tmp_path, "a", devnet.url, identity=ident)
        assert again.wallet.balance().confirmed == 7_000
        assert again.wallet.balance().coins == 2


async def test_reserved_coins_are_never_picked_twice(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        # no waiting for the change of the payments prepared here (test_wallet_resilience.py covers that)
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, config=wallet_config(change_wait=0))
        b = await start_paynode(nursery, tmp_path, "b", devnet.url)
        await link(a, b)
        await a.fund(5_000)
        await a.fund(5_000)
        script = bytes.fromhex(b.wallet.receive()["locking_script"])
        first = await a.wallet.prepare([(script, 3_000)], recipient=None)
        second = await a.wallet.prepare([(script, 3_000)], recipient=None)
        assert {c.outpoint for c in first.spends}.isdisjoint(c.outpoint for c in second.spends)
        assert a.wallet.balance().reserved == 10_000
        assert a.wallet.balance().satoshis == 0
        with pytest.raises(InsufficientFunds, match="0 spendable satoshis"):
            await a.wallet.prepare([(script, 1)], recipient=None)
        a.wallet.release(first)
        a.wallet.release(second)
        assert a.wallet.balance().satoshis == 10_000

        # two payments at once: each gets its own coin and both go through
        quotes = [await a.payments.request_quote(b.key, f"file:{i}", 3_000) for i in range(2)]
        receipts = []

        async def pay(i: int) -> None:
            receipts.append(await a.payments.pay(quotes[i]))

        async with trio.open_nursery() as inner:
            inner.start_soon(pay, 0)
            inner.start_soon(pay, 1)
        assert len({r.txid for r in receipts}) == 2
        assert b.wallet.balance().satoshis == 6_000
        assert a.wallet.balance().satoshis == 10_000 - 6_000 - sum(
            h.fee for h in await a.wallet.history() if h.direction == "out"
        )


async def test_proven_coins_make_small_beef(tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url)
        await link(a, b)
        await a.fund(8_000)
        quote = await a.payments.request_quote(b.key, "file:big", 1_000)
        receipt = await a.payments.pay(quote)
        # the payee broadcasts at once; the payer's copy is due a poll interval later: settle_all sends it now
        await b.settlement.wait_for(receipt.txid, "seen")
        await devnet.mine()
        await a.wallet.flush()
        await a.settle_all()
        assert (await a.settlement.wait_for(receipt.txid, "mined")).attempts == 0
        assert a.wallet.balance().confirmed > 0
        # the change is proven now: a BEEF for a new recipient holds the payment and its parent with a merkle
        # path, nothing older
        script = bytes.fromhex(b.wallet.receive()["locking_script"])
        fresh = await a.wallet.prepare([(script, 1_000)], recipient=None)
        parsed = parse_submission(fresh.beef)
        assert [t.txid for t in parsed.txs][-1] == fresh.txid
        assert len(parsed.txs) == 2
        assert parsed.txs[0].bump is not None
        assert not parsed.txid_only
        a.wallet.release(fresh)
        # and B, which got that parent in the first payment, gets it as a txid-only entry
        quote = await a.payments.request_quote(b.key, "file:next", 1_000)
        message, prepared = await a.payments.prepare_payment(quote)
        parsed = parse_submission(message.transaction)
        assert len(parsed.txs) == 1
        assert parsed.txid_only == {receipt.txid}
        await a.payments.send_payment(a.peers.link(b.key), message, prepared)  # type: ignore[arg-type]
        assert b.wallet.balance().satoshis == 2_000


async def test_unanswered_payment_is_watched_then_abandoned(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """The payee takes the payment and never answers: the payer commits it as ``unknown`` and watches the
    ledger; ARC never sees it, so at the deadline the coins come back."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        cfg = wallet_config(settle_poll_interval=0.05, unanswered_timeout=0.3)
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, config=cfg, request_timeout=0.3)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url)
        await link(a, b)
        swallowed = trio.Event()

        async def black_hole(_link: PeerLink, _body: dict[str, Any]) -> dict[str, Any]:
            swallowed.set()
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        b.peers.on_request("pay.submit", black_hole)
        await a.fund(6_000)
        quote = await a.payments.request_quote(b.key, "file:void", 2_000)
        with pytest.raises(PeerTimeout):
            await a.payments.pay(quote)
        assert swallowed.is_set()
        history = await a.wallet.history()
        assert history[0].status == "unknown"
        assert a.wallet.balance().satoshis < 6_000  # spent, as far as the wallet can tell
        job = await a.settlement.wait_for(history[0].txid, "abandoned")
        assert job.kind == "watch"
        assert a.wallet.balance().satoshis == 6_000
        assert (await a.wallet.history())[0].status == "abandoned"


async def test_a_payments_outcome_rides_with_the_next_write_ahead(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory, virtual_clock: trio.testing.MockClock
) -> None:
    """The payer records what became of a payment (history, change, its job) in the transaction that writes the
    next payment ahead, one write for both, instead of a write of its own; alone, it is written after a short
    linger, at once when flushed."""
    devnet = await start_devnet()
    a, b = await funded_pair(nursery, tmp_path, devnet.url, 50_000)
    virtual_clock.rate = 0  # trio time stands still now: the linger ends only when the test moves it
    try:

        async def recorded(txid: str) -> tuple[str, str]:
            # a few turns of the event loop (a background writer of the outcome would queue its write), then an
            # ordinary write: one queued before it has committed by then
            for _ in range(5):
                await trio.lowlevel.checkpoint()
            await a.store.wallet.keep_txs([], now=0.0)
            (entry,) = await a.store.wallet.history_for(txid)
            job = await a.store.settlement.get(txid)
            assert job is not None
            return entry.status, job.kind

        first = await a.payments.pay(await a.payments.request_quote(b.key, "file:1", 1_000))
        assert await recorded(first.txid) == ("sending", "watch")  # lingering
        second = await a.payments.pay(await a.payments.request_quote(b.key, "file:2", 1_000))
        # the second payment's write-ahead took the first one's outcome along
        assert await recorded(first.txid) == ("unconfirmed", "submit")
        assert await recorded(second.txid) == ("sending", "watch")
        virtual_clock.jump(1.0)  # past the linger: the outcome is written on its own
        await a.wallet.flush()
        assert await recorded(second.txid) == ("unconfirmed", "submit")
        assert [h.status for h in await a.wallet.history()][:2] == ["unconfirmed", "unconfirmed"]
    finally:
        virtual_clock.rate = 1.0  # for the teardown


async def test_a_lone_write_ahead_is_written_on_the_event_loop_thread(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payer's lone write-ahead is written without the hand-off to the store's writer thread and back
    (``store/engine.py`` invariant 8); payments written ahead together go through the group commit."""
    monkeypatch.setattr(engine, "INLINE_COMMIT_LIMIT", 60.0)  # no commit here counts as slow
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        # no settlement task: nothing else of the payer's writes while it pays (its outcomes are flushed between)
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, settlement=False)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url)
        await link(a, b)
        await a.fund(50_000)
        await a.fund(10_000)  # a second coin, for the two at once below
        db = a.store._db
        before = db.inline_writes
        receipts = []
        for i in range(3):
            receipts.append(await a.payments.pay(await a.payments.request_quote(b.key, f"file:{i}", 1_000)))
            await a.wallet.flush()
        assert db.inline_writes - before == 3
        statuses = {h.txid: h.status for h in await a.wallet.history()}
        assert [statuses[r.txid] for r in receipts] == ["unconfirmed"] * 3
        # two at once: one transaction of the group commit, in the writer thread
        balance = a.wallet.balance().satoshis
        prepared = [
            (await a.payments.prepare_payment(await a.payments.request_quote(b.key, f"file:x{i}", 1_000)))[1]
            for i in range(2)
        ]
        before = db.inline_writes
        history = [HistoryRecord(txid=p.txid, direction="out", kind="payment", amount=p.amount) for p in prepared]
        assert await a.wallet.begin_many(list(zip(prepared, history, strict=True))) == [None, None]
        assert db.inline_writes == before
        statuses = {h.txid: h.status for h in await a.wallet.history()}
        assert [statuses[p.txid] for p in prepared] == ["sending", "sending"]
        for p in prepared:
            await a.wallet.abort(p)
        assert a.wallet.balance().satoshis == balance


async def test_a_payees_batch_is_recorded_on_the_event_loop_thread_when_the_writer_is_idle(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The payee's durable record of a batch of payments is written inline (``store/engine.py`` invariant 8) when
    the writer thread has nothing else: one payment at a time, each its own batch, each inline."""
    monkeypatch.setattr(engine, "INLINE_COMMIT_LIMIT", 60.0)  # no commit here counts as slow
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url, settlement=False)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url, settlement=False)
        await link(a, b)
        await a.fund(50_000)
        db = b.store._db
        before = db.inline_writes
        receipts = [await a.payments.pay(await a.payments.request_quote(b.key, f"file:{i}", 1_000)) for i in range(3)]
        assert db.inline_writes - before == 3
        recorded = {p.txid for p in await b.store.payments.recent()}
        assert {r.txid for r in receipts} <= recorded


async def test_the_payers_copies_come_due_together(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """The payer's own copy of each payment the payee took goes to ARC a poll interval later, at a whole step of
    it: the copies of the payments of one step come due at one moment and go in one request."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 50_000)
        poll = a.wallet._config.settle_poll_interval
        step = poll / 5  # above settle_linger here
        receipts = []
        for i in range(3):
            before = time.time()
            receipts.append(await a.payments.pay(await a.payments.request_quote(b.key, f"file:{i}", 1_000)))
            after = time.time()
            await a.wallet.flush()
            job = await a.store.settlement.get(receipts[-1].txid)
            assert job is not None
            assert job.kind == "submit"
            assert before + poll <= job.next_at < after + poll + step
            assert job.next_at / step == pytest.approx(round(job.next_at / step), abs=1e-6)


# -- control routes and CLI ----------------------------------------------------------------------------------


@dataclass
class _Target:
    wallet: Wallet
    payments: Payments


def _cli() -> typer.Typer:
    """The CLI as the lead mounts it: ``ctl wallet ...``, ``ctl quote``, ``ctl pay``."""
    root = typer.Typer()

    @root.callback()
    def main(ctx: typer.Context, data_dir: str = typer.Option(..., "--data-dir")) -> None:
        ctx.obj = CliState(data_dir=data_dir)

    ctl = typer.Typer()
    ctl.add_typer(wallet_cmd.app, name="wallet")
    ctl.command()(wallet_cmd.quote)
    ctl.command()(wallet_cmd.pay)
    root.add_typer(ctl, name="ctl")
    return root


async def _serve_control(nursery: trio.Nursery, node: PayNode, data_dir: Path) -> None:
    app = serve(
        Starlette(routes=wallet_routes(), exception_handlers=HTTP_EXCEPTION_HANDLERS),
        _Target(node.wallet, node.payments),
    )
    sock = bind_unix(_data_dir_with_api_json(data_dir))
    stop = trio.Event()
    await nursery.start(functools.partial(serve_app, app, sock, shutdown_trigger=stop.wait, graceful_timeout=0.2))


def _data_dir_with_api_json(data_dir: Path) -> Path:
    """Make a data dir whose api.json names the control socket, as the daemon does; returns the socket."""
    data_dir.mkdir()
    sock_path = data_dir / "control.sock"
    (data_dir / "api.json").write_text(json.dumps({"control": str(sock_path)}))
    return sock_path


async def test_cli_wallet_quote_and_pay(tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url)
        await link(a, b)
        data_dir = tmp_path / "ctl"
        await _serve_control(nursery, a, data_dir)
        cli = _cli()
        runner = CliRunner()

        async def run(*args: str) -> Result:
            return await trio.to_thread.run_sync(
                lambda: runner.invoke(cli, ["--data-dir", str(data_dir), "ctl", *args])
            )

        def as_json(result: Result) -> Any:
            assert result.exit_code == 0, result.output
            return json.loads(result.stdout)

        assert as_json(await run("wallet", "balance", "--json"))["satoshis"] == 0
        funded = as_json(await run("wallet", "faucet", "9000", "--json"))
        assert funded["satoshis"] == 9_000
        assert funded["balance"]["satoshis"] == 9_000
        assert as_json(await run("wallet", "receive", "--json"))["identity_key"] == a.key
        quote = as_json(await run("quote", "--provider", b.key, "--resource", "file:cli", "--amount", "700", "--json"))
        assert quote["amount"] == 700
        assert quote["payee"] == b.key
        receipt = as_json(await run("pay", "--quote-id", quote["quote_id"], "--json"))
        assert receipt["amount"] == 700
        assert receipt["quote_id"] == quote["quote_id"]
        history = as_json(await run("wallet", "history", "--json"))
        assert [(h["direction"], h["amount"], h["status"]) for h in history] == [
            ("out", 700, "unconfirmed"),
            ("in", 9_000, "unconfirmed"),
        ]
        assert history[0]["txid"] == receipt["txid"]
        # people get tables and aligned fields
        human = await run("wallet", "balance")
        assert human.exit_code == 0
        assert "spendable" in human.stdout
        listing = await run("wallet", "history")
        assert listing.exit_code == 0
        assert "payment" in listing.stdout
        # a clear one-line error, a non-zero exit code and no balance change
        again = await run("pay", "--quote-id", quote["quote_id"])
        assert again.exit_code != 0
        unknown = await run("pay", "--quote-id", "0" * 32)
        assert unknown.exit_code != 0
        assert "request a new quote" in unknown.output
        bad = await run("wallet", "faucet", "0")
        assert bad.exit_code != 0
        assert b.wallet.balance().satoshis == 700
