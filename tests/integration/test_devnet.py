"""The devnet ledger over real HTTP on 127.0.0.1 with real bsv-sdk transactions and a real SQLite file.

Also holds the helpers the ARC client tests share (``start_devnet``, ``p2pkh_spend``, ``ledger_snapshot``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from bsv.keys import PrivateKey
from bsv.merkle_path import MerklePath
from bsv.script.type import P2PKH
from bsv.transaction import Transaction, TransactionInput, TransactionOutput

from overlay_node.chain.blocks import BlockHeader
from overlay_node.chain.formats import encode_beef_v1
from overlay_node.config import StoreSection
from overlay_node.devnet import DevnetInfo, DevnetSettings, Policy, run_devnet
from overlay_node.devnet.chain import GENESIS_SUPPLY
from overlay_node.devnet.ledger import Ledger
from overlay_node.devnet.runner import LEDGER_DB
from overlay_node.store.ledger import LedgerCounts, open_ledger_store

MAX_BODY = 256 * 1024


@dataclass
class Devnet:
    """A running devnet in the test's nursery."""

    info: DevnetInfo
    stop: trio.Event
    stopped: trio.Event

    @property
    def db(self) -> Path:
        return self.info.data_dir / LEDGER_DB


DevnetFactory = Callable[..., Awaitable[Devnet]]


def devnet_settings(data_dir: Path, **overrides: Any) -> DevnetSettings:
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "port": 0,
        "block_interval": 0,
        "pool_outputs": 8,
        "max_body": MAX_BODY,
        "graceful_timeout": 1.0,
    }
    base.update(overrides)
    return DevnetSettings(**base)


