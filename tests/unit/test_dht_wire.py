"""The DHT datagram codec: round trips, size limits, paging, and every kind of bad datagram dropped."""

from __future__ import annotations

import dataclasses
import hashlib

import cbor2
import pytest
from coincurve import PrivateKey, PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay_node.errors import LocalProtocolError, RemoteProtocolError
from overlay_node.wire.dht import (
    _TYPE_OF,  # with _body: the fields a datagram carries, to compare the framing by hand with cbor2's
    MAC_DOMAIN,
    MAC_LEN,
    MAC_VERSION,
    MAX_CONTACTS,
    MAX_DATAGRAM,
    SIGNING_DOMAIN,
    BodyCache,
    Contact,
    DhtDropped,
    Envelope,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Record,
    Store,
    StoreAck,
    Values,
    _body,
    decode,
    encode,
    new_rpc_id,
    node_id_of,
    pack_values,
    records_digest,
    takes_macs,
)

NOW = 1_700_000_000.25
SKEW = 30.0


def _verify(pubkey: bytes, message: bytes, signature: bytes) -> bool:
    try:
        return PublicKey(pubkey).verify(signature, message)  # ECDSA over SHA-256(message)
    except ValueError:
        return False


class Key:
    """A test identity: sign with coincurve (ECDSA over SHA-256 of the message)."""

    def __init__(self, seed: int) -> None:
        self.priv = PrivateKey(hashlib.sha256(b"dht-wire-%d" % seed).digest())
        self.pub = self.priv.public_key.format(compressed=True)

    def sign(self, message: bytes) -> bytes:
        return self.priv.sign(message)


ALICE, BOB = Key(1), Key(2)


#: one body cache for every encode and decode of this module: what one test put in it, a later one may hit
_CACHE = BodyCache()


def _send(msg: Message, key: Key = ALICE, now: float = NOW) -> bytes:
    data = encode(msg, sender_pub=key.pub, now=now, sign=key.sign)
    # the same bytes through a body cache (the signature is deterministic, RFC 6979)
    assert encode(msg, sender_pub=key.pub, now=now, sign=key.sign, cache=_CACHE) == data
    return data


def _recv(data: bytes, now: float = NOW, expect_node_id: bytes | None = None) -> Envelope:
    """``decode`` without a body cache and with one: both come to the same envelope, or drop for the same reason."""
    outcomes: list[Envelope | str] = []
    for cache in (None, _CACHE):
        try:
            outcomes.append(
                decode(data, now=now, verify=_verify, max_skew=SKEW, expect_node_id=expect_node_id, cache=cache)
            )
        except DhtDropped as exc:
            outcomes.append(exc.reason)
    plain, cached = outcomes
    assert plain == cached
    if isinstance(plain, str):
        raise DhtDropped(plain)  # type: ignore[arg-type]  # a reason decode gave
    return plain


def _pub(i: int) -> bytes:
    return bytes([2 + i % 2]) + hashlib.sha256(b"pub%d" % i).digest()


def _record(i: int, key: bytes = b"k" * 32, size: int = 40) -> Record:
    return Record(
        key=key, value=bytes([i % 256]) * size, publisher=_pub(i), seq=i, expires=2_000_000_000, sig=b"s" * 71
    )


# -- strategies --------------------------------------------------------------------------------------------------

ids = st.binary(min_size=32, max_size=32)
rpc_ids = st.binary(min_size=8, max_size=8)
pubkeys = st.builds(lambda p, b: bytes([p]) + b, st.sampled_from([2, 3]), ids)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
contacts = st.builds(Contact, pubkey=pubkeys, host=hosts, port=st.integers(1, 65535))


def records_for(key: st.SearchStrategy[bytes]) -> st.SearchStrategy[Record]:
    return st.builds(
        Record,
        key=key,
        value=st.binary(max_size=120),
        publisher=pubkeys,
        seq=st.integers(0, 2**63 - 1),
        expires=st.integers(0, 2**40),
        sig=st.binary(min_size=1, max_size=80),
    )


