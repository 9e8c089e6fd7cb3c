"""Store records for the tests of the schema: submissions that admit, index and spend, and received payments with
their coin, history and job (each distinct per ``n``)."""

from __future__ import annotations

from overlay_node.store.overlay import IndexWrite, SubmitWrite, TopicWrite
from overlay_node.store.payments import IncomingRecord
from overlay_node.store.records import NewJob, UtxoRecord
from overlay_node.store.wallet import HistoryRecord, TxRecord

SCRIPT = bytes.fromhex("76a914" + "22" * 20 + "88ac")


def txid(n: int) -> str:
    return f"{n:064x}"


def submission(n: int, *, spends: int | None = None) -> SubmitWrite:
    index = (
        IndexWrite(service="ls", vout=0, fields={"outpoint": [f"{txid(n)}.0"], "kind": ["coin", "token"]}),
        IndexWrite(service="ls_keep", vout=1, fields={"outpoint": [f"{txid(n)}.1"]}),
    )
    topic = TopicWrite(
        topic="tm",
        admit=((0, SCRIPT, 1000 + n), (1, SCRIPT, 1)),
        previous=() if spends is None else ((txid(spends), 0), (txid(spends), 1)),
        index=index,
        unindex_on_spend=("ls",),
    )
    return SubmitWrite(txid=txid(n), beef=b"beef-%d" % n, block_height=n, score=n, created_at=n, topics=(topic,))


def payment(n: int) -> IncomingRecord:
    tx = txid(1000 + n)
    return IncomingRecord(
        quote_id=f"quote-{n}",
        prefix=f"prefix-{n}",
        suffix="suffix",
        payer="02" + "cd" * 32,
        resource="stream:s",
        price=5,
        amount=5,
        txid=tx,
        receipt=b"receipt-%d" % n,
        accepted_at=50.0 + n,
        spends=((txid(2000 + n), 0),),
        txs=(TxRecord(txid=tx, raw=b"raw-%d" % n, parents=(txid(2000 + n),)),),
        utxo=UtxoRecord(
            txid=tx,
            vout=0,
            satoshis=5,
            script=SCRIPT,
            protocol="2-3241645161d8",
            key_id=f"key {n}",
            counterparty="02" + "cd" * 32,
            origin="payment",
        ),
        history=HistoryRecord(txid=tx, direction="in", kind="payment", amount=5, quote_id=f"quote-{n}"),
        job=NewJob(txid=tx, beef=b"beef", next_at=0.0),
    )
