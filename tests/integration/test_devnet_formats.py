"""The devnet's transaction codecs: raw / EF / BEEF V1, V2 and Atomic parsing, fuzzed, and merkle paths that
bsv-sdk agrees with."""

from __future__ import annotations

import os
import random

import pytest
import trio
from bsv.keys import PrivateKey
from bsv.merkle_path import MerklePath
from bsv.script.script import Script
from bsv.script.type import P2PKH
from bsv.transaction import Transaction, TransactionInput, TransactionOutput
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.chain.blocks import block_merkle_paths, merkle_root
from overlay_node.chain.formats import (
    ATOMIC_BEEF,
    BEEF_V2,
    encode_beef_v1,
    parse_stream,
    parse_submission,
    subject_txid,
)
from overlay_node.chain.refusals import ArcCode, Refusal
from overlay_node.crypto.bump import varint_bytes
from tests.integration.test_devnet import DevnetFactory, fund, http, p2pkh_spend, start_devnet

__all__ = ["start_devnet"]  # the fixture, shared with test_devnet.py

KEY = PrivateKey(bytes(range(1, 33)))


def _source() -> Transaction:
    tx = Transaction([], [TransactionOutput(P2PKH().lock(KEY.address()), 5_000)])
    tx_in = TransactionInput(source_txid="ab" * 32, source_output_index=1, unlocking_script=Script(b"\x51"))
    tx.inputs.append(tx_in)
    return tx


def _chain() -> tuple[Transaction, bytes, Transaction]:
    """A parent proven by a BUMP in a 3-transaction block, and a signed child spending it."""
    parent = _source()
    txids = [os.urandom(32).hex(), parent.txid(), os.urandom(32).hex()]
    bump = block_merkle_paths(txids, 12)[1]
    assert bump is not None
    parent.merkle_path = MerklePath.from_binary(bump)
    child = p2pkh_spend(parent, 0, KEY, [(4_000, KEY.address())])
    return parent, bump, child


def beef_v2(entries: list[tuple[bytes, bytes | None] | str]) -> bytes:
    """A BEEF V2: ``(raw, bump or None)`` entries or a txid string for a txid-only entry."""
    bumps = [e[1] for e in entries if not isinstance(e, str) and e[1] is not None]
    out = bytearray(BEEF_V2 + varint_bytes(len(bumps)) + b"".join(bumps) + varint_bytes(len(entries)))
    for e in entries:
        if isinstance(e, str):
            out += b"\x02" + bytes.fromhex(e)[::-1]
        elif e[1] is None:
            out += b"\x00" + e[0]
        else:
            out += b"\x01" + varint_bytes(bumps.index(e[1])) + e[0]
    return bytes(out)


def test_merkle_paths_agree_with_bsv_sdk() -> None:
    for n in (2, 3, 4, 5, 7, 8, 9, 31, 64, 65):
        txids = [os.urandom(32).hex() for _ in range(n)]
        root = merkle_root(txids)
        for txid, bump in zip(txids, block_merkle_paths(txids, 100), strict=True):
            assert bump is not None
            path = MerklePath.from_binary(bump)
            assert path.block_height == 100
            assert path.compute_root(txid) == root
    # Bitcoin block 100000: four transactions and the root it commits to
    block = [
        "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",
        "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
        "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
        "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d",
    ]
    assert merkle_root(block) == "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766"
    assert block_merkle_paths(block[:1], 1) == [None]


