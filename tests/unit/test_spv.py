"""``chain.spv.verify_beef``: where the outputs an unproven transaction spends come from (the BEEF's earlier
transactions, else the caller's held ones), and what is refused when they are not there."""

from __future__ import annotations

import coincurve
import pytest

from overlay_node.chain.formats import BeefEntry, SourceOutput, encode_beef_v2, parse_submission
from overlay_node.chain.refusals import ArcCode, Refusal
from overlay_node.chain.spv import verify_beef
from overlay_node.chain.validation import Policy
from overlay_node.crypto.scripts import p2pkh_for_key
from overlay_node.crypto.sighash import P2pkhSpend, outpoint_bytes, sign_p2pkh, txid_of_raw

SECRET = bytes(31) + b"\x07"
SCRIPT = p2pkh_for_key(coincurve.PrivateKey(SECRET).public_key.format())
HELD_TXID = "ab" * 32
HELD = {
    HELD_TXID: [SourceOutput(satoshis=1, locking_script=SCRIPT), SourceOutput(satoshis=200_000, locking_script=SCRIPT)]
}
SPLIT = 600  # outputs of the parent: a coin split, as a faucet's


def _spend(txid: str, vout: int, satoshis: int) -> P2pkhSpend:
    return P2pkhSpend(outpoint=outpoint_bytes(txid, vout), locking_script=SCRIPT, satoshis=satoshis, secret=SECRET)


def _split() -> bytes:
    """The held coin of 200,000 split into SPLIT coins of 300 (the rest is the fee)."""
    return sign_p2pkh([_spend(HELD_TXID, 1, 200_000)], [(SCRIPT, 300)] * SPLIT)


def _verify(*raws: bytes, held: dict[str, list[SourceOutput]] = HELD) -> dict[str, int]:
    beef = encode_beef_v2([BeefEntry(txid=txid_of_raw(raw), raw=raw) for raw in raws])
    return dict(verify_beef(parse_submission(beef), roots=None, held=held, policy=Policy()).fees)


def test_a_child_spends_its_parents_outputs_from_the_beef() -> None:
    parent = _split()
    pid = txid_of_raw(parent)
    # the first and the last of the split, and one between
    child = sign_p2pkh([_spend(pid, 0, 300), _spend(pid, 317, 300), _spend(pid, SPLIT - 1, 300)], [(SCRIPT, 850)])
    grandchild = sign_p2pkh([_spend(txid_of_raw(child), 0, 850), _spend(pid, 5, 300)], [(SCRIPT, 1_100)])

    fees = _verify(parent, child, grandchild)

    assert fees == {pid: 200_000 - 300 * SPLIT, txid_of_raw(child): 50, txid_of_raw(grandchild): 50}


def test_an_output_the_parent_does_not_have_is_refused() -> None:
    parent = _split()
    pid = txid_of_raw(parent)
    child = sign_p2pkh([_spend(pid, SPLIT, 300)], [(SCRIPT, 250)])  # one past the last

    with pytest.raises(Refusal) as refused:
        _verify(parent, child)

    assert refused.value.arc_code is ArcCode.INPUTS
    assert f"{pid}:{SPLIT}" in str(refused.value)


def test_a_parent_in_the_beef_comes_before_a_held_copy() -> None:
    parent = _split()
    pid = txid_of_raw(parent)
    child = sign_p2pkh([_spend(pid, 2, 300)], [(SCRIPT, 250)])
    # a held entry under the parent's txid that says otherwise (a caller's stale or wrong copy): the BEEF's own
    # transaction is what the child is checked against
    wrong = {**HELD, pid: [SourceOutput(satoshis=10**6, locking_script=SCRIPT)] * 3}
    assert _verify(parent, child, held=wrong) == {pid: 200_000 - 300 * SPLIT, txid_of_raw(child): 50}


def test_a_parent_left_out_of_the_beef_comes_from_the_held_ones() -> None:
    child = sign_p2pkh([_spend(HELD_TXID, 1, 200_000)], [(SCRIPT, 199_900)])
    assert _verify(child) == {txid_of_raw(child): 100}
    with pytest.raises(Refusal) as refused:
        _verify(child, held={})
    assert refused.value.arc_code is ArcCode.INPUTS
