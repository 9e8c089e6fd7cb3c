"""Payments between daemons through the CLI, settled by the cluster's devnet, and a payee killed with SIGKILL."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from cluster import Cluster

pytestmark = pytest.mark.cluster


def ctl_json(cluster: Cluster, i: int, *args: str) -> dict[str, object]:
    out = cluster.ctl(i, "--json", "ctl", *args)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_payment_is_kept_and_settled_after_the_payee_is_killed(tmp_path: Path) -> None:
    # settlement held back on every node, so the payee is killed with the payment accepted but not yet settled
    with Cluster(2, root=tmp_path / "c", extra_args=["--set", "wallet.settle_delay=3600"]) as cluster:
        payer, payee = 0, 1
        payee_key = cluster.members[payee].identity_key
        ctl_json(cluster, payer, "wallet", "faucet", "50000")
        quote = ctl_json(cluster, payer, "quote", "--provider", payee_key, "--resource", "demo", "--amount", "1200")
        receipt = ctl_json(cluster, payer, "pay", "--quote-id", str(quote["quote_id"]))
        assert receipt["amount"] == 1200
        assert receipt["payee"] == payee_key
        txid = str(receipt["txid"])
        ledger = httpx.Client(base_url=cluster.ledger, timeout=10)
        assert ledger.get(f"/v1/tx/{txid}").status_code == 404  # accepted by the payee, unknown to the ledger

        cluster.kill(payee)
        cluster.restart(payee, extra_args=["--set", "wallet.settle_delay=0"])
        settled = ctl_json(cluster, payee, "wallet", "settlement-wait", txid)
        assert settled["state"] in ("seen", "mined"), settled
        assert ledger.get(f"/v1/tx/{txid}").json()["txStatus"] in ("SEEN_ON_NETWORK", "MINED", "STORED", "RECEIVED")

        # after a block both wallets agree with the payment, and the payee can spend what it received
        ledger.post("/v1/mine").raise_for_status()
        history = json.loads(cluster.ctl(payee, "--json", "ctl", "wallet", "history").stdout)
        assert any(e.get("txid") == txid for e in history), history
        assert ctl_json(cluster, payee, "wallet", "balance")["satoshis"] == 1200
        spent = 50_000 - int(ctl_json(cluster, payer, "wallet", "balance")["satoshis"])  # type: ignore[call-overload]
        assert 1200 < spent <= 1200 + 100, spent  # the payment plus a small fee
        payer_key = cluster.members[payer].identity_key
        back = ctl_json(cluster, payee, "quote", "--provider", payer_key, "--resource", "refund", "--amount", "300")
        refund = ctl_json(cluster, payee, "pay", "--quote-id", str(back["quote_id"]))
        assert refund["amount"] == 300
