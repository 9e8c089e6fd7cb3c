"""Adverts of one resource (a stream) and the index records discovery without a name reads (protocol/adverts.py)."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest
from overlay_node.protocol.adverts import (
    MAX_INDEX_REFS,
    AdvertError,
    Endpoints,
    Offer,
    decode_advert,
    decode_index,
    dht_name,
    encode_advert,
    encode_index,
    index_terms,
    make_advert,
)

ENDPOINTS = Endpoints(swarm=("ws://127.0.0.1:1/p2p/1",), http="http://127.0.0.1:2", dht="127.0.0.1:3")


def test_an_advert_of_one_resource_round_trips_under_its_own_key() -> None:
    identity = Identity.generate()
    offer = Offer(service_type="streaming", pricing_model="per-packet", price=2, capabilities=("news",))
    ad = make_advert(
        identity, name="ls_stream", uri="https://x", endpoints=ENDPOINTS, expires=10, offer=offer, resource="tick.1"
    )
    assert ad.dht_key_name == ("slap", "ls_stream/tick.1") == dht_name("SLAP", "ls_stream", "tick.1")
    decoded = decode_advert(encode_advert(ad), publisher=identity.public_key)
    assert decoded == ad
    assert decoded.as_dict()["resource"] == "tick.1"
    # an advert without a resource is encoded exactly as before (no "i" key) and keeps its old key
    whole = make_advert(identity, name="ls_stream", uri="https://x", endpoints=ENDPOINTS, expires=10)
    assert "i" not in cbor2.loads(encode_advert(whole))
    assert whole.dht_key_name == ("slap", "ls_stream")


@pytest.mark.parametrize("resource", ["", "-lead", "a/b", "x" * 129, "sp ace", "tick.1\n"])
def test_bad_resources_are_refused(resource: str) -> None:
    identity = Identity.generate()
    if resource == "":
        make_advert(identity, name="ls_stream", uri="https://x", endpoints=ENDPOINTS, expires=1, resource=resource)
        return
    with pytest.raises(BadRequest, match="resource"):
        make_advert(identity, name="ls_stream", uri="https://x", endpoints=ENDPOINTS, expires=1, resource=resource)
    good = make_advert(identity, name="ls_stream", uri="https://x", endpoints=ENDPOINTS, expires=1, resource="ok")
    forged = cbor2.loads(encode_advert(good))
    forged["i"] = resource
    with pytest.raises(AdvertError):
        decode_advert(cbor2.dumps(forged, canonical=True), publisher=identity.public_key)


def test_index_terms_and_codec() -> None:
    assert index_terms(Offer(service_type="streaming", capabilities=("news", "", "eu"))) == {
        "type:streaming",
        "cap:news",
        "cap:eu",
    }
    assert index_terms(Offer()) == set()
    keys = [bytes([i]) * 32 for i in range(MAX_INDEX_REFS + 5)]
    value = encode_index(keys)
    assert len(value) <= 1024  # fits one DHT record
    assert decode_index(value) == keys[:MAX_INDEX_REFS]
    for bad in (cbor2.dumps({"v": 1, "k": [b"short"]}), cbor2.dumps([1, 2]), cbor2.dumps({"v": 1})):
        with pytest.raises(AdvertError):
            decode_index(bad)


@given(st.binary(max_size=200))
def test_garbage_index_values_raise_only_advert_error(blob: bytes) -> None:
    try:
        decode_index(blob)
    except AdvertError:
        pass
