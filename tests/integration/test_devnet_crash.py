"""Crash safety: kill -9 a running devnet process while submissions and a block are in flight, then check that
the ledger it left is consistent, holds everything it acknowledged, and serves again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio
from bsv.keys import PrivateKey
from bsv.merkle_path import MerklePath
from bsv.transaction import Transaction

from overlay_node.config import StoreSection
from overlay_node.devnet.chain import GENESIS_SUPPLY
from overlay_node.devnet.runner import LEDGER_DB
from overlay_node.store.ledger import LedgerRepository, open_ledger_store
from tests.integration.test_devnet import DevnetFactory, fund, http, p2pkh_spend, post_tx, start_devnet

__all__ = ["start_devnet"]  # the fixture, shared with test_devnet.py


async def _first_line(stream: trio.abc.ReceiveStream) -> bytes:
    buffer = b""
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise AssertionError(f"devnet exited before announcing itself: {buffer!r}")
        buffer += chunk
    return buffer.split(b"\n", 1)[0]


async def _check_consistent(repo: LedgerRepository, acknowledged: set[str]) -> None:
    assert await repo.consistency_problems() == []
    counts = await repo.counts()
    assert counts.unspent_satoshis + counts.fees == GENESIS_SUPPLY
    for txid in acknowledged:
        record = await repo.status(txid)
        assert record is not None, txid
        assert record.state in ("mempool", "mined"), txid
        if record.state == "mined":
            assert record.merkle_path is not None
            assert record.block_height is not None
            block = await repo.block_at(record.block_height)
            assert block is not None
            assert MerklePath.from_binary(record.merkle_path).compute_root(txid) == block.merkle_root


async def test_kill_9_in_flight_leaves_a_consistent_ledger(tmp_path: Path, start_devnet: DevnetFactory) -> None:
    data = tmp_path / "crashy"
    log = (tmp_path / "devnet.log").open("wb")
    cmd = [sys.executable, "-m", "overlay_node.devnet", "--port", "0", "--block-interval", "0"]
    cmd += ["--data-dir", str(data), "--json", "--log-level", "warning"]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=log)
    acknowledged: set[str] = set()
    try:
        with trio.fail_after(30):
            assert proc.stdout is not None
            info = json.loads(await _first_line(proc.stdout))
            keys = [PrivateKey() for _ in range(8)]
            async with httpx.AsyncClient(base_url=info["url"], timeout=10) as c:
                fundings: list[Transaction] = []
                for key in keys:
                    fundings.append(await fund(c, key, 20_000))
                    acknowledged.add(fundings[-1].txid())
                assert (await c.post("/v1/mine")).status_code == 200
                spends = [
                    p2pkh_spend(f, 0, k, [(19_000, PrivateKey().address())])
                    for f, k in zip(fundings, keys, strict=True)
                ]
                first_answer = trio.Event()

                async def submit(tx: Transaction) -> None:
                    try:
                        answer = await post_tx(c, tx)
                    except httpx.HTTPError:
                        return  # killed before it answered: it may or may not be in the ledger
                    if answer.status_code == 200 and answer.json()["txStatus"] == "SEEN_ON_NETWORK":
                        acknowledged.add(tx.txid())
                    first_answer.set()

                async def mine() -> None:
                    try:
                        await c.post("/v1/mine")
                    except httpx.HTTPError:
                        pass

                async with trio.open_nursery() as nursery:
                    for i, tx in enumerate(spends):
                        nursery.start_soon(submit, tx)
                        if i == 3:
                            nursery.start_soon(mine)
                    await first_answer.wait()
                    proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    assert acknowledged

    async with open_ledger_store(data / LEDGER_DB, StoreSection()) as repo:
        await _check_consistent(repo, acknowledged)
        before = await repo.utxo_set()

    # it serves again from where it stopped, and its next block takes the surviving mempool
    with trio.fail_after(15):
        devnet = await start_devnet("crashy")
        async with open_ledger_store(devnet.db, StoreSection()) as repo:
            assert await repo.utxo_set() == before
            pending = await repo.mempool()
        async with http(devnet) as c:
            mined = (await c.post("/v1/mine")).json()
            assert mined["txids"] == pending
            late = p2pkh_spend(fundings[0], 0, keys[0], [(18_000, keys[0].address())])
            assert (await post_tx(c, late)).status_code == 200
        async with open_ledger_store(devnet.db, StoreSection()) as repo:
            await _check_consistent(repo, acknowledged)