@st.composite
def values_messages(draw: st.DrawFn) -> Values:
    key = draw(ids)
    return Values(
        rpc_id=draw(rpc_ids),
        key=key,
        records=tuple(draw(st.lists(records_for(st.just(key)), max_size=3))),
        next_cursor=draw(st.one_of(st.none(), st.binary(max_size=33))),
        contacts=tuple(draw(st.lists(contacts, max_size=4))),
        digest=draw(st.one_of(st.none(), st.binary(min_size=16, max_size=16))),
    )


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, rpc_id=rpc_ids),
    st.builds(Pong, rpc_id=rpc_ids),
    st.builds(FindNode, rpc_id=rpc_ids, target=ids),
    st.builds(Nodes, rpc_id=rpc_ids, contacts=st.lists(contacts, max_size=MAX_CONTACTS).map(tuple)),
    st.builds(FindValue, rpc_id=rpc_ids, key=ids, cursor=st.one_of(st.none(), st.binary(max_size=33))),
    values_messages(),
    st.builds(Store, rpc_id=rpc_ids, record=records_for(ids)),
    st.builds(StoreAck, rpc_id=rpc_ids, stored=st.booleans(), reason=st.text(max_size=32)),
)

# -- round trips -------------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages)
def test_every_message_round_trips(msg: Message) -> None:
    data = _send(msg)
    assert len(data) <= MAX_DATAGRAM
    env = _recv(data)
    assert env.message == msg
    assert env.sender_pub == ALICE.pub
    assert env.sender_id == node_id_of(ALICE.pub) == hashlib.sha256(ALICE.pub).digest()
    assert env.timestamp == NOW


def _reference(msg: Message, key: Key, now: float, version: int = 1) -> bytes:
    """A datagram as cbor2 writes the whole of it (what the codec writes by hand must be byte for byte this)."""
    inner = cbor2.dumps([version, int(_TYPE_OF[type(msg)]), key.pub, now, msg.rpc_id, _body(msg)], canonical=True)
    return cbor2.dumps([inner, key.sign(SIGNING_DOMAIN + inner)], canonical=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    msg=messages,
    now=st.one_of(
        st.floats(min_value=0, max_value=2**40, allow_nan=False),
        st.integers(0, 2**31).map(float),  # whole seconds: 32 bits or fewer, written shorter
        st.sampled_from([0.0, 1.5, 65504.0, 1_700_000_000.0, NOW]),
    ),
)
def test_the_envelope_and_fixed_fields_written_by_hand_are_canonical_cbor(msg: Message, now: float) -> None:
    data = _send(msg, now=now)
    assert data == _reference(msg, ALICE, now)
    # read back whatever width the timestamp took (the usual 64 bits by hand, a shorter one through cbor2)
    env = _recv(data, now=now)
    assert env.message == msg
    assert env.timestamp == now


