"""BRC-29 payment keys: published vectors, both parties' derivations, bsv-sdk's reference derivation, and a
BRC-29 output spent with the recomputed key through bsv-sdk's script interpreter."""

from __future__ import annotations

import pytest
from bsv.keys import PrivateKey as BsvPrivateKey
from bsv.utils.address import decode_address
from bsv.wallet.wallet_impl import ProtoWallet
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.chain.formats import SourceOutput, parse_transaction
from overlay_node.chain.validation import Policy, check_transaction
from overlay_node.crypto import brc42
from overlay_node.crypto.brc29 import (
    BRC29_PROTOCOL,
    brc29_invoice,
    check_nonce,
    new_nonce,
    payee_locking_script,
    payer_locking_script,
)
from overlay_node.crypto.keys import Identity
from overlay_node.crypto.scripts import hash160, p2pkh_for_key
from overlay_node.errors import BadRequest
from overlay_node.services.wallet_build import build_transaction
from overlay_node.store.records import UtxoRecord

# bsv-blockchain/go-wallet-toolbox pkg/brc29/fixtures_test.go (the reference toolbox's BRC-29 vectors): a
# sender, a recipient (private key 1), key id "Pr== Su==", and the address both sides must arrive at
SENDER_PRIVATE = "143ab18a84d3b25e1a13cefa90038411e5d2014590a2a4a57263d1593c8dee1c"
SENDER_PUBLIC = "0320bbfb879bbd6761ecd2962badbb41ba9d60ca88327d78b07ae7141af6b6c810"
RECIPIENT_PRIVATE = "0000000000000000000000000000000000000000000000000000000000000001"
RECIPIENT_PUBLIC = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
PREFIX, SUFFIX = "Pr==", "Su=="
EXPECTED_ADDRESS = "19bxE1pRYYtjZeQm7P8e2Ws5zMkm8NNuxx"
EXPECTED_TESTNET_ADDRESS = "mp7uX4uQMaKzLktNpx71rS5QrMMTzDP12u"

# bitcoin-sv/BRCs key-derivation/0042.md, the first vector of each table (the derivation BRC-29 rests on; the
# full tables are in test_brc42.py)
BRC42_PRIVATE = (
    "033f9160df035156f1c48e75eae99914fa1a1546bec19781e8eddb900200bff9d1",
    "6a1751169c111b4667a6539ee1be6b7cd9f6e9c8fe011a5f2fe31e03a15e0ede",
    "f3WCaUmnN9U=",
    "761656715bbfa172f8f9f58f5af95d9d0dfd69014cfdcacc9a245a10ff8893ef",
)
BRC42_PUBLIC = (
    "583755110a8c059de5cd81b8a04e1be884c46083ade3f779c1e022f6f89da94c",
    "02c0c1e1a1f7d247827d1bcf399f0ef2deef7695c322fd91a01a91378f101b6ffc",
    "IBioA4D/OaE=",
    "03c1bf5baadee39721ae8c9882b3cf324f0bf3b9eb3fc1b8af8089ca7a7c2e669f",
)


def _id(hex_key: str) -> Identity:
    return Identity.from_private_bytes(bytes.fromhex(hex_key))


def test_brc42_vectors() -> None:
    sender_pub, recipient_priv, invoice, expected = BRC42_PRIVATE
    assert brc42.derive_child_private_key(_id(recipient_priv), sender_pub, invoice).secret.hex() == expected
    sender_priv, recipient_pub, invoice, expected_pub = BRC42_PUBLIC
    assert brc42.derive_child_public_key(_id(sender_priv), recipient_pub, invoice).hex() == expected_pub


def test_brc29_invoice_number() -> None:
    assert brc29_invoice(PREFIX, SUFFIX) == "2-3241645161d8-Pr== Su=="
    assert BRC29_PROTOCOL == (2, "3241645161d8")


def test_sender_and_recipient_reach_the_published_address() -> None:
    sender, recipient = _id(SENDER_PRIVATE), _id(RECIPIENT_PRIVATE)
    assert sender.public_key_hex == SENDER_PUBLIC
    assert recipient.public_key_hex == RECIPIENT_PUBLIC
    expected_hash, _ = decode_address(EXPECTED_ADDRESS)
    testnet_hash, _ = decode_address(EXPECTED_TESTNET_ADDRESS)
    assert expected_hash == testnet_hash
    script = p2pkh_script_for_hash(bytes(expected_hash))
    # the payer (sender) locks to the recipient's child public key...
    assert payer_locking_script(sender, RECIPIENT_PUBLIC, PREFIX, SUFFIX) == script
    # ...and the payee (recipient) finds the same script from its child private key
    assert payee_locking_script(recipient, SENDER_PUBLIC, PREFIX, SUFFIX) == script


