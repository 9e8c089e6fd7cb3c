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

from .test_payments import LIMIT, funded_pair


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