def test_raw_ef_and_beef_forms() -> None:
    parent, bump, child = _chain()
    raw = parse_submission(child.serialize())
    assert raw.format == "raw"
    assert raw.subject.txid == child.txid()
    assert raw.subject.ef_sources is None
    ef = parse_submission(child.to_ef())
    assert ef.format == "ef"
    assert ef.subject.raw == child.serialize()
    assert ef.subject.ef_sources is not None
    assert ef.subject.ef_sources[0].satoshis == 5_000

    v1 = parse_submission(child.to_beef())
    assert [t.txid for t in v1.txs] == [parent.txid(), child.txid()]
    assert v1.txs[0].block_height == 12
    assert v1.txs[0].bump_root is not None

    other = os.urandom(32).hex()
    v2 = beef_v2([other, (parent.serialize(), bump), (child.serialize(), None)])
    atomic = ATOMIC_BEEF + bytes.fromhex(child.txid())[::-1] + v2
    for data in (v2, atomic):
        sub = parse_submission(data)
        assert sub.subject.txid == child.txid()
        assert sub.txid_only == {other}
    assert subject_txid(atomic) == child.txid()

    # several items back to back, as /v1/txs takes them
    items = parse_stream(child.serialize() + child.to_beef() + child.to_ef(), max_items=5)
    assert [i.format for i in items] == ["raw", "beef", "ef"]


def _refused(data: bytes) -> Refusal:
    with pytest.raises(Refusal) as caught:
        parse_stream(data, max_items=10)
    return caught.value


def test_bad_beef_is_refused() -> None:
    parent, bump, child = _chain()
    stranger = _source()
    stranger.outputs[0].satoshis = 1
    wrong_subject = ATOMIC_BEEF + bytes(32) + beef_v2([(parent.serialize(), bump), (child.serialize(), None)])
    assert "subject" in _refused(wrong_subject).extra_info
    not_ancestor = ATOMIC_BEEF + bytes.fromhex(child.txid())[::-1]
    entries: list[tuple[bytes, bytes | None] | str] = [
        (stranger.serialize(), None),
        (parent.serialize(), bump),
        (child.serialize(), None),
    ]
    not_ancestor += beef_v2(entries)
    assert "not ancestors" in _refused(not_ancestor).extra_info
    backwards = encode_beef_v1([(child.serialize(), None), (parent.serialize(), bump)])
    assert "before its parent" in _refused(backwards).extra_info
    twice = encode_beef_v1([(parent.serialize(), bump), (parent.serialize(), bump)])
    assert "twice" in _refused(twice).extra_info
    not_its_bump = encode_beef_v1([(stranger.serialize(), bump)])
    assert _refused(not_its_bump).arc_code is ArcCode.CALCULATING_MERKLE_ROOTS
    assert _refused(b"\x02\x00\xbe\xef\x00\x01\x07").arc_code is ArcCode.MALFORMED
    assert _refused(b"").arc_code is ArcCode.BAD_REQUEST
    huge_count = bytes.fromhex("0100beef") + b"\x00\xff" + b"\xff" * 8
    assert "count" in _refused(huge_count).extra_info


_scripts = st.binary(max_size=300)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(min_size=36, max_size=36), st.integers(0, 2**32 - 1), _scripts), min_size=1, max_size=4
    ),
    st.lists(st.tuples(st.integers(0, 2**64 - 1), _scripts), max_size=4),
    st.integers(0, 2**32 - 1),
)
def test_transactions_read_as_bsv_sdk_reads_them(
    ins: list[tuple[bytes, int, bytes]], outs: list[tuple[int, bytes]], locktime: int
) -> None:
    """The devnet reads every field of a transaction itself; bsv-sdk reads the same bytes the same way."""
    raw = b"\x01\x00\x00\x00" + varint_bytes(len(ins))
    for outpoint, sequence, script in ins:
        raw += outpoint + varint_bytes(len(script)) + script + sequence.to_bytes(4, "little")
    raw += varint_bytes(len(outs))
    for satoshis, script in outs:
        raw += satoshis.to_bytes(8, "little") + varint_bytes(len(script)) + script
    raw += locktime.to_bytes(4, "little")
    ptx = parse_stream(raw, max_items=1)[0].subject
    sdk = Transaction.from_hex(raw)
    assert ptx.raw == raw
    assert ptx.txid == sdk.txid()
    assert [(i.txid, i.vout, i.sequence) for i in ptx.inputs] == [
        (i.source_txid, i.source_output_index, i.sequence) for i in sdk.inputs
    ]
    assert [i.script for i in ptx.inputs] == [script for _, _, script in ins]
    assert [(o.satoshis, o.script) for o in ptx.outputs] == outs
    assert [o.satoshis for o in sdk.outputs] == [s for s, _ in outs]
    # the interpreter's copy is refused when bsv-sdk would not write the same bytes back
    if sdk.serialize() == raw:
        assert ptx.sdk_tx().serialize() == raw
    else:
        with pytest.raises(Refusal) as refusal:
            ptx.sdk_tx()
        assert refusal.value.arc_code is ArcCode.MALFORMED