def p2pkh_script_for_hash(pubkey_hash: bytes) -> bytes:
    return b"\x76\xa9\x14" + pubkey_hash + b"\x88\xac"


@settings(max_examples=20, deadline=None)
@given(prefix_bytes=st.binary(min_size=3, max_size=32), suffix_bytes=st.binary(min_size=3, max_size=32))
def test_derivation_matches_bsv_sdk_proto_wallet(prefix_bytes: bytes, suffix_bytes: bytes) -> None:
    import base64

    prefix = base64.b64encode(prefix_bytes).decode()
    suffix = base64.b64encode(suffix_bytes).decode()
    payer, payee = Identity.generate(), Identity.generate()
    args = {"protocolID": [2, "3241645161d8"], "keyID": f"{prefix} {suffix}"}
    theirs = ProtoWallet(BsvPrivateKey(payer.private_bytes)).get_public_key(
        {**args, "counterparty": payee.public_key_hex}
    )["publicKey"]
    assert payer_locking_script(payer, payee.public_key_hex, prefix, suffix) == p2pkh_for_key(bytes.fromhex(theirs))
    own = ProtoWallet(BsvPrivateKey(payee.private_bytes)).get_public_key(
        {**args, "counterparty": payer.public_key_hex, "forSelf": True}
    )["publicKey"]
    assert payee_locking_script(payee, payer.public_key_hex, prefix, suffix) == p2pkh_for_key(bytes.fromhex(own))


@pytest.mark.parametrize(
    "bad", ["", "abc", "a b c d", "x" * 65, "not~base64", "Pr==\n", "c3VmZml4\n", "\nPr==", "Pr==\r\n", "Pr==\nPr=="]
)
def test_bad_prefixes_and_suffixes_are_refused(bad: str) -> None:
    with pytest.raises(BadRequest, match="derivation prefix"):
        check_nonce(bad, "derivation prefix")
    with pytest.raises(BadRequest, match="derivation prefix"):
        brc29_invoice(bad, "Su==")
    with pytest.raises(BadRequest, match="derivation suffix"):
        brc29_invoice("Pr==", bad)


def test_nonces_are_fresh_and_valid() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    for n in nonces:
        brc29_invoice(n, n)


def test_recipient_spends_a_brc29_output_with_the_recomputed_key() -> None:
    """What the wallet does with a received payment: recompute the key from (prefix, suffix, sender) and sign;
    bsv-sdk's interpreter accepts the spend."""
    sender, recipient = _id(SENDER_PRIVATE), _id(RECIPIENT_PRIVATE)
    script = payer_locking_script(sender, RECIPIENT_PUBLIC, PREFIX, SUFFIX)
    coin = UtxoRecord(
        txid="64faeaa2e3cbadaf82d8fa8c7ded508cb043c5d101671f43c084be2ac6163148",
        vout=0,
        satoshis=1_000,
        script=script,
        protocol="2-3241645161d8",
        key_id=f"{PREFIX} {SUFFIX}",
        counterparty=SENDER_PUBLIC,
        origin="payment",
    )

    def key_for(c: UtxoRecord) -> bytes:
        return bytes(brc42.derive_child_private_key(recipient, c.counterparty, c.invoice).secret)

    built = build_transaction([coin], [(p2pkh_for_key(recipient.public_key), 999)], key_for, fee=1)
    sources = {(coin.txid, 0): SourceOutput(satoshis=1_000, locking_script=script)}
    checked = check_transaction(parse_transaction(built.raw), sources, Policy())
    assert checked.fee == 1
    # a key derived with another suffix cannot spend it
    wrong = build_transaction(
        [coin],
        [(p2pkh_for_key(recipient.public_key), 999)],
        lambda c: bytes(
            brc42.derive_child_private_key(recipient, c.counterparty, brc29_invoice(PREFIX, "Xx==")).secret
        ),
        fee=1,
    )
    with pytest.raises(BadRequest, match="script failed"):
        check_transaction(parse_transaction(wrong.raw), sources, Policy())
    assert hash160(b"") == bytes.fromhex("b472a266d0bd89c13706a4132ccfb16f7c3b9fcb")