def test_a_body_seen_before_decodes_from_the_cache_under_the_new_rpc_id() -> None:
    cache = BodyCache()
    records = tuple(sorted((_record(i, size=200) for i in range(2)), key=lambda r: r.publisher))
    contacts = tuple(Contact(pubkey=_pub(i), host="127.0.0.1", port=4000 + i) for i in range(3))
    answers = [
        Values(rpc_id=new_rpc_id(), key=b"k" * 32, records=records, next_cursor=None, contacts=contacts)
        for _ in range(3)
    ]
    datagrams = [encode(a, sender_pub=BOB.pub, now=NOW, sign=BOB.sign, cache=cache) for a in answers]
    assert len(cache.encoded) == 1, "one body for the three answers"
    envelopes = [decode(d, now=NOW, verify=_verify, max_skew=SKEW, cache=cache) for d in datagrams]
    assert len(cache.decoded) == 1
    assert [e.message for e in envelopes] == answers
    assert [e.message.rpc_id for e in envelopes] == [a.rpc_id for a in answers]
    # decoded once: the later answers share the records the first one decoded to
    assert all(e.message.records is envelopes[0].message.records for e in envelopes)  # type: ignore[union-attr]
    # a hit still checks what the body does not hold: the rpc id, the sender, the timestamp and the signature
    fields = cbor2.loads(cbor2.loads(datagrams[0])[0])
    fields[4] = b"short"
    for data, reason in (
        (_resigned(fields), "malformed"),
        (datagrams[1][:-3] + b"xyz", "bad_signature"),
    ):
        with pytest.raises(DhtDropped) as info:
            decode(data, now=NOW, verify=_verify, max_skew=SKEW, cache=cache)
        assert info.value.reason == reason
    with pytest.raises(DhtDropped) as info:
        decode(datagrams[2], now=NOW + 2 * SKEW, verify=_verify, max_skew=SKEW, cache=cache)
    assert info.value.reason == "stale"
    # bodies that differ (other contacts) but carry the same records: each record decoded once
    other = Values(rpc_id=new_rpc_id(), key=b"k" * 32, records=records, next_cursor=None, contacts=contacts[1:])
    again = decode(_send(other), now=NOW, verify=_verify, max_skew=SKEW, cache=cache).message
    assert again == other
    assert all(a is b for a, b in zip(again.records, envelopes[0].message.records, strict=True))  # type: ignore[union-attr]
    # bodies are kept by type too: a PING and a PONG carry the same empty body
    ping, pong = Ping(rpc_id=new_rpc_id()), Pong(rpc_id=new_rpc_id())
    for msg in (ping, pong, ping):
        assert decode(_send(msg), now=NOW, verify=_verify, max_skew=SKEW, cache=cache).message == msg
    # the cache holds at most its size: the oldest bodies go first
    small = BodyCache(size=2)
    for i in range(3):
        page = Values(rpc_id=new_rpc_id(), key=b"k" * 32, records=records[:1], next_cursor=None, contacts=contacts[i:])
        decode(_send(page), now=NOW, verify=_verify, max_skew=SKEW, cache=small)
    assert len(small.decoded) == 2


def test_contacts_derive_their_node_id_and_carry_ip_literals_only() -> None:
    c = Contact(pubkey=ALICE.pub, host="::1", port=9)
    assert c.node_id == hashlib.sha256(ALICE.pub).digest()
    env = _recv(_send(Nodes(rpc_id=new_rpc_id(), contacts=(c,))))
    assert isinstance(env.message, Nodes)
    assert env.message.contacts[0].node_id == c.node_id
    for bad in ({"host": "example.com"}, {"port": 0}, {"pubkey": b"\x04" + bytes(32)}, {"pubkey": b"\x02"}):
        with pytest.raises(LocalProtocolError):
            Contact(**{"pubkey": ALICE.pub, "host": "1.2.3.4", "port": 1, **bad})  # type: ignore[arg-type]


def test_largest_messages_fit_in_one_datagram() -> None:
    v6 = tuple(Contact(pubkey=_pub(i), host="2001:db8::ffff:ffff:ffff:ffff", port=65535) for i in range(20))
    assert len(_send(Nodes(rpc_id=new_rpc_id(), contacts=v6))) <= MAX_DATAGRAM
    big = Record(key=b"k" * 32, value=b"v" * 1024, publisher=_pub(1), seq=2**63 - 1, expires=2**40, sig=b"s" * 80)
    assert len(_send(Store(rpc_id=new_rpc_id(), record=big))) <= MAX_DATAGRAM
    with pytest.raises(LocalProtocolError):
        Record(key=b"k" * 32, value=b"v" * 1025, publisher=_pub(1), seq=1, expires=1, sig=b"s")


def test_encode_refuses_an_oversized_datagram() -> None:
    records = tuple(_record(i, size=500) for i in range(3))
    with pytest.raises(LocalProtocolError) as info:
        _send(Values(rpc_id=new_rpc_id(), key=b"k" * 32, records=records, next_cursor=None))
    assert info.value.reason == "oversized"


# -- paging ------------------------------------------------------------------------------------------------------


