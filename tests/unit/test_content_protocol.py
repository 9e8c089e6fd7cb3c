"""Content as data: chunk plans, the manifest hasher, placement, record values and access grants."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest
from overlay_node.protocol.content import (
    MAX_CHUNKS,
    MIN_CHUNK,
    ChunkPlan,
    ProviderRecord,
    ReplicaState,
    TagItem,
    can_transition,
    chunk_hashes,
    decode_provider,
    decode_tag_items,
    encode_provider,
    encode_tag_items,
    node_id_of_key,
    rank_by_distance,
    sign_grant,
    verify_grant,
    xor_distance,
)
from overlay_node.services.content_blobs import ManifestHasher


def test_chunk_plans() -> None:
    plan = ChunkPlan.for_size(3 * MIN_CHUNK + 5, 100_000)
    assert plan.chunk_size == 131072
    assert plan.count == 2
    assert plan.bounds(1) == (131072, 3 * MIN_CHUNK + 5 - 131072)
    assert ChunkPlan.for_size(0, MIN_CHUNK).count == 0
    huge = ChunkPlan.for_size(1 << 40, MIN_CHUNK)
    assert huge.count <= MAX_CHUNKS
    with pytest.raises(BadRequest):
        ChunkPlan(size=10, chunk_size=1000)
    with pytest.raises(BadRequest):
        plan.bounds(2)


@given(st.binary(max_size=300_000), st.lists(st.integers(1, 70_000), max_size=12))
def test_manifest_hasher_matches_whole_hashing_however_the_stream_is_cut(data: bytes, cuts: list[int]) -> None:
    plan = ChunkPlan(size=len(data), chunk_size=MIN_CHUNK)
    hasher = ManifestHasher(plan)
    pos = 0
    for cut in cuts:
        hasher.update(data[pos : pos + cut])
        pos += cut
    hasher.update(data[pos:])
    digest, manifest = hasher.finish()
    assert digest == hashlib.sha256(data).digest()
    assert manifest == b"".join(chunk_hashes(data, plan))


def test_manifest_hasher_refuses_too_many_and_too_few_bytes() -> None:
    hasher = ManifestHasher(ChunkPlan(size=10, chunk_size=MIN_CHUNK))
    with pytest.raises(BadRequest, match="more bytes"):
        hasher.update(b"x" * 11)
    hasher.update(b"x" * 9)
    with pytest.raises(BadRequest, match="truncated"):
        hasher.finish()


def test_replica_state_machine() -> None:
    assert can_transition(ReplicaState.PENDING, ReplicaState.TRANSFERRING)
    assert can_transition(ReplicaState.FAILED, ReplicaState.PENDING)
    assert not can_transition(ReplicaState.TRANSFERRING, ReplicaState.PENDING)


def test_placement_is_by_xor_distance_and_deterministic() -> None:
    keys = [Identity.generate().public_key_hex for _ in range(10)]
    cid = os.urandom(32)
    ranked = rank_by_distance(cid, keys)
    distances = [xor_distance(node_id_of_key(k), cid) for k in ranked]
    assert distances == sorted(distances)
    assert rank_by_distance(cid, list(reversed(keys))) == ranked


def test_record_values_round_trip_and_fit_in_a_dht_value() -> None:
    record = ProviderRecord(
        content_id=os.urandom(32),
        size=123,
        content_type="text/plain",
        price=5,
        producer=Identity.generate().public_key,
        expires=1_900_000_000,
        swarm=("ws://127.0.0.1:4760/p2p/1",),
        http="http://127.0.0.1:4761",
    )
    assert decode_provider(encode_provider(record)) == record
    items = [
        TagItem(content_id=os.urandom(32), size=i, price=i, content_type="application/octet-stream", title="t" * 99)
        for i in range(40)
    ]
    value = encode_tag_items(items)
    assert len(value) <= 1024
    decoded = decode_tag_items(value)
    assert 1 <= len(decoded) <= 16
    assert decoded[0].content_id == items[0].content_id


@given(st.binary(max_size=1100))
def test_record_decoders_take_garbage_without_crashing(value: bytes) -> None:
    for decode in (decode_provider, decode_tag_items):
        try:
            decode(value)
        except BadRequest:
            pass


def test_access_grants() -> None:
    producer, consumer, other = Identity.generate(), Identity.generate(), Identity.generate()
    cid = os.urandom(32)
    grant = sign_grant(producer, cid, consumer.public_key, 2_000)
    args = {"content_id": cid, "consumer": consumer.public_key, "producer": producer.public_key}
    verify_grant(grant, **args, now=1_000)
    with pytest.raises(BadRequest, match="expired"):
        verify_grant(grant, **args, now=2_000)
    with pytest.raises(BadRequest, match="another consumer"):
        verify_grant(grant, **(args | {"consumer": other.public_key}), now=1_000)
    with pytest.raises(BadRequest, match="another content"):
        verify_grant(grant, **(args | {"content_id": os.urandom(32)}), now=1_000)
    forged = sign_grant(other, cid, consumer.public_key, 2_000)
    with pytest.raises(BadRequest, match="not signed by the producer"):
        verify_grant(forged, **args, now=1_000)
    wire = grant.to_wire() | {"expires": 3_000}
    from overlay_node.protocol.content import AccessGrant

    with pytest.raises(BadRequest, match="signature"):
        verify_grant(AccessGrant.from_wire(wire), **args, now=1_000)
    with pytest.raises(BadRequest):
        AccessGrant.from_wire({"hash": "zz"})