def test_non_canonical_varints_are_refused() -> None:
    _parent, _bump, child = _chain()
    raw = child.serialize()
    assert raw[4] == 1  # one input
    for longer in (b"\xfd\x01\x00", b"\xfe\x01\x00\x00\x00", b"\xff" + (1).to_bytes(8, "little")):
        refusal = _refused(raw[:4] + longer + raw[5:])
        assert refusal.arc_code is ArcCode.MALFORMED
        assert "non-canonical" in refusal.extra_info


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_refuse(data: bytes) -> None:
    try:
        parse_stream(data, max_items=4)
    except Refusal:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_beef_parses_or_refuses(data: st.DataObject) -> None:
    _parent, _bump, child = _chain()
    beef = bytearray(child.to_beef())
    cut = data.draw(st.integers(0, len(beef)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(beef) - 1), st.integers(1, 255)), max_size=4))
    for at, mask in flips:
        beef[at] ^= mask
    try:
        parse_stream(bytes(beef[:cut]), max_items=4)
    except Refusal:
        pass


async def test_atomic_beef_v2_through_the_devnet(start_devnet: DevnetFactory) -> None:
    devnet = await start_devnet()
    alice = PrivateKey()
    with trio.fail_after(15):
        async with http(devnet) as c:
            funding = await fund(c, alice, 8_000)
            coin = funding.inputs[0].source_transaction
            spend = p2pkh_spend(funding, 0, alice, [(7_000, alice.address())])
            body = beef_v2(
                [
                    (coin.serialize(), coin.merkle_path.to_binary()),
                    (funding.serialize(), None),
                    (spend.serialize(), None),
                ]
            )
            atomic = ATOMIC_BEEF + bytes.fromhex(spend.txid())[::-1] + body
            octet = {"Content-Type": "application/octet-stream"}
            answer = await c.post("/v1/tx", content=atomic, headers=octet)
            assert answer.status_code == 200, answer.text
            assert answer.json()["txStatus"] == "SEEN_ON_NETWORK"


async def test_damaged_bodies_over_http_get_clean_answers(start_devnet: DevnetFactory) -> None:
    devnet = await start_devnet()
    alice = PrivateKey()
    rng = random.Random(4762)
    with trio.fail_after(15):
        async with http(devnet) as c:
            funding = await fund(c, alice, 8_000)
            spend = p2pkh_spend(funding, 0, alice, [(7_000, alice.address())])
            seeds = [spend.serialize(), spend.to_ef(), spend.to_beef()]
            types = ["application/octet-stream", "text/plain", "application/json", "application/beef"]
            for _ in range(120):
                body = bytearray(rng.choice(seeds))
                for _ in range(rng.randint(1, 4)):
                    body[rng.randrange(len(body))] ^= rng.randint(1, 255)
                body = body[: rng.randint(0, len(body))]
                kind = rng.choice(types)
                content = bytes(body).hex().encode() if kind == "text/plain" else bytes(body)
                path = rng.choice(["/v1/tx", "/v1/txs"])
                answer = await c.post(path, content=content, headers={"Content-Type": kind})
                assert answer.status_code < 500, answer.text
                answer.json()