def _page_through(records: list[Record], contacts: tuple[Contact, ...]) -> tuple[list[Record], int]:
    """Play both sides of a paged FIND_VALUE through the real codec; return the records received and the pages."""
    key = records[0].key
    got: list[Record] = []
    cursor: bytes | None = None
    first = True
    for pages in range(1, 100):
        request = _recv(_send(FindValue(rpc_id=new_rpc_id(), key=key, cursor=cursor), BOB)).message
        assert isinstance(request, FindValue)
        after = [r for r in records if not request.cursor or r.publisher > request.cursor]
        page = pack_values(
            rpc_id=request.rpc_id, key=key, records=after, contacts=contacts, first_page=request.cursor is None
        )
        data = _send(page)
        assert len(data) <= MAX_DATAGRAM
        answer = _recv(data).message
        assert isinstance(answer, Values)
        assert answer.contacts == (contacts if first else ())
        got.extend(answer.records)
        first = False
        if answer.next_cursor is None:
            return got, pages
        cursor = answer.next_cursor
    raise AssertionError("paging did not end")


@pytest.mark.parametrize(("count", "size"), [(1, 10), (7, 300), (30, 120), (12, 1024)])
def test_find_value_answers_are_paged_and_lose_nothing(count: int, size: int) -> None:
    records = sorted((_record(i, size=size) for i in range(count)), key=lambda r: r.publisher)
    v4 = tuple(Contact(pubkey=_pub(i), host=f"10.0.0.{i}", port=4000 + i) for i in range(20))
    got, pages = _page_through(records, v4)
    assert got == records
    assert pages >= (count * size) // MAX_DATAGRAM


def test_a_first_page_full_of_contacts_continues_from_the_first_record() -> None:
    v6 = tuple(Contact(pubkey=_pub(i), host=f"2001:db8::{i:x}", port=1) for i in range(20))
    records = [_record(1, size=1000)]
    page = pack_values(rpc_id=new_rpc_id(), key=records[0].key, records=records, contacts=v6, first_page=True)
    assert page.records == ()
    assert page.next_cursor == b""
    got, pages = _page_through(records, v6)
    assert got == records
    assert pages == 2


# -- bad datagrams -----------------------------------------------------------------------------------------------


def _reason(data: bytes, now: float = NOW, expect_node_id: bytes | None = None) -> str:
    with pytest.raises(DhtDropped) as info:
        _recv(data, now, expect_node_id)
    assert isinstance(info.value, RemoteProtocolError)
    return info.value.reason


def test_stale_and_future_timestamps_are_dropped() -> None:
    data = _send(Ping(rpc_id=new_rpc_id()), now=NOW)
    assert _recv(data, now=NOW + SKEW - 1).message == _recv(data).message
    assert _reason(data, now=NOW + SKEW + 1) == "stale"
    assert _reason(data, now=NOW - SKEW - 1) == "stale"


def test_bad_signatures_are_dropped() -> None:
    ping = Ping(rpc_id=new_rpc_id())
    inner, _ = cbor2.loads(_send(ping))
    # signed by Bob but claiming Alice's key
    forged = cbor2.dumps([inner, BOB.sign(SIGNING_DOMAIN + inner)], canonical=True)
    assert _reason(forged) == "bad_signature"
    # Alice's signature without the domain prefix
    assert _reason(cbor2.dumps([inner, ALICE.sign(inner)], canonical=True)) == "bad_signature"
    assert _reason(cbor2.dumps([inner, b"\x30\x00"], canonical=True)) == "bad_signature"


def _mac_of(key: bytes, message: bytes) -> bytes:
    return hashlib.sha256(key + message).digest()  # any 32-byte function of key and bytes: the codec only passes it on


