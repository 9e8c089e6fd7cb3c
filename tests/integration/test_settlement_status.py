"""How the settlement queue asks ARC about transactions ARC holds already: small BEEFs are submitted again, many in one
``POST /v1/txs`` (ARC answers a known transaction with its status), a large one (a faucet payout's, which carries the
devnet's thousand-output split transaction) with a status query, so that ARC does not parse it all again for a
status. Real nodes and a real devnet ledger (``test_payments.py``'s harness); the requests are seen through the ARC
client's own httpx event hooks.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from overlay_node.devnet import DevnetInfo, DevnetSettings, run_devnet
from overlay_node.services.arc import ArcOutcome

from .test_payments import LIMIT, DevnetFactory, PayNode, funded_pair, link, start_devnet, start_paynode

__all__ = ["start_devnet"]  # a fixture, imported to be used here


async def test_a_large_beef_arc_holds_is_asked_about_and_a_small_one_resubmitted(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(LIMIT):
        # the faucet's coins come from a split of 300 outputs (the devnet's default is 1,000): about 10 KB
        settings = DevnetSettings(data_dir=tmp_path / "devnet", port=0, block_interval=0, pool_outputs=300)
        stop = trio.Event()
        devnet: DevnetInfo = await nursery.start(
            lambda task_status: run_devnet(settings, shutdown=stop, task_status=task_status)
        )
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 100_000)
        (deposit,) = [h.txid for h in await a.wallet.history() if h.kind == "faucet"]
        quote = await a.payments.request_quote(b.key, "file:x", 1_000)
        receipt = await a.payments.pay(quote)
        await a.wallet.flush()
        # A's deposit: seen already, its BEEF the payout with the devnet's 300-output split transaction; B's job
        # of A's first payment carries the same ancestry (B held none of it), submitted at once; A's copy of it is
        # small (its queue holds the payout: named by txid only)
        big = [await a.store.settlement.get(deposit), await b.settlement.wait_for(receipt.txid, "seen")]
        copy = await a.store.settlement.get(receipt.txid)
        assert all(job is not None and job.state == "seen" and len(job.beef) > 8_000 for job in big)
        assert copy is not None
        assert (copy.kind, copy.state) == ("submit", "pending")
        assert len(copy.beef) < 1_000

        await a.wallet.arc.mine()
        sent: dict[str, list[tuple[str, str, int]]] = {"a": [], "b": []}
        for node in (a, b):

            async def hook(request: httpx.Request, name: str = node.name) -> None:
                sent[name].append((request.method, request.url.path, len(request.content)))

            node.wallet.arc._http.event_hooks["request"].append(hook)
        for node in (a, b):
            await node.settle_all()
        for node, txid in ((a, deposit), (a, receipt.txid), (b, receipt.txid)):
            assert (await node.settlement.wait_for(txid, "mined")).state == "mined"
        # the large ones asked about, the small one submitted again
        assert sorted(sent["a"]) == [("GET", f"/v1/tx/{deposit}", 0), ("POST", "/v1/tx", len(copy.beef))]
        assert sent["b"] == [("GET", f"/v1/tx/{receipt.txid}", 0)]
        assert a.wallet.balance().unconfirmed == 0
        assert b.wallet.balance().confirmed == 1_000
        stop.set()


def _requests(node: PayNode, sent: list[tuple[str, str, int]]) -> None:
    """Note every request ``node``'s ARC client makes: method, path and body length."""

    async def hook(request: httpx.Request) -> None:
        sent.append((request.method, request.url.path, len(request.content)))

    node.wallet.arc._http.event_hooks["request"].append(hook)


async def test_a_run_of_payments_is_settled_by_the_copy_of_its_last(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """A payer whose payments spend each other's change sends one copy for the run: ARC's answer about the last one,
    mined, settles the earlier ones (and the faucet payout they all come from), and the wallet goes on paying anyone
    with BEEFs that stop at the proven last one."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 50_000)
        c = await start_paynode(nursery, tmp_path, "c", devnet.url)
        await link(a, c)
        receipts = [await a.payments.pay(await a.payments.request_quote(b.key, f"file:{i}", 1_000)) for i in range(3)]
        await a.wallet.flush()
        for r in receipts:  # the payee broadcast each at once
            await b.settlement.wait_for(r.txid, "seen")
        await devnet.mine()
        (deposit,) = [h.txid for h in await a.wallet.history() if h.kind == "faucet"]
        last = await a.store.settlement.get(receipts[-1].txid)
        assert last is not None
        assert last.state == "pending"
        sent: list[tuple[str, str, int]] = []
        _requests(a, sent)
        await a.settle_all()
        assert sent == [("POST", "/v1/tx", len(last.beef))]  # one copy, of the last payment
        for txid in (deposit, *(r.txid for r in receipts)):
            assert (await a.settlement.wait_for(txid, "mined")).state == "mined"
        txs = await a.store.wallet.txs([deposit, *(r.txid for r in receipts)])
        assert txs[receipts[-1].txid].merkle_path is not None  # the last one's own proof
        assert [txs[t].merkle_path for t in (deposit, receipts[0].txid, receipts[1].txid)] == [None, None, None]
        spent = 50_000 - a.wallet.balance().satoshis
        assert a.wallet.balance().unconfirmed == 0
        assert [h.status for h in await a.wallet.history()] == ["confirmed"] * 4

        # a payee that holds none of it takes the next payment: its BEEF ends at the proven last one
        sent.clear()
        receipt = await a.payments.pay(await a.payments.request_quote(c.key, "file:c", 2_000))
        assert c.wallet.balance().satoshis == 2_000
        await c.settlement.wait_for(receipt.txid, "seen")
        assert a.wallet.balance().satoshis < 50_000 - spent - 2_000


async def test_a_run_whose_last_copy_is_refused_goes_one_by_one(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    """A payee that never broadcast the run (its settlement is not running): the copy of the last payment names the
    earlier ones by txid only and ARC does not know them. Nothing is failed: the next batch sends each on its own, in
    order, and ARC takes them all."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url)
        b = await start_paynode(nursery, tmp_path, "b", devnet.url, settlement=False)
        await link(a, b)
        await a.fund(50_000)
        receipts = [await a.payments.pay(await a.payments.request_quote(b.key, f"file:{i}", 1_000)) for i in range(3)]
        await a.wallet.flush()
        balance = a.wallet.balance().satoshis
        sent: list[tuple[str, str, int]] = []
        _requests(a, sent)
        await a.settle_all()
        # the deposit and the first two stood for by the last, which ARC refused for want of its parent
        assert [(m, p) for m, p, _ in sent] == [("POST", "/v1/tx")]
        jobs = [await a.store.settlement.get(r.txid) for r in receipts]
        assert [(j.state, j.attempts) for j in jobs if j is not None] == [("pending", 1)] * 3
        sent.clear()
        await a.settle_all()
        assert [(m, p) for m, p, _ in sent] == [("POST", "/v1/txs")]  # each on its own, in one request
        for r in receipts:
            assert (await a.settlement.wait_for(r.txid, "seen")).state == "seen"
        assert a.wallet.balance().satoshis == balance  # no coin lost or given back
        assert (await devnet.client.status(receipts[-1].txid)).outcome is ArcOutcome.SEEN
