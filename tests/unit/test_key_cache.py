"""The BRC-42 hot path (``crypto/brc42.py``'s ``child_secret`` ... ``verify_for_anyone``) against the reference-shaped
API, and the caches an identity owns (``crypto/keys.py``'s ``KeyCache``): results never depend on what is cached,
and every table stays within its bound."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.crypto import brc42
from overlay_node.crypto.keys import Identity, KeyCache, ecdsa_verify_digest, parse_public_key, sign_digest
from overlay_node.errors import BadRequest

ALICE, BOB = Identity.generate(), Identity.generate()
PROTOCOL = (2, "overlay payment receipt")


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet="abcdef0123456789:-", min_size=1, max_size=40))
def test_hot_path_signatures_are_the_reference_ones(key_id: str) -> None:
    data = key_id.encode() * 3
    sig = brc42.sign_for_anyone(ALICE, PROTOCOL, key_id, data)
    assert sig == brc42.create_signature(ALICE, data, protocol=PROTOCOL, key_id=key_id, counterparty="anyone")
    assert sig == brc42.sign_for_anyone(ALICE, PROTOCOL, key_id, data)  # remembered key, same signature
    for _ in range(2):  # the derived key computed, then remembered
        assert brc42.verify_for_anyone(ALICE.public_key_hex, PROTOCOL, key_id, data, sig)
        assert brc42.verify_for_anyone(ALICE.public_key, PROTOCOL, key_id, data, sig)
    assert brc42.verify_signature(
        brc42.ANYONE, data, sig, protocol=PROTOCOL, key_id=key_id, counterparty=ALICE.public_key
    )
    assert not brc42.verify_for_anyone(BOB.public_key_hex, PROTOCOL, key_id, data, sig)
    assert not brc42.verify_for_anyone(ALICE.public_key_hex, PROTOCOL, key_id, data + b"!", sig)


def test_a_signer_that_is_not_a_key_is_not_valid() -> None:
    sig = brc42.sign_for_anyone(ALICE, PROTOCOL, "k", b"d")
    for signer in ("zz" * 33, "02" + "ff" * 32, "", "0411"):
        assert not brc42.verify_for_anyone(signer, PROTOCOL, "k", b"d", sig)


def test_child_keys_agree_across_the_api() -> None:
    invoice = "2-3241645161d8-Pr== Su=="
    secret = brc42.child_secret(BOB, ALICE.public_key_hex, invoice)
    assert brc42.derive_child_private_key(BOB, ALICE.public_key, invoice).secret == secret
    public = brc42.own_child_public(BOB, ALICE.public_key, invoice)
    assert brc42.own_child_key(BOB, ALICE.public_key_hex, invoice) == (secret, public)
    assert brc42.derive_child_public_key(ALICE, BOB.public_key_hex, invoice) == public
    digest = hashlib.sha256(b"x").digest()
    assert ecdsa_verify_digest(parse_public_key(public), sign_digest(secret, digest), digest)


def test_every_table_is_bounded() -> None:
    cache = KeyCache(peers=3, children=2)
    me = Identity.generate()
    me.cache = cache
    peers = [Identity.generate() for _ in range(6)]
    for i, peer in enumerate(peers):
        brc42.derive_child_public_key(me, peer.public_key, f"2-test-{i}")
        brc42.sign_for_anyone(me, PROTOCOL, f"key {i}", b"d")
    assert len(cache.ecdh) == 3
    assert len(cache.points) == 3
    assert len(cache.secrets) == 2
    # what was forgotten is computed again, the same
    assert brc42.derive_child_public_key(me, peers[0].public_key, "2-test-0") == brc42.derive_child_public_key(
        Identity.from_private_bytes(me.private_bytes), peers[0].public_key, "2-test-0"
    )


def test_checked_key_hex() -> None:
    assert brc42.checked_key_hex(ALICE, BOB.public_key) == BOB.public_key_hex
    assert brc42.checked_key_hex(ALICE, BOB.public_key_hex.upper()) == BOB.public_key_hex
    for bad in ("zz" * 33, "02" + "ff" * 32, b"\x02" * 10):
        with pytest.raises(BadRequest):
            brc42.checked_key_hex(ALICE, bad)
