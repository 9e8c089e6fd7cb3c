"""Our ARC client against the real devnet over HTTP on 127.0.0.1 (port 0), with real bsv-sdk transactions."""

from __future__ import annotations

import socket

import pytest
import trio
from bsv.keys import PrivateKey
from bsv.merkle_path import MerklePath
from bsv.transaction import Transaction

from overlay_node.errors import ApiError, DialError
from overlay_node.services.arc import ArcClient, ArcOutcome, DevnetChainTracker, DevnetClient
from tests.integration.test_devnet import DevnetFactory, p2pkh_spend, start_devnet

__all__ = ["start_devnet"]  # the fixture, shared with test_devnet.py


async def test_submit_status_mined_and_proof(start_devnet: DevnetFactory) -> None:
    devnet = await start_devnet()
    alice, bob = PrivateKey(), PrivateKey()
    with trio.fail_after(15):
        async with DevnetClient(devnet.info.url, timeout=10) as arc:
            payout = await arc.faucet(50_000, address=alice.address())
            funding = Transaction.from_beef(payout.beef)
            assert funding.txid() == payout.txid
            assert payout.raw == funding.serialize()

            # SPV with bsv-sdk's own verify, against the devnet's headers
            tracker = DevnetChainTracker(arc)
            assert await funding.verify(tracker) is True
            assert await tracker.current_height() == 0
            assert await tracker.is_valid_root_for_height("00" * 32, 0) is False
            assert await tracker.is_valid_root_for_height("00" * 32, 99) is False

            spend = p2pkh_spend(funding, 0, alice, [(49_000, bob.address())])
            result = await arc.submit(spend)  # a bsv Transaction with its sources goes out as EF
            assert result.outcome is ArcOutcome.SEEN
            assert result.accepted
            assert not result.mined
            assert result.txid == spend.txid()
            assert result.http_status == 200

            status = await arc.status(spend.txid())
            assert status.outcome is ArcOutcome.SEEN

            block = await arc.mine()
            assert spend.txid() in block.txids
            mined = await arc.status(spend.txid())
            assert mined.outcome is ArcOutcome.MINED
            assert mined.mined
            assert mined.block_height == block.height
            assert mined.block_hash == block.hash
            assert mined.merkle_path is not None
            header = await arc.header(block.height)
            assert MerklePath.from_hex(mined.merkle_path).compute_root(spend.txid()) == header.merkle_root
            assert (await arc.chaintip()) == header

            # re-submitting what is mined answers MINED again, with the path
            again = await arc.submit(spend.serialize(), format="json")
            assert again.outcome is ArcOutcome.MINED
            assert again.merkle_path == mined.merkle_path

            beef = await arc.beef(spend.txid())
            assert Transaction.from_beef(beef).merkle_path is not None

            policy = await arc.policy()
            assert (policy.mining_fee_satoshis, policy.mining_fee_bytes) == (1, 1000)
            assert policy.required_fee(1001) == 2


async def test_failures_are_failures_even_with_http_200(start_devnet: DevnetFactory) -> None:
    devnet = await start_devnet()
    alice, bob = PrivateKey(), PrivateKey()
    with trio.fail_after(15):
        async with DevnetClient(devnet.info.url, timeout=10) as arc:
            funding = Transaction.from_beef((await arc.faucet(30_000, pubkey=alice.public_key().hex())).beef)
            first = p2pkh_spend(funding, 0, alice, [(29_000, bob.address())])
            rival = p2pkh_spend(funding, 0, alice, [(28_000, bob.address())])
            cheap = p2pkh_spend(funding, 0, alice, [(30_000, bob.address())])

            results = await arc.submit_many([first.serialize(), rival.serialize()], format="text")
            assert [r.outcome for r in results] == [ArcOutcome.SEEN, ArcOutcome.FAILED]
            assert results[1].tx_status == "DOUBLE_SPEND_ATTEMPTED"
            assert results[1].http_status == 200
            assert results[1].competing_txs == (first.txid(),)
            assert results[1].failed

            refused = await arc.submit(cheap.serialize())
            assert refused.outcome is ArcOutcome.FAILED
            assert refused.arc_code == 465
            assert refused.txid == cheap.txid()
            assert "fee" in refused.extra_info

            assert (await arc.status(cheap.txid())).outcome is ArcOutcome.NOT_FOUND
            assert (await arc.status(rival.txid())).outcome is ArcOutcome.FAILED

            garbage = await arc.submit(b"\x01\x02\x03")
            assert garbage.outcome is ArcOutcome.FAILED
            assert garbage.txid is None

            with pytest.raises(ApiError) as zero_payout:
                await arc.faucet(0, address=alice.address())
            assert zero_payout.value.http_status == 400
            assert zero_payout.value.code == "bad_request"


async def test_api_key_and_unreachable_arc(start_devnet: DevnetFactory) -> None:
    devnet = await start_devnet(api_key="k3y")
    alice = PrivateKey()
    with trio.fail_after(15):
        async with DevnetClient(devnet.info.url, timeout=10) as anonymous:
            with pytest.raises(ApiError) as without_key:
                await anonymous.faucet(1_000, address=alice.address())
            assert without_key.value.http_status == 401
        async with DevnetClient(devnet.info.url, api_key="k3y", timeout=10) as arc:
            payout = await arc.faucet(1_000, address=alice.address())
            assert (await arc.status(payout.txid)).outcome is ArcOutcome.SEEN
        async with ArcClient(devnet.info.url, timeout=10) as no_key:
            denied = await no_key.status(payout.txid)
            assert denied.outcome is ArcOutcome.FAILED
            assert denied.http_status == 401

        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
        async with DevnetClient(dead_url, timeout=5) as dead:
            down = await dead.submit(bytes.fromhex(payout.raw.hex()))
            assert down.outcome is ArcOutcome.RETRY
            assert down.retryable
            assert down.txid == payout.txid
            assert (await dead.status(payout.txid)).outcome is ArcOutcome.RETRY
            try:
                await dead.chaintip()
            except DialError:
                pass
            else:
                raise AssertionError("an unreachable devnet did not raise DialError")