def test_a_mac_d_datagram_round_trips_and_a_wrong_or_absent_mac_is_dropped() -> None:
    key = b"k" * 32
    ping = FindNode(rpc_id=new_rpc_id(takes_macs=True), target=b"t" * 32)
    data = encode(ping, sender_pub=ALICE.pub, now=NOW, sign=lambda m: _mac_of(key, m), mac=True)
    inner, tag = cbor2.loads(data)
    assert cbor2.loads(inner)[0] == MAC_VERSION
    assert tag == _mac_of(key, MAC_DOMAIN + inner)
    checked: list[bytes] = []

    def verify_mac(pubkey: bytes, message: bytes, mac: bytes) -> bool:
        checked.append(pubkey)
        return mac == _mac_of(key, message)

    def recv(raw: bytes) -> Envelope:
        return decode(raw, now=NOW, verify=_verify, max_skew=SKEW, verify_mac=verify_mac)

    envelope = recv(data)
    assert envelope.message == ping
    assert envelope.mac
    assert checked == [ALICE.pub]
    assert not recv(_send(ping)).mac  # a signed one still decodes beside it, by its signature
    assert takes_macs(ping.rpc_id)
    assert not takes_macs(new_rpc_id())
    # another key's MAC, a MAC without the domain, a signature in a MAC's place, a MAC of the wrong length
    for tag in (_mac_of(b"x" * 32, MAC_DOMAIN + inner), _mac_of(key, inner), ALICE.sign(MAC_DOMAIN + inner)[:MAC_LEN]):
        with pytest.raises(DhtDropped) as info:
            recv(cbor2.dumps([inner, tag], canonical=True))
        assert info.value.reason == "bad_signature"
    with pytest.raises(DhtDropped) as info:
        recv(cbor2.dumps([inner, tag[:31]], canonical=True))
    assert info.value.reason == "malformed"
    # a node that takes no MACs (a decode without verify_mac) drops it as another version
    assert _reason(data) == "version"
    with pytest.raises(LocalProtocolError):
        encode(ping, sender_pub=ALICE.pub, now=NOW, sign=ALICE.sign, mac=True)  # a signature is not a MAC


def test_a_spoofed_answer_from_another_node_is_dropped() -> None:
    data = _send(Pong(rpc_id=new_rpc_id()), BOB)
    assert _reason(data, expect_node_id=node_id_of(ALICE.pub)) == "bad_node_id"
    assert _recv(data, expect_node_id=node_id_of(BOB.pub)).sender_pub == BOB.pub


def test_oversized_truncated_trailing_and_non_canonical_datagrams_are_dropped() -> None:
    data = _send(FindNode(rpc_id=new_rpc_id(), target=b"t" * 32))
    assert _reason(data + bytes(MAX_DATAGRAM)) == "oversized"
    assert _reason(data[:-1]) == "malformed"
    assert _reason(data + b"\x00") == "malformed"
    inner, sig = cbor2.loads(data)
    fields = cbor2.loads(inner)
    # the same fields with the timestamp as a 64-bit float where 32 bits would do: not canonical
    fields[3] = 1_700_000_000.0
    loose = cbor2.dumps(fields)
    assert loose != cbor2.dumps(fields, canonical=True)
    assert _reason(cbor2.dumps([loose, sig])) == "malformed"


def test_byte_strings_with_a_longer_head_than_their_size_needs_are_dropped() -> None:
    rpc_id = new_rpc_id()
    data = _send(Ping(rpc_id=rpc_id))
    inner, sig = cbor2.loads(data)
    assert _recv(cbor2.dumps([inner, ALICE.sign(SIGNING_DOMAIN + inner)])).message == Ping(rpc_id=rpc_id)
    # the rpc id (8 bytes) with a one-byte size after its head, where the head alone says it
    loose = inner.replace(b"\x48" + rpc_id, b"\x58\x08" + rpc_id)
    assert cbor2.loads(loose) == cbor2.loads(inner)
    assert _reason(b"\x82" + _item(loose) + _item(ALICE.sign(SIGNING_DOMAIN + loose))) == "malformed"
    # the envelope's signature (about 71 bytes) with a two-byte size
    assert _reason(b"\x82" + _item(inner) + b"\x59" + len(sig).to_bytes(2, "big") + sig) == "malformed"


def _item(value: bytes) -> bytes:
    return cbor2.dumps(value, canonical=True)


def _resigned(fields: list[object]) -> bytes:
    inner = cbor2.dumps(fields, canonical=True)
    return cbor2.dumps([inner, ALICE.sign(SIGNING_DOMAIN + inner)], canonical=True)


