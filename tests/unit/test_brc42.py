"""BRC-42/43 derivation, BRC-3 signatures and HMACs: published vectors and cross-checks with bsv-sdk's ProtoWallet."""

from __future__ import annotations

import hashlib

import pytest
from bsv.keys import PrivateKey as BsvPrivateKey
from bsv.wallet.wallet_impl import ProtoWallet
from Cryptodome.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.crypto import brc42
from overlay_node.crypto.keys import SECP256K1_N, Identity, parse_public_key
from overlay_node.errors import BadRequest

# bitcoin-sv/BRCs key-derivation/0042.md (d5444675), "For Testing Private Key Derivation"
PRIVATE_VECTORS = [
    (
        "033f9160df035156f1c48e75eae99914fa1a1546bec19781e8eddb900200bff9d1",
        "6a1751169c111b4667a6539ee1be6b7cd9f6e9c8fe011a5f2fe31e03a15e0ede",
        "f3WCaUmnN9U=",
        "761656715bbfa172f8f9f58f5af95d9d0dfd69014cfdcacc9a245a10ff8893ef",
    ),
    (
        "027775fa43959548497eb510541ac34b01d5ee9ea768de74244a4a25f7b60fae8d",
        "cab2500e206f31bc18a8af9d6f44f0b9a208c32d5cca2b22acfe9d1a213b2f36",
        "2Ska++APzEc=",
        "09f2b48bd75f4da6429ac70b5dce863d5ed2b350b6f2119af5626914bdb7c276",
    ),
    (
        "0338d2e0d12ba645578b0955026ee7554889ae4c530bd7a3b6f688233d763e169f",
        "7a66d0896f2c4c2c9ac55670c71a9bc1bdbdfb4e8786ee5137cea1d0a05b6f20",
        "cN/yQ7+k7pg=",
        "7114cd9afd1eade02f76703cc976c241246a2f26f5c4b7a3a0150ecc745da9f0",
    ),
    (
        "02830212a32a47e68b98d477000bde08cb916f4d44ef49d47ccd4918d9aaabe9c8",
        "6e8c3da5f2fb0306a88d6bcd427cbfba0b9c7f4c930c43122a973d620ffa3036",
        "m2/QAsmwaA4=",
        "f1d6fb05da1225feeddd1cf4100128afe09c3c1aadbffbd5c8bd10d329ef8f40",
    ),
    (
        "03f20a7e71c4b276753969e8b7e8b67e2dbafc3958d66ecba98dedc60a6615336d",
        "e9d174eff5708a0a41b32624f9b9cc97ef08f8931ed188ee58d5390cad2bf68e",
        "jgpUIjWFlVQ=",
        "c5677c533f17c30f79a40744b18085632b262c0c13d87f3848c385f1389f79a6",
    ),
]

# same file, "For Testing Public Key Derivation"
PUBLIC_VECTORS = [
    (
        "583755110a8c059de5cd81b8a04e1be884c46083ade3f779c1e022f6f89da94c",
        "02c0c1e1a1f7d247827d1bcf399f0ef2deef7695c322fd91a01a91378f101b6ffc",
        "IBioA4D/OaE=",
        "03c1bf5baadee39721ae8c9882b3cf324f0bf3b9eb3fc1b8af8089ca7a7c2e669f",
    ),
    (
        "2c378b43d887d72200639890c11d79e8f22728d032a5733ba3d7be623d1bb118",
        "039a9da906ecb8ced5c87971e9c2e7c921e66ad450fd4fc0a7d569fdb5bede8e0f",
        "PWYuo9PDKvI=",
        "0398cdf4b56a3b2e106224ff3be5253afd5b72de735d647831be51c713c9077848",
    ),
    (
        "d5a5f70b373ce164998dff7ecd93260d7e80356d3d10abf928fb267f0a6c7be6",
        "02745623f4e5de046b6ab59ce837efa1a959a8f28286ce9154a4781ec033b85029",
        "X9pnS+bByrM=",
        "0273eec9380c1a11c5a905e86c2d036e70cbefd8991d9a0cfca671f5e0bbea4a3c",
    ),
    (
        "46cd68165fd5d12d2d6519b02feb3f4d9c083109de1bfaa2b5c4836ba717523c",
        "031e18bb0bbd3162b886007c55214c3c952bb2ae6c33dd06f57d891a60976003b1",
        "+ktmYRHv3uQ=",
        "034c5c6bf2e52e8de8b2eb75883090ed7d1db234270907f1b0d1c2de1ddee5005d",
    ),
    (
        "7c98b8abd7967485cfb7437f9c56dd1e48ceb21a4085b8cdeb2a647f62012db4",
        "03c8885f1e1ab4facd0f3272bb7a48b003d2e608e1619fb38b8be69336ab828f37",
        "PPfDTTcl1ao=",
        "03304b41cfa726096ffd9d8907fe0835f888869eda9653bca34eb7bcab870d3779",
    ),
]

