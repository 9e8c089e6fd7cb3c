"""DHT datagrams: ``wire/dht.py`` decoding, then ``protocol/dht_records.py``'s record store behind it.

The inputs are mutated seed datagrams (the signature then fails: the checks before it are what is fuzzed), and seed
messages whose inner fields were fuzzed and which were then signed again with the sender's key, so that they reach
the record logic. Properties: ``decode`` raises nothing but ``DhtDropped``; a decoded datagram's inner bytes are the
canonical encoding of the message it decoded to; a decoded STORE or VALUES goes through ``RecordStore.put`` (a
result, never an exception) and a FIND_VALUE is answered with a page that encodes within the datagram limit."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import strategies as st

from overlay_node.protocol.dht_records import RecordLimits, RecordStore, make_record
from overlay_node.wire import dht

from . import seeds
from .mutate import fuzz_bytes, mutated_values
from .runner import FuzzReport, run_property

pytestmark = pytest.mark.fuzz

_LIMITS = RecordLimits(max_per_key=4, max_per_publisher=6, max_total_bytes=4096, max_ttl=3600, clock_skew=60)
_store: list[RecordStore] = []


def store() -> RecordStore:
    if not _store or len(_store[0]) > 64:
        _store[:] = [RecordStore(seeds.signers()[0].verify, _LIMITS)]
    return _store[0]


@st.composite
def resigned_records(draw: st.DrawFn) -> bytes:
    """A STORE of a validly signed record with fuzzed fields (value, seq, expiry, key), its inner array then
    perhaps fuzzed too, signed again by the sender."""
    _, publisher = seeds.signers()
    now = int(seeds.NOW)
    record = make_record(
        key=draw(st.sampled_from([seeds.dht_record().key, bytes(32)])),
        value=draw(st.binary(max_size=dht.MAX_VALUE)),
        publisher=seeds.keys().bob.public_key,
        seq=draw(st.integers(0, 2**63 - 1) | st.integers(0, 5)),
        expires=draw(st.integers(0, 2**63 - 1) | st.integers(now - 10, now + 4000)),
        sign=publisher.sign,
    )
    inner: list[Any] = [1, int(dht.MessageType.STORE), seeds.keys().alice.public_key, seeds.NOW, b"\x03" * 8]
    inner.append([[record.key, record.value, record.publisher, record.seq, record.expires, record.sig]])
    if draw(st.booleans()):
        inner = draw(mutated_values([inner]))
    return seeds.sign_datagram(bytes(cbor2.dumps(inner, canonical=True)))


def datagrams() -> st.SearchStrategy[bytes]:
    resigned_fields = mutated_values(seeds.dht_inner_lists()).map(
        lambda v: seeds.sign_datagram(bytes(cbor2.dumps(v, canonical=True)))
    )
    return st.one_of(fuzz_bytes(seeds.dht_datagrams(), max_size=1500), resigned_fields, resigned_records())


def _answer_fits(msg: dht.FindValue) -> None:
    records = store().page(msg.key, msg.cursor, seeds.NOW)
    first = msg.cursor is None
    digest = dht.records_digest(records) if first and records else None
    contacts = seeds.dht_contacts() if first else ()
    page = dht.pack_values(
        rpc_id=msg.rpc_id, key=msg.key, records=records, contacts=contacts, first_page=first, digest=digest
    )
    sender, _ = seeds.signers()
    dht.encode(page, sender_pub=seeds.keys().alice.public_key, now=seeds.NOW, sign=sender.sign)


#: one body cache for every input: a body seen before decodes from it (wire/dht.py, invariant 7)
_BODIES = dht.BodyCache()


def check_datagram(data: bytes) -> None:
    sender, _ = seeds.signers()
    outcomes: list[dht.Envelope | str] = []
    for cache in (None, _BODIES):
        try:
            outcomes.append(dht.decode(data, now=seeds.NOW, verify=sender.verify, max_skew=300.0, cache=cache))
        except dht.DhtDropped as exc:
            outcomes.append(exc.reason)
    # invariant 7: the same message, or a drop for the same reason, with the body cache as without it
    assert outcomes[0] == outcomes[1], outcomes
    envelope = outcomes[0]
    if isinstance(envelope, str):
        return
    msg = envelope.message
    # invariant 1: one byte string per message
    inner = cbor2.loads(data)[0]
    assert dht._inner(msg, envelope.sender_pub, envelope.timestamp) == inner
    if isinstance(msg, dht.Store):
        store().put(msg.record, seeds.NOW)
    elif isinstance(msg, dht.Values):
        for record in msg.records:
            store().put(record, seeds.NOW)
    elif isinstance(msg, dht.FindValue):
        _answer_fits(msg)
    # whatever the store holds now can still be paged out
    _answer_fits(dht.FindValue(rpc_id=b"\x00" * 8, key=seeds.dht_record().key))
    store().expire(seeds.NOW + 1)


def test_dht_datagrams(fuzz_report: FuzzReport) -> None:
    run_property(fuzz_report, "dht: signed datagrams and records", datagrams(), check_datagram)
