"""The payment keys on the payee's hot path, against independent computations: our own BRC-42 child public key
(computed from the child private scalar) is bsv-sdk's ``forSelf`` key and the reference formula ``Pub + h*G``,
and the BRC-29 invoice number (built from a constant head) is the BRC-43 one, with the same refusals."""

from __future__ import annotations

import pytest
from bsv.keys import PrivateKey as BsvPrivateKey
from bsv.wallet.wallet_impl import ProtoWallet
from coincurve import PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.crypto import brc42
from overlay_node.crypto.brc29 import (
    BRC29_PROTOCOL,
    brc29_invoice,
    new_nonce,
    payee_locking_script,
    payer_locking_script,
)
from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest

NONCE = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-", min_size=4, max_size=64)


@settings(max_examples=25, deadline=None)
@given(prefix=NONCE, suffix=NONCE, level=st.sampled_from([0, 1, 2]))
def test_own_child_public_is_the_reference_key(prefix: str, suffix: str, level: int) -> None:
    me, other = Identity.generate(), Identity.generate()
    key_id = f"{prefix} {suffix}"
    invoice = brc42.invoice_number((level, "3241645161d8"), key_id)
    ours = brc42.own_child_public(me, other.public_key_hex, invoice)
    # the formula of BRC-42 step 2: our root public key plus h*G
    tweak = brc42.brc42_tweak(me.shared_secret(other.public_key), invoice)
    assert ours == PublicKey(me.public_key).add(tweak).format(compressed=True)
    # bsv-sdk's ProtoWallet, forSelf
    answer = ProtoWallet(BsvPrivateKey(me.private_bytes)).get_public_key(
        {"protocolID": [level, "3241645161d8"], "keyID": key_id, "counterparty": other.public_key_hex, "forSelf": True}
    )
    assert ours.hex() == answer["publicKey"]
    # what the counterparty derives for us, and the public key of our child private key
    assert ours == brc42.derive_child_public_key(other, me.public_key, invoice)
    assert ours == PublicKey.from_valid_secret(brc42.child_secret(me, other.public_key, invoice)).format()


def test_derive_public_key_for_self_goes_through_the_same_path() -> None:
    me, other = Identity.generate(), Identity.generate()
    ours = brc42.derive_public_key(me, (2, "auth message signature"), "k1", other.public_key_hex, for_self=True)
    theirs = brc42.derive_public_key(other, (2, "auth message signature"), "k1", me.public_key_hex)
    assert ours == theirs


@settings(max_examples=25, deadline=None)
@given(prefix=NONCE, suffix=NONCE)
def test_brc29_invoice_is_the_brc43_invoice_number(prefix: str, suffix: str) -> None:
    assert brc29_invoice(prefix, suffix) == brc42.invoice_number(BRC29_PROTOCOL, f"{prefix} {suffix}")


@pytest.mark.parametrize(
    ("prefix", "suffix", "what"),
    [
        ("abc", "abcd", "derivation prefix"),
        ("abcd", "ab cd", "derivation suffix"),
        ("a" * 65, "abcd", "derivation prefix"),
        ("abcd", "", "derivation suffix"),
        ("abcd", "ab\x00d", "derivation suffix"),
    ],
)
def test_brc29_invoice_refuses_what_is_not_a_nonce(prefix: str, suffix: str, what: str) -> None:
    with pytest.raises(BadRequest, match=what):
        brc29_invoice(prefix, suffix)


def test_payer_and_payee_lock_output_0_to_one_key() -> None:
    payee, payer = Identity.generate(), Identity.generate()
    for _ in range(5):
        prefix, suffix = new_nonce(), new_nonce()
        assert payee_locking_script(payee, payer.public_key_hex, prefix, suffix) == payer_locking_script(
            payer, payee.public_key_hex, prefix, suffix
        )