# bitcoin-sv/BRCs wallet/0002.md and wallet/0003.md compliance vectors (their byte arrays, as hex)
BRC2_PRIVATE = "6a2991c9de20e38b31d7ea147bf55f5039e4bbc073160f5e0d541d1f17e321b8"
BRC2_COUNTERPARTY = "0294c479f762f6baa97fbcd4393564c1d7bd8336ebd15928135bbcf575cd1a71a1"
BRC2_CIPHERTEXT = bytes.fromhex(
    "fccbd8b81da1dfd410c15e631f8c632b3decb8433669c72f0b13b87f02a57d09bcc3c4277882d55fba59401c015014d59f85"
    "62fd806971f7c598ec40a6cf718641263a187f918cce2f469254ba485f239a70b237487c"
)
BRC2_HMAC = bytes.fromhex("51f01299a32dae5509f68e7dd185524cfe672eb6563bdb3d7e1eb0e8e964ea0e")
BRC3_SIGNATURE = bytes.fromhex(
    "304402202b223a9cdb2032461df09b89583cc85ff3c6c91538528d7045c4aa499c062c300220767dfec92c57b1aa5d0bc186"
    "1246091fea1baab13660b58ca6c4900ee6766a69"
)

SIG = (2, "auth message signature")


def _identity(hex_key: str) -> Identity:
    return Identity.from_private_bytes(bytes.fromhex(hex_key))


def _wallet(identity: Identity) -> ProtoWallet:
    return ProtoWallet(BsvPrivateKey(identity.private_bytes))


@pytest.mark.parametrize(("sender_pub", "recipient_priv", "invoice", "expected"), PRIVATE_VECTORS)
def test_private_derivation_vectors(sender_pub: str, recipient_priv: str, invoice: str, expected: str) -> None:
    child = brc42.derive_child_private_key(_identity(recipient_priv), sender_pub, invoice)
    assert child.secret.hex() == expected


@pytest.mark.parametrize(("sender_priv", "recipient_pub", "invoice", "expected"), PUBLIC_VECTORS)
def test_public_derivation_vectors(sender_priv: str, recipient_pub: str, invoice: str, expected: str) -> None:
    assert brc42.derive_child_public_key(_identity(sender_priv), recipient_pub, invoice).hex() == expected


def test_both_parties_derive_one_key_pair() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    pub = brc42.derive_public_key(alice, SIG, "7", bob.public_key)
    priv = brc42.derive_private_key(bob, SIG, "7", alice.public_key_hex)
    assert priv.public_key.format() == pub
    assert brc42.derive_public_key(bob, SIG, "7", alice.public_key, for_self=True) == pub


def test_brc2_symmetric_key_vector_decrypts() -> None:
    key = brc42.derive_symmetric_key(_identity(BRC2_PRIVATE), (2, "BRC2 Test"), "42", BRC2_COUNTERPARTY)
    iv, body, tag = BRC2_CIPHERTEXT[:32], BRC2_CIPHERTEXT[32:-16], BRC2_CIPHERTEXT[-16:]
    plain = AES.new(key, AES.MODE_GCM, nonce=iv).decrypt_and_verify(body, tag)
    assert plain == b"BRC-2 Encryption Compliance Validated!"


