"""Transaction readers (``chain/formats.py``: raw, Extended Format, BEEF V1/V2, Atomic BEEF), merkle paths
(``crypto/bump.py``) and SPV (``chain/spv.py``, through ``chain/validation.py`` and bsv-sdk's interpreter).

Seeds: a funding transaction mined in a block of two (with its BUMP), a signed P2PKH spend of it carrying a
PushDrop output, that spend in Extended Format, and BEEFs of the two. Properties: every reader gives a value or a
``Refusal`` (``merkle paths``: ``ValueError``, the documented error of ``path_root``); whatever parses is checked
by SPV (scripts only, and against the roots its own paths claim) with nothing but a ``Refusal`` escaping; the fast
P2PKH check never raises and never accepts what the full check refuses."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from overlay_node.chain import spv
from overlay_node.chain.formats import SourceOutput, parse_stream, parse_transaction
from overlay_node.chain.refusals import Refusal
from overlay_node.chain.validation import Policy, check_transaction, fast_check
from overlay_node.crypto.bump import path_root
from overlay_node.crypto.scripts import p2pkh_for_key
from overlay_node.crypto.sighash import txid_of_raw

from . import seeds
from .mutate import fuzz_bytes
from .runner import FuzzReport, fuzz_seconds, run_property

pytestmark = pytest.mark.fuzz

POLICY = Policy(mining_fee_satoshis=1, mining_fee_bytes=1000)


def _held() -> dict[str, list[SourceOutput]]:
    lock = p2pkh_for_key(seeds.keys().alice.public_key)
    funding = txid_of_raw(seeds.chain_seeds().funding)
    return {
        funding: [
            SourceOutput(satoshis=100_000, locking_script=lock),
            SourceOutput(satoshis=5_000, locking_script=lock),
        ]
    }


def check_stream(data: bytes) -> None:
    try:
        parse_transaction(data)
    except Refusal:
        pass
    try:
        submissions = parse_stream(data, max_items=4)
    except Refusal:
        return
    held = _held()
    for submission in submissions:
        claimed = {height: next(iter(roots)) for height, roots in spv.claims(submission).items()}
        for roots in (None, claimed):
            try:
                spv.verify_beef(submission, roots=roots, held=held, policy=POLICY)
            except Refusal:
                pass
        sources = {(txid, vout): out for txid, outs in held.items() for vout, out in enumerate(outs)}
        for ptx in submission.txs:
            fast = fast_check(ptx.raw, sources, POLICY)
            try:
                full = check_transaction(ptx, sources, POLICY).fee
            except Refusal:
                full = None
            if fast is not None:
                assert full == fast, "the fast path accepted what the interpreter refuses"


def test_transactions_beef_and_spv(fuzz_report: FuzzReport) -> None:
    chain = seeds.chain_seeds()
    run_property(
        fuzz_report,
        "chain: raw/EF/BEEF and SPV",
        fuzz_bytes(chain.all, max_size=400),
        check_stream,
        seconds=fuzz_seconds() * 3 / 4,
    )


def check_path(case: tuple[bytes, str]) -> None:
    data, txid = case
    try:
        root = path_root(data, txid)
    except ValueError:
        return
    assert len(root) == 64


def test_merkle_paths(fuzz_report: FuzzReport) -> None:
    chain = seeds.chain_seeds()
    txids = [txid_of_raw(chain.funding), chain.other_txid, "00" * 32]
    cases = st.tuples(fuzz_bytes([chain.funding_bump], max_size=200), st.sampled_from(txids))
    run_property(fuzz_report, "chain: merkle paths", cases, check_path, seconds=fuzz_seconds() / 4)