@pytest.fixture
async def start_devnet(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[DevnetFactory]:
    """``devnet = await start_devnet(**settings_overrides)``; stopped at the end of the test."""
    running: list[Devnet] = []

    async def factory(name: str = "devnet", **overrides: Any) -> Devnet:
        stop, stopped = trio.Event(), trio.Event()

        async def run(*, task_status: trio.TaskStatus[DevnetInfo] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                settings = devnet_settings(tmp_path / name, **overrides)
                await run_devnet(settings, shutdown=stop, task_status=task_status)
            finally:
                stopped.set()

        info = await nursery.start(run)
        devnet = Devnet(info=info, stop=stop, stopped=stopped)
        running.append(devnet)
        return devnet

    yield factory
    with trio.fail_after(10):
        for devnet in running:
            devnet.stop.set()
            await devnet.stopped.wait()


@dataclass(frozen=True)
class Snapshot:
    utxos: frozenset[tuple[str, int, int]]
    counts: LedgerCounts


async def ledger_snapshot(db: Path) -> Snapshot:
    """The UTXO set and sizes, read through a second connection to the running devnet's database."""
    async with open_ledger_store(db, StoreSection()) as repo:
        return Snapshot(utxos=await repo.utxo_set(), counts=await repo.counts())


def p2pkh_spend(
    source: Transaction,
    vout: int,
    key: PrivateKey,
    outputs: Sequence[tuple[int, str]],
    *,
    sign: bool = True,
) -> Transaction:
    """A transaction spending output ``vout`` of ``source`` (locked to ``key``) to ``(satoshis, address)``."""
    tx_in = TransactionInput(
        source_transaction=source, source_output_index=vout, unlocking_script_template=P2PKH().unlock(key)
    )
    tx = Transaction([tx_in], [TransactionOutput(P2PKH().lock(addr), sats) for sats, addr in outputs])
    if sign:
        tx.sign()
    return tx


async def fund(client: httpx.AsyncClient, key: PrivateKey, satoshis: int = 100_000) -> Transaction:
    """Have the faucet pay ``satoshis`` to ``key``; the payout (output 0) with its ancestors linked."""
    answer = await client.post("/v1/faucet", json={"address": key.address(), "satoshis": satoshis})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    tx = Transaction.from_beef(bytes.fromhex(data["beef"]))
    assert tx.txid() == data["txid"]
    assert data["vout"] == 0
    assert tx.outputs[0].satoshis == satoshis
    return tx


async def post_tx(client: httpx.AsyncClient, tx: Transaction | bytes) -> httpx.Response:
    raw = tx if isinstance(tx, bytes) else tx.serialize()
    return await client.post("/v1/tx", content=raw, headers={"Content-Type": "application/octet-stream"})


def http(devnet: Devnet) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=devnet.info.url, timeout=10)


# -- tests ------------------------------------------------------------------------------------------------


async def test_faucet_spend_mine_and_prove(start_devnet: DevnetFactory) -> None:
    devnet = await start_devnet()
    alice, bob = PrivateKey(), PrivateKey()
    with trio.fail_after(15):
        async with http(devnet) as c:
            funding = await fund(c, alice, 100_000)
            # the faucet BEEF carries the mined genesis coin with its merkle path
            assert funding.inputs[0].source_transaction.merkle_path is not None
            spend = p2pkh_spend(funding, 0, alice, [(60_000, bob.address()), (39_000, alice.address())])
            answer = await c.post("/v1/tx", json={"rawTx": spend.hex()})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["txid"] == spend.txid()
            assert body["txStatus"] == "SEEN_ON_NETWORK"
            assert body["merklePath"] == ""
            assert body["blockHeight"] == 0
            assert body["competingTxs"] is None
            assert (await c.get(f"/v1/tx/{spend.txid()}")).json()["txStatus"] == "SEEN_ON_NETWORK"

            mined = (await c.post("/v1/mine")).json()
            assert mined["blockHeight"] == 1
            assert mined["txids"] == [funding.txid(), spend.txid()]
            status = (await c.get(f"/v1/tx/{spend.txid()}")).json()
            assert status["txStatus"] == "MINED"
            assert status["blockHeight"] == 1
            assert status["blockHash"] == mined["blockHash"]

            header = (await c.get("/v1/headers/1")).json()
            genesis = (await c.get("/v1/headers/0")).json()
            assert (await c.get("/v1/chaintip")).json() == header
            path = MerklePath.from_hex(status["merklePath"])
            assert path.block_height == 1
            assert path.compute_root(spend.txid()) == header["merkleRoot"]
            parsed = BlockHeader.parse(bytes.fromhex(header["header"]))
            assert parsed.hash == header["hash"] == mined["blockHash"]
            assert parsed.merkle_root == header["merkleRoot"]
            assert parsed.prev_hash == header["prevHash"] == genesis["hash"]
            assert header["txCount"] == 3  # coinbase, faucet payout, spend

            # bob can spend what he got once it is mined: the BEEF now holds the spend with its proof
            beef = bytes.fromhex((await c.get(f"/v1/tx/{spend.txid()}/beef")).json()["beef"])
            proven = Transaction.from_beef(beef)
            assert proven.merkle_path is not None
            onward = p2pkh_spend(proven, 0, bob, [(59_000, alice.address())])
            assert (await post_tx(c, onward)).json()["txStatus"] == "SEEN_ON_NETWORK"

    snap = await ledger_snapshot(devnet.db)
    assert (spend.txid(), 1, 39_000) in snap.utxos
    assert (onward.txid(), 0, 59_000) in snap.utxos
    assert not any(u[:2] == (funding.txid(), 0) for u in snap.utxos)
    assert snap.counts.unspent_satoshis + snap.counts.fees == GENESIS_SUPPLY


async def test_refusals_change_nothing(start_devnet: DevnetFactory) -> None:
    devnet = await start_devnet()
    alice, bob = PrivateKey(), PrivateKey()
    with trio.fail_after(15):
        async with http(devnet) as c:
            funding = await fund(c, alice, 50_000)
            before = await ledger_snapshot(devnet.db)

            tampered = p2pkh_spend(funding, 0, alice, [(49_000, bob.address())])
            tampered.outputs[0].satoshis = 48_000  # signed for 49,000
            unbalanced = p2pkh_spend(funding, 0, alice, [(50_001, bob.address())])
            no_fee = p2pkh_spend(funding, 0, alice, [(50_000, bob.address())])
            ghost = Transaction([], [TransactionOutput(P2PKH().lock(alice.address()), 1_000)])
            unknown = p2pkh_spend(ghost, 0, alice, [(500, bob.address())])
            wrong_key = p2pkh_spend(funding, 0, bob, [(49_000, bob.address())])
            cases: list[tuple[Transaction, int, str]] = [
                (tampered, 461, "unlocking_scripts"),
                (wrong_key, 461, "unlocking_scripts"),
                (unbalanced, 464, "outputs"),
                (no_fee, 465, "fees"),
                (unknown, 462, "inputs"),
            ]
            for tx, status, code in cases:
                answer = await post_tx(c, tx)
                assert answer.status_code == status, (code, answer.text)
                body = answer.json()
                assert body["status"] == status
                assert body["code"] == code
                assert body["txid"] == tx.txid()
                assert body["extraInfo"]
                assert body["title"]
                assert body["type"].endswith(str(status))
                assert (await c.get(f"/v1/tx/{tx.txid()}")).status_code == 404

            octet = {"Content-Type": "application/octet-stream"}
            raw = funding.serialize()
            bad_bodies: list[tuple[dict[str, Any], int]] = [
                ({"json": {"rawTx": "zz"}}, 400),
                ({"json": {"raw": "00"}}, 400),
                ({"json": [1, 2]}, 400),
                ({"content": b"\x01\x00", "headers": octet}, 463),
                ({"content": raw[:-3], "headers": octet}, 463),
                ({"content": raw + b"\x00", "headers": octet}, 400),
                ({"content": bytes.fromhex("0100beef") + b"\x05\xff", "headers": octet}, 463),
                ({"content": b"", "headers": octet}, 400),
                ({"content": b"0100", "headers": {"Content-Type": "application/xml"}}, 400),
                ({"content": b"\x00" * (MAX_BODY + 1), "headers": octet}, 413),
            ]
            for kwargs, status in bad_bodies:
                answer = await c.post("/v1/tx", **kwargs)
                assert answer.status_code == status, (kwargs.get("json"), answer.text)
                assert answer.json()["status"] == status
                assert answer.json()["message"]

            # far too large: refused on its declared length, before a byte of it is read
            stream = await trio.open_tcp_stream("127.0.0.1", devnet.info.port)
            async with stream:
                head = f"POST /v1/tx HTTP/1.1\r\nHost: x\r\nContent-Length: {100 * MAX_BODY}\r\n"
                await stream.send_all((head + "Content-Type: application/octet-stream\r\n\r\n").encode())
                assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 413 ")

            # a BUMP that does not prove its transaction, and one that does not match the chain
            bogus = encode_beef_v1([(funding.serialize(), bytes.fromhex("0001010002" + "11" * 32))])
            answer = await post_tx(c, bogus)
            assert answer.status_code == 468, answer.text
            genesis_coin = funding.inputs[0].source_transaction
            claimed = MerklePath.from_binary(genesis_coin.merkle_path.to_binary())
            claimed.block_height = 7
            forged = encode_beef_v1([(genesis_coin.serialize(), claimed.to_binary()), (raw, None)])
            answer = await post_tx(c, forged)
            assert answer.status_code == 469, answer.text

            assert (await c.get("/v1/tx/nothex")).status_code == 400
            assert (await c.get("/v1/tx/" + "ab" * 32 + "%0A")).status_code == 400
            assert (await c.get("/v1/headers/99")).status_code == 404
            assert (await c.get("/v1/headers/x1")).status_code == 400
            assert (await c.get("/v1/nope")).status_code == 404
            for request in ({"address": "1nope", "satoshis": 5}, {"address": alice.address(), "satoshis": 0}):
                assert (await c.post("/v1/faucet", json=request)).status_code == 400

    after = await ledger_snapshot(devnet.db)
    assert after == before


async def test_double_spend_is_reported_with_the_competitor(start_devnet: DevnetFactory) -> None:
    devnet = await start_devnet()
    alice, bob, carol = PrivateKey(), PrivateKey(), PrivateKey()
    with trio.fail_after(15):
        async with http(devnet) as c:
            funding = await fund(c, alice, 20_000)
            first = p2pkh_spend(funding, 0, alice, [(19_000, bob.address())])
            second = p2pkh_spend(funding, 0, alice, [(19_000, carol.address())])
            assert (await post_tx(c, first)).json()["txStatus"] == "SEEN_ON_NETWORK"
            before = await ledger_snapshot(devnet.db)

            answer = await post_tx(c, second)
            assert answer.status_code == 200  # as ARC does: the refusal is in txStatus
            body = answer.json()
            assert body["txid"] == second.txid()
            assert body["txStatus"] == "DOUBLE_SPEND_ATTEMPTED"
            assert body["competingTxs"] == [first.txid()]
            assert (await ledger_snapshot(devnet.db)).utxos == before.utxos
            status = (await c.get(f"/v1/tx/{second.txid()}")).json()
            assert status["txStatus"] == "DOUBLE_SPEND_ATTEMPTED"
            assert status["competingTxs"] == [first.txid()]
            # re-sending the accepted one is idempotent
            assert (await post_tx(c, first)).json()["txStatus"] == "SEEN_ON_NETWORK"

            await c.post("/v1/mine")
            status = (await c.get(f"/v1/tx/{second.txid()}")).json()
            assert status["txStatus"] == "REJECTED"
            assert status["competingTxs"] == [first.txid()]
            third = p2pkh_spend(funding, 0, alice, [(18_000, carol.address())])
            late = (await post_tx(c, third)).json()
            assert late["txStatus"] == "REJECTED"
            assert late["competingTxs"] == [first.txid()]


async def test_beef_ef_and_batches(start_devnet: DevnetFactory) -> None:
    devnet = await start_devnet()
    alice, bob = PrivateKey(), PrivateKey()
    with trio.fail_after(15):
        async with http(devnet) as c:
            funding = await fund(c, alice, 30_000)
            # a parent the ledger never saw, in the child's BEEF with the faucet payout and the genesis coin
            parent = p2pkh_spend(funding, 0, alice, [(29_000, alice.address())])
            child = p2pkh_spend(parent, 0, alice, [(28_000, bob.address())])
            answer = await c.post(
                "/v1/tx", content=child.to_beef(), headers={"Content-Type": "application/octet-stream"}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["txid"] == child.txid(), answer.text
            assert (await c.get(f"/v1/tx/{parent.txid()}")).json()["txStatus"] == "SEEN_ON_NETWORK"

            # Extended Format as text/plain; a wrong EF source value is refused
            ef_tx = p2pkh_spend(child, 0, bob, [(27_000, alice.address())])
            ef = ef_tx.to_ef()
            lying = bytearray(ef)
            at = ef.index(ef_tx.inputs[0].unlocking_script.serialize()) + len(
                ef_tx.inputs[0].unlocking_script.serialize()
            )
            lying[at + 4] ^= 1  # the satoshis after the sequence number
            text = {"Content-Type": "text/plain"}
            refused = await c.post("/v1/tx", content=bytes(lying).hex(), headers=text)
            assert refused.status_code == 462
            assert "extended-format" in refused.json()["extraInfo"]
            answer = await c.post("/v1/tx", content=ef.hex(), headers=text)
            assert answer.json()["txStatus"] == "SEEN_ON_NETWORK", answer.text

            # a batch: good, bad signature, and a chain submitted in order
            good = p2pkh_spend(ef_tx, 0, alice, [(26_000, bob.address())])
            next_in_chain = p2pkh_spend(good, 0, bob, [(25_000, alice.address())])
            bad = p2pkh_spend(await fund(c, alice, 5_000), 0, bob, [(4_000, bob.address())])
            answer = await c.post("/v1/txs", json=[{"rawTx": t.hex()} for t in (good, bad, next_in_chain)])
            assert answer.status_code == 200, answer.text
            items = answer.json()
            assert [i.get("txStatus") for i in items] == ["SEEN_ON_NETWORK", None, "SEEN_ON_NETWORK"]
            assert items[1]["status"] == 461
            assert items[1]["txid"] == bad.txid()
            # the same new transaction twice in one batch, beside resubmissions of held ones: all answered with
            # their status (the second copy is not "unknown": the first took it)
            twice = p2pkh_spend(next_in_chain, 0, alice, [(24_000, bob.address())])
            answer = await c.post("/v1/txs", json=[{"rawTx": t.hex()} for t in (twice, good, twice, ef_tx)])
            assert [(i["txid"], i["txStatus"]) for i in answer.json()] == [
                (t.txid(), "SEEN_ON_NETWORK") for t in (twice, good, twice, ef_tx)
            ], answer.text
            mined = (await c.post("/v1/mine")).json()
            assert {parent.txid(), child.txid(), ef_tx.txid(), good.txid(), next_in_chain.txid()} <= set(mined["txids"])
            assert (await c.get(f"/v1/tx/{next_in_chain.txid()}")).json()["txStatus"] == "MINED"
            answer = await c.post("/v1/txs", json=[{"rawTx": t.hex()} for t in (good, twice)])
            assert [i["txStatus"] for i in answer.json()] == ["MINED", "MINED"], answer.text
            assert all(i["merklePath"] for i in answer.json())


async def test_restart_keeps_the_ledger(start_devnet: DevnetFactory) -> None:
    devnet = await start_devnet("ledger")
    alice, bob = PrivateKey(), PrivateKey()
    with trio.fail_after(15):
        async with http(devnet) as c:
            funding = await fund(c, alice, 40_000)
            await c.post("/v1/mine")
            pending = p2pkh_spend(funding, 0, alice, [(39_000, bob.address())])
            assert (await post_tx(c, pending)).json()["txStatus"] == "SEEN_ON_NETWORK"
            tip = (await c.get("/v1/chaintip")).json()
        before = await ledger_snapshot(devnet.db)
        devnet.stop.set()
        await devnet.stopped.wait()

        again = await start_devnet("ledger")
        assert again.info.height == 1
        assert await ledger_snapshot(again.db) == before
        async with http(again) as c:
            assert (await c.get("/v1/chaintip")).json() == tip
            assert (await c.get(f"/v1/tx/{pending.txid()}")).json()["txStatus"] == "SEEN_ON_NETWORK"
            assert (await c.post("/v1/mine")).json()["txids"] == [pending.txid()]
            await fund(c, bob, 1_000)


async def test_block_maker_and_api_key(tmp_path: Path, start_devnet: DevnetFactory) -> None:
    with trio.fail_after(15):
        async with open_ledger_store(tmp_path / "ledger.db", StoreSection()) as repo:
            ledger = Ledger(repo, policy=Policy(), pool_outputs=2)
            await ledger.start()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ledger.serve_block_maker, 0.05)
                payout = await ledger.faucet(bytes.fromhex("76a914" + "00" * 20 + "88ac"), 1_000)
                tip = await ledger.wait_for_height(1)
                assert (await ledger.status(payout.txid)).tx_status == "MINED"
                assert tip.height >= 1
                nursery.cancel_scope.cancel()
            assert await repo.consistency_problems() == []

        devnet = await start_devnet(api_key="sesame")
        async with http(devnet) as c:
            assert (await c.get("/v1/health")).status_code == 200
            refused = await c.get("/v1/policy")
            assert refused.status_code == 401
            assert refused.json()["code"] == "unauthorized"
            allowed = await c.get("/v1/policy", headers={"Authorization": "Bearer sesame"})
            assert allowed.json()["policy"]["miningFee"] == {"satoshis": 1, "bytes": 1000}


async def test_concurrent_spends_of_one_output_accept_exactly_one(start_devnet: DevnetFactory) -> None:
    devnet = await start_devnet()
    alice = PrivateKey()
    with trio.fail_after(15):
        async with http(devnet) as c:
            funding = await fund(c, alice, 10_000)
            rivals = [p2pkh_spend(funding, 0, alice, [(9_000 - i, PrivateKey().address())]) for i in range(6)]
            answers: dict[str, str] = {}

            async def send(tx: Transaction) -> None:
                answers[tx.txid()] = (await post_tx(c, tx)).json()["txStatus"]

            async with trio.open_nursery() as nursery:
                for tx in rivals:
                    nursery.start_soon(send, tx)
    assert sorted(answers.values()) == ["DOUBLE_SPEND_ATTEMPTED"] * 5 + ["SEEN_ON_NETWORK"]
    async with open_ledger_store(devnet.db, StoreSection()) as repo:
        assert await repo.consistency_problems() == []


async def test_faucet_by_pubkey_and_lock(start_devnet: DevnetFactory, tmp_path: Path) -> None:
    from overlay_node.errors import DataDirError

    devnet = await start_devnet("shared")
    key = PrivateKey()
    with trio.fail_after(15):
        async with http(devnet) as c:
            answer = await c.post("/v1/faucet", json={"pubkey": key.public_key().hex(), "satoshis": 2_500})
            assert answer.status_code == 200, answer.text
            assert answer.json()["lockingScript"] == P2PKH().lock(key.address()).hex()
        with pytest.raises(DataDirError):
            await run_devnet(devnet_settings(tmp_path / "shared"))