def test_brc2_hmac_vector() -> None:
    me = _identity(BRC2_PRIVATE)
    data = b"BRC-2 HMAC Compliance Validated!"
    kwargs = {"protocol": (2, "BRC2 Test"), "key_id": "42", "counterparty": BRC2_COUNTERPARTY}
    assert brc42.create_hmac(me, data, **kwargs) == BRC2_HMAC  # type: ignore[arg-type]
    assert brc42.verify_hmac(me, data, BRC2_HMAC, **kwargs)  # type: ignore[arg-type]
    assert not brc42.verify_hmac(me, data + b"!", BRC2_HMAC, **kwargs)  # type: ignore[arg-type]


def test_brc3_signature_vector_verifies_for_anyone() -> None:
    anyone = Identity.from_private_bytes((1).to_bytes(32, "big"))
    data = b"BRC-3 Compliance Validated!"
    kwargs = {"protocol": (2, "BRC3 Test"), "key_id": "42", "counterparty": BRC2_COUNTERPARTY}
    assert brc42.verify_signature(anyone, data, BRC3_SIGNATURE, **kwargs)  # type: ignore[arg-type]
    assert not brc42.verify_signature(anyone, b"other", BRC3_SIGNATURE, **kwargs)  # type: ignore[arg-type]


@settings(max_examples=15, deadline=None)
@given(data=st.binary(max_size=200), key_id=st.text(min_size=1, max_size=40), level=st.sampled_from([0, 1, 2]))
def test_signatures_interoperate_with_bsv_sdk(data: bytes, key_id: str, level: int) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    protocol = (level, "auth message signature")
    ours = brc42.create_signature(alice, data, protocol=protocol, key_id=key_id, counterparty=bob.public_key_hex)
    args = {"protocolID": [level, protocol[1]], "keyID": key_id, "data": data}
    checked = _wallet(bob).verify_signature({**args, "counterparty": alice.public_key_hex, "signature": ours})
    assert checked == {"valid": True}
    theirs = _wallet(alice).create_signature({**args, "counterparty": bob.public_key_hex})["signature"]
    assert brc42.verify_signature(
        bob, data, theirs, protocol=protocol, key_id=key_id, counterparty=alice.public_key_hex
    )
    assert not brc42.verify_signature(
        bob, data + b"x", theirs, protocol=protocol, key_id=key_id, counterparty=alice.public_key_hex
    )


def _seeded(n: int) -> Identity:
    return Identity.from_private_bytes(hashlib.sha256(b"hmac key %d" % n).digest())


@pytest.mark.parametrize("counterparty", ["self", "anyone", "other"])
def test_hmacs_match_bsv_sdk(counterparty: str) -> None:
    # fixed keys: bsv-sdk's own HMAC is wrong for about 1 key in 250 (the next test), so random ones made this flaky
    me, other = _seeded(0), _seeded(3)
    cp = other.public_key_hex if counterparty == "other" else counterparty
    data = b"some data"
    ours = brc42.create_hmac(me, data, protocol=(2, "server hmac"), key_id="k", counterparty=cp)
    theirs = _wallet(me).create_hmac({"protocolID": [2, "server hmac"], "keyID": "k", "counterparty": cp, "data": data})
    assert theirs["hmac"] == ours
    if counterparty == "other":  # the counterparty computes the same HMAC
        assert brc42.verify_hmac(other, data, ours, protocol=(2, "server hmac"), key_id="k", counterparty=me.public_key)


@pytest.mark.parametrize(
    ("secret", "counterparty", "expected"),
    [
        (
            "1d42bc4a09531f58f4c56078291136d6a5692e344dcf0b4b0f1114f6fe2db471",
            "self",
            "4d2668349fb0d7ee308bd75e858e874c01cbb4ffdc0f5f1875dc824fa9b59fb8",
        ),
        (
            "e65836413396a0a1fd167699a2cd828d32251d60f720df98bb5663e4dc445691",
            "anyone",
            "1c3404e3d9cf7f54d62b016819561dccf26f719962a1f24dc832e829c561cc44",
        ),
    ],
)
def test_hmacs_match_the_typescript_sdk_where_bsv_sdk_does_not(secret: str, counterparty: str, expected: str) -> None:
    # ``expected``: @bsv/sdk 2.1.0's ProtoWallet.createHmac ([2, "server hmac"], key id "k", data "some data") for these
    # keys, on which bsv-sdk's ProtoWallet.create_hmac gives another value (about 1 key in 250 for each counterparty:
    # the HMAC key is the symmetric key's minimal bytes, shorter than 32 for those keys; see test_http_auth.py)
    me = _identity(secret)
    data = b"some data"
    ours = brc42.create_hmac(me, data, protocol=(2, "server hmac"), key_id="k", counterparty=counterparty)
    assert ours.hex() == expected


