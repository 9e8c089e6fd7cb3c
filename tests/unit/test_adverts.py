"""SHIP/SLAP adverts: BRC-88 signing as the reference advertiser does it, checked the way the reference topic
managers check it (through bsv-sdk, the field's own library), and the advert value codec under bad input."""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from typing import Any

import cbor2
import pytest
from bsv.keys import PrivateKey
from bsv.transaction.pushdrop import PushDrop, build_lock_before_pushdrop
from bsv.wallet.wallet_impl import ProtoWallet
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest
from overlay_node.protocol.adverts import (
    Advert,
    AdvertError,
    Endpoints,
    Filter,
    Offer,
    decode_advert,
    encode_advert,
    host_score,
    kind_of,
    make_advert,
    signature_is_linked,
    token_fields,
)

ENDPOINTS = Endpoints(swarm=("ws://127.0.0.1:4760/p2p/1",), http="http://127.0.0.1:4761", dht="127.0.0.1:4760")


def advert(identity: Identity, name: str = "tm_weather", **kw: Any) -> Advert:
    return make_advert(
        identity, name=name, uri="https://node.example.com", endpoints=ENDPOINTS, expires=2_000_000_000, **kw
    )


@pytest.mark.parametrize(("name", "protocol"), [("tm_weather", "service host interconnect"),
                                                 ("ls_weather_feed", "service lookup availability")])  # fmt: skip
def test_signature_checks_out_with_the_official_rules(name: str, protocol: str) -> None:
    identity = Identity.generate()
    ad = advert(identity, name)
    fields = token_fields(ad.kind, ad.identity_key, ad.uri, ad.name)
    assert fields[0] == (b"SHIP" if name.startswith("tm_") else b"SLAP")

    # the reference check, done by bsv-sdk as an "anyone" wallet with counterparty = f1
    anyone = ProtoWallet(PrivateKey(1))
    expected = anyone.get_public_key(
        {"protocolID": [2, protocol], "keyID": "1", "counterparty": ad.identity_key.hex(), "forSelf": False}
    )["publicKey"]
    assert expected == ad.locking_key.hex()
    verdict = anyone.verify_signature(
        {
            "protocolID": [2, protocol],
            "keyID": "1",
            "counterparty": ad.identity_key.hex(),
            "data": b"".join(fields),
            "signature": ad.signature,
        }
    )
    assert verdict == {"valid": True}

    # and the advertiser's own wallet (forSelf) locks to the same key the token carries
    own = ProtoWallet(PrivateKey(identity.private_bytes))
    mine = own.get_public_key({"protocolID": [2, protocol], "keyID": "1", "counterparty": "anyone", "forSelf": True})
    assert mine["publicKey"] == ad.locking_key.hex()

    # the five fields make a PushDrop token that bsv-sdk decodes back to our fields
    script = build_lock_before_pushdrop([*fields, ad.signature], ad.locking_key)
    with contextlib.redirect_stdout(io.StringIO()):  # PushDrop.decode prints debug lines (a known bsv-sdk defect)
        decoded = PushDrop.decode(bytes.fromhex(script))
    assert decoded["lockingPublicKey"].hex() == ad.locking_key.hex()
    assert [bytes(f) for f in decoded["fields"]] == [*fields, ad.signature]


def test_codec_round_trip_and_publisher_rules() -> None:
    identity = Identity.generate()
    offer = Offer(price=5, pricing_model="per-packet", capabilities=("ndjson",), region="eu")
    ad = advert(identity, "ls_prices", offer=offer)
    value = encode_advert(ad)
    assert len(value) < 1024
    assert decode_advert(value, publisher=identity.public_key) == ad
    with pytest.raises(AdvertError, match="published by") as info:
        decode_advert(value, publisher=Identity.generate().public_key)
    assert info.value.reason == "publisher_mismatch"


def test_forged_adverts_are_refused() -> None:
    honest, forger = Identity.generate(), Identity.generate()
    ad = advert(honest)
    data = cbor2.loads(encode_advert(ad))
    # the forger claims honest's identity with its own signature
    forged = advert(forger)
    data_forged = dict(data, s=forged.signature)
    with pytest.raises(AdvertError) as info:
        decode_advert(cbor2.dumps(data_forged), publisher=honest.public_key)
    assert info.value.reason == "bad_advert_signature"
    # changing the URI or topic after signing breaks the signature
    for key, value in (("u", "https://evil.example.com"), ("n", "tm_other")):
        with pytest.raises(AdvertError):
            decode_advert(cbor2.dumps(dict(data, **{key: value})), publisher=honest.public_key)
    # a token whose locking key is not the advertiser's derived key fails the linkage check
    assert signature_is_linked(ad)
    assert not signature_is_linked(replace(ad, locking_key=Identity.generate().public_key))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_values_raise_only_advert_error(blob: bytes) -> None:
    with pytest.raises(AdvertError):
        decode_advert(blob, publisher=b"\x02" * 33)


def test_names_follow_brc87() -> None:
    assert kind_of("tm_ship") == "SHIP"
    assert kind_of("ls_slap") == "SLAP"
    for bad in ("tm_", "tm_Weather", "tm_w2", "tm__x", "xx_weather", "tm_" + "a" * 60, "ls_x_"):
        with pytest.raises(BadRequest):
            kind_of(bad)


def test_filters_and_score() -> None:
    offer = Offer(price=10, capabilities=("ndjson", "gzip"), region="eu", service_type="feed")
    ad = advert(Identity.generate(), offer=offer)
    assert Filter().matches(ad)
    assert Filter(capabilities=("gzip",), max_price=10, region="eu", service_type="feed").matches(ad)
    assert not Filter(max_price=9).matches(ad)
    assert not Filter(capabilities=("csv",)).matches(ad)
    assert not Filter(region="us").matches(ad)
    assert host_score(None, 0, 0) == 0.5
    assert host_score(5.0, 0, 10) > host_score(50.0, 0, 10) > host_score(50.0, 5, 10)


def test_a_token_outpoint_with_a_trailing_newline_is_refused() -> None:
    identity = Identity.generate()
    outpoint = "ab" * 32 + ".0"
    ad = advert(identity, token=outpoint)
    assert decode_advert(encode_advert(ad), publisher=identity.public_key).token == outpoint
    data = cbor2.loads(encode_advert(ad))
    data["o"] = outpoint + "\n"  # the token's outpoint is not among the signed fields: only its form guards it
    with pytest.raises(AdvertError, match=r"not a txid\.vout outpoint") as info:
        decode_advert(cbor2.dumps(data, canonical=True), publisher=identity.public_key)
    assert info.value.reason == "malformed_advert"