@pytest.mark.parametrize(
    ("index", "value", "reason"),
    [
        (0, 2, "version"),
        (1, 99, "malformed"),
        (2, b"\x02" * 5, "malformed"),
        (3, 17, "malformed"),
        (3, float("nan"), "malformed"),
        (4, b"short", "malformed"),
        (5, [b"t" * 31], "malformed"),
        (5, [b"t" * 32, b"extra"], "malformed"),
        (5, "not a list", "malformed"),
    ],
)
def test_well_signed_but_wrongly_shaped_datagrams_are_dropped(index: int, value: object, reason: str) -> None:
    fields: list[object] = [1, 3, ALICE.pub, NOW, b"r" * 8, [b"t" * 32]]
    assert isinstance(_recv(_resigned(fields)).message, FindNode)
    fields[index] = value
    assert _reason(_resigned(fields)) == reason


def test_a_contact_with_a_bad_address_is_dropped() -> None:
    fields: list[object] = [1, 4, ALICE.pub, NOW, b"r" * 8, [[[BOB.pub, b"\x7f\x00\x00", 80]]]]
    assert _reason(_resigned(fields)) == "malformed"
    fields[5] = [[[BOB.pub, b"\x7f\x00\x00\x01", 80]]]
    assert isinstance(_recv(_resigned(fields)).message, Nodes)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=1500))
def test_garbage_bytes_raise_only_dht_dropped(data: bytes) -> None:
    with pytest.raises(DhtDropped):
        _recv(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages, flips=st.dictionaries(st.integers(0, 10_000), st.integers(1, 255), min_size=1, max_size=4))
def test_altered_datagrams_are_dropped(msg: Message, flips: dict[int, int]) -> None:
    data = bytearray(_send(msg))
    for pos, mask in {p % len(data): m for p, m in flips.items()}.items():
        data[pos] ^= mask
    with pytest.raises(DhtDropped):
        _recv(bytes(data))


@settings(max_examples=200, deadline=None)
@given(
    obj=st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=40), st.text(max_size=8)),
        lambda inner: st.lists(inner, max_size=6),
        max_leaves=20,
    )
)
def test_signed_cbor_of_any_shape_raises_only_dht_dropped(obj: object) -> None:
    fields: list[object] = [1, 4, ALICE.pub, NOW, b"r" * 8, obj]
    for mtype in range(1, 9):
        fields[1] = mtype
        try:
            env = _recv(_resigned(fields))
        except DhtDropped:
            continue
        assert env.message.rpc_id == b"r" * 8


def test_a_first_page_with_more_names_the_digest_of_all_records_and_old_answers_still_decode() -> None:
    records = sorted((_record(i, size=300) for i in range(3)), key=lambda r: r.publisher)
    digest = records_digest(records)
    assert len(digest) == 16
    assert digest != records_digest(records[:2])
    bumped = [records[0], records[1], dataclasses.replace(records[2], seq=records[2].seq + 1)]
    assert digest != records_digest(bumped), "a newer record of one publisher changes the digest"
    first = pack_values(rpc_id=new_rpc_id(), key=records[0].key, records=records, first_page=True, digest=digest)
    assert first.next_cursor is not None
    assert first.digest == digest
    assert _recv(_send(first)).message == first
    # a page that holds everything, and a later page, carry no digest (four elements, as before)
    whole = pack_values(rpc_id=new_rpc_id(), key=records[0].key, records=records[:1], first_page=True, digest=digest)
    assert whole.next_cursor is None
    assert whole.digest is None
    later = pack_values(rpc_id=new_rpc_id(), key=records[0].key, records=records, first_page=False, digest=digest)
    assert later.digest is None
    assert len(cbor2.loads(cbor2.loads(_send(later))[0])[5]) == 4
    # a digest of the wrong size, or a null fifth element, is malformed
    fields: list[object] = [1, 6, ALICE.pub, NOW, b"r" * 8, [b"k" * 32, [], None, [], b"d" * 15]]
    assert _reason(_resigned(fields)) == "malformed"
    fields[5] = [b"k" * 32, [], None, [], None]
    assert _reason(_resigned(fields)) == "malformed"
    fields[5] = [b"k" * 32, [], None, [], b"d" * 16]
    answer = _recv(_resigned(fields)).message
    assert isinstance(answer, Values)
    assert answer.digest == b"d" * 16