def test_anyone_signature_is_checkable_by_everyone() -> None:
    signer = Identity.generate()
    sig = brc42.create_signature(signer, b"d", protocol=(1, "document signing"), key_id="1")  # counterparty anyone
    verifier = Identity.from_private_bytes((1).to_bytes(32, "big"))
    assert brc42.verify_signature(
        verifier, b"d", sig, protocol=(1, "document signing"), key_id="1", counterparty=signer.public_key
    )
    # the signer checks its own signature with for_self
    assert brc42.verify_signature(
        signer, b"d", sig, protocol=(1, "document signing"), key_id="1", counterparty="anyone", for_self=True
    )


def test_high_s_signatures_are_accepted() -> None:
    signer, verifier = Identity.generate(), Identity.generate()
    sig = brc42.create_signature(signer, b"m", protocol=SIG, key_id="1", counterparty=verifier.public_key)
    r_len = sig[3]
    r = sig[4 : 4 + r_len]
    s = int.from_bytes(sig[6 + r_len :], "big")
    high = (SECP256K1_N - s).to_bytes(33, "big")  # 0x00-prefixed: the high half has its top bit set
    der_s = bytes([2, len(high)]) + high
    body = bytes([2, len(r)]) + r + der_s
    high_sig = bytes([0x30, len(body)]) + body
    assert brc42.verify_signature(verifier, b"m", high_sig, protocol=SIG, key_id="1", counterparty=signer.public_key)


def test_garbage_signatures_are_invalid_not_errors() -> None:
    me = Identity.generate()
    for sig in (b"", b"\x30", b"\x00" * 70, bytes(range(72))):
        assert not brc42.verify_signature(me, b"d", sig, protocol=SIG, key_id="1", counterparty="self")


@pytest.mark.parametrize(
    ("protocol", "key_id", "expected"),
    [
        ((2, "  Auth Message Signature "), "1", "2-auth message signature-1"),
        ((0, "hello world"), "x y", "0-hello world-x y"),
        ((1, "a" * 280), "k" * 1033, f"1-{'a' * 280}-{'k' * 1033}"),
    ],
)
def test_invoice_numbers(protocol: tuple[int, str], key_id: str, expected: str) -> None:
    assert brc42.invoice_number(protocol, key_id) == expected


@pytest.mark.parametrize(
    ("protocol", "key_id", "message"),
    [
        ((3, "valid name"), "1", "security level"),
        ((-1, "valid name"), "1", "security level"),
        ((True, "valid name"), "1", "security level"),
        ((2, "abcd"), "1", "5-280"),
        ((2, "a" * 281), "1", "5-280"),
        ((2, "two  spaces"), "1", "consecutive"),
        ((2, "bad-char"), "1", "letters"),
        ((2, "unicode é"), "1", "letters"),
        ((2, "my protocol"), "1", "protocol"),
        ((2, "valid name"), "", "1-1033"),
        ((2, "valid name"), "é" * 517, "1-1033"),
    ],
)
def test_invoice_number_rules(protocol: tuple[int, str], key_id: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        brc42.invoice_number(protocol, key_id)


def test_identity_basics() -> None:
    me = Identity.generate()
    again = Identity.from_private_bytes(me.private_bytes)
    assert again.public_key == me.public_key
    assert len(me.public_key) == 33
    assert me.public_key_hex == me.public_key.hex()
    assert me.private_bytes.hex() not in repr(me)
    other = Identity.generate()
    assert me.shared_secret(other.public_key) == other.shared_secret(me.public_key_hex)
    assert me.shared_secret(other.public_key) == me.shared_secret(other.public_key)  # cached path
    assert len(me.shared_secret(other.public_key)) == 33


@pytest.mark.parametrize("raw", [b"", b"\x00" * 32, SECP256K1_N.to_bytes(32, "big"), b"\x01" * 31])
def test_bad_private_keys(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        Identity.from_private_bytes(raw)


@pytest.mark.parametrize(
    "key",
    ["", "zz" * 33, "04" + "11" * 32, b"\x02" + b"\x00" * 32, b"\x02" * 10, "02" + "ff" * 32, 5],
)
def test_bad_public_keys(key: object) -> None:
    with pytest.raises(BadRequest):
        parse_public_key(key)  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        brc42.counterparty_public_key(Identity.generate(), key)  # type: ignore[arg-type]


def test_tweak_is_reduced_mod_n() -> None:
    # any shared secret and invoice give a scalar below n
    tweak = brc42.brc42_tweak(hashlib.sha256(b"x").digest(), "inv")
    assert int.from_bytes(tweak, "big") < SECP256K1_N


# -- checking a child key's signature without computing the child key -------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    secret=st.integers(min_value=1, max_value=SECP256K1_N - 1),
    tweak=st.integers(min_value=0, max_value=SECP256K1_N - 1),
    digest=st.binary(min_size=32, max_size=32),
    other=st.binary(min_size=32, max_size=32),
    high_s=st.booleans(),
)
def test_tweaked_verification_agrees_with_the_child_key(
    secret: int, tweak: int, digest: bytes, other: bytes, high_s: bool
) -> None:
    from coincurve import PrivateKey, PublicKey
    from coincurve.ecdsa import cdata_to_der, der_to_cdata

    from overlay_node.crypto.keys import ecdsa_verify_digest, ecdsa_verify_tweaked

    child_secret = (secret + tweak) % SECP256K1_N
    if child_secret == 0:
        return
    base = PrivateKey(secret.to_bytes(32, "big")).public_key
    child = PublicKey.from_valid_secret(child_secret.to_bytes(32, "big"))
    sig = PrivateKey(child_secret.to_bytes(32, "big")).sign(digest, hasher=None)
    if high_s:  # the same signature with s -> n - s, as other libraries may write it
        der = cdata_to_der(der_to_cdata(sig))
        r_len = der[3]
        r = int.from_bytes(der[4 : 4 + r_len], "big")
        s = int.from_bytes(der[6 + r_len :], "big")
        sig = _der(r, SECP256K1_N - s)
    assert ecdsa_verify_digest(child, sig, digest)
    assert ecdsa_verify_tweaked(base, tweak, sig, digest)
    if other != digest:
        assert not ecdsa_verify_tweaked(base, tweak, sig, other)
    assert not ecdsa_verify_tweaked(base, (tweak + 1) % SECP256K1_N, sig, digest)
    assert not ecdsa_verify_tweaked(base, tweak, b"\x30\x02\x05\x00", digest)


def _der(r: int, s: int) -> bytes:
    def integer(v: int) -> bytes:
        body = v.to_bytes((v.bit_length() + 8) // 8, "big")  # a leading zero when the top bit is set
        return b"\x02" + bytes([len(body)]) + body

    inner = integer(r) + integer(s)
    return b"\x30" + bytes([len(inner)]) + inner


def test_a_signature_for_anyone_is_checked_without_deriving_the_child_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A quote or receipt signed under a fresh key id (its quote id) costs one ECDSA verification: the signer's
    child key (a multiplication of G and a point addition) is not computed."""
    signer = Identity.generate()
    data = b"a quote"
    protocol = (2, "overlay payment quote")
    sig = brc42.sign_for_anyone(signer, protocol, "a fresh key id", data)

    def computed(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the child key was computed")

    from coincurve import PublicKey

    monkeypatch.setattr(PublicKey, "from_valid_secret", computed)
    monkeypatch.setattr(PublicKey, "combine_keys", computed)
    assert brc42.verify_for_anyone(signer.public_key_hex, protocol, "a fresh key id", data, sig)
    assert not brc42.verify_for_anyone(signer.public_key_hex, protocol, "another key id", data, sig)
