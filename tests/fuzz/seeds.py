"""Seed corpora: real encodings of every message the fuzzed surfaces read, made by the project's own encoders (so
the mutations start from inputs that get deep). Each builder runs once per process."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import cbor2

from overlay_node.chain.blocks import block_merkle_paths
from overlay_node.chain.formats import BeefEntry, atomic_beef, encode_beef_v1, encode_beef_v2
from overlay_node.crypto.keys import Identity
from overlay_node.crypto.scripts import p2pkh_for_key
from overlay_node.crypto.sighash import P2pkhSpend, outpoint_bytes, sign_p2pkh, txid_of_raw
from overlay_node.protocol import content, handshake, payments, streams
from overlay_node.protocol.adverts import Endpoints, Offer, encode_advert, encode_index, make_advert
from overlay_node.protocol.dht_records import make_record
from overlay_node.services.adverts import record_to_wire
from overlay_node.services.dht_rpc import Signer
from overlay_node.topics.ship import ship_token
from overlay_node.topics.uhrp import uhrp_token
from overlay_node.wire import dht
from overlay_node.wire import frames as f

#: the wall clock every DHT seed is stamped with and every DHT decode checks against
NOW = float(int(time.time()))


@dataclass(frozen=True)
class Keys:
    """The identities the seeds are made with."""

    alice: Identity
    bob: Identity
    carol: Identity


@functools.cache
def keys() -> Keys:
    return Keys(Identity.generate(), Identity.generate(), Identity.generate())


# -- peer links ------------------------------------------------------------------------------------------------


@functools.cache
def frame_seeds() -> tuple[f.Frame, ...]:
    body = {"quote_id": "ab" * 16, "n": [1, 2.5, None, True, b"\x00" * 8, {"deep": ["x"]}], "s": "text"}
    return (
        f.Hello(agent="overlay-node/0.1", listen=("ws://127.0.0.1:4760/p2p/1",), max_frame=1 << 20),
        f.Request(id=1, method="pay.quote", body={"resource": "content:abc", "amount": 10}),
        f.Request(id=2**63 - 1, method="stream.subscribe", body=body),
        f.Response(id=7, body=body),
        f.ErrorResponse(id=7, code="not_found", message="no such thing"),
        f.Notice(method="stream.packets", body={"stream_id": "s1", "first": 0, "payloads": ["a", "b"], "head": 2}),
        f.TransferOpen(id=3, method="content.offer", header={"hash": b"\x01" * 32, "size": 1000}),
        f.TransferChunk(id=3, data=b"chunk" * 20),
        f.TransferCredit(id=3, credit=8),
        f.TransferEnd(id=3),
        f.TransferAbort(id=3, code="cancelled", message=""),
        f.TransferCancel(id=3, code="refused", message="storage full"),
        f.TransferAck(id=3),
        f.Ping(nonce=12345),
        f.Pong(nonce=12345),
        f.Close(reason="shutdown", message="bye"),
    )


@functools.cache
def frame_bytes() -> tuple[bytes, ...]:
    return tuple(f.encode(frame) for frame in frame_seeds())


@functools.cache
def frame_maps() -> tuple[dict[str, Any], ...]:
    return tuple(frame.to_wire() for frame in frame_seeds())


@functools.cache
def handshake_seeds() -> tuple[str, ...]:
    """An initialRequest and an initialResponse, as text."""
    k = keys()
    initiator = handshake.HandshakeInitiator(k.alice)
    request = initiator.initial_request()
    response, _ = handshake.HandshakeResponder(k.bob).receive_request(request)
    return request, response


# -- the DHT ---------------------------------------------------------------------------------------------------


@functools.cache
def signers() -> tuple[Signer, Signer]:
    """The sender's and a record publisher's signers."""
    k = keys()
    return Signer(k.alice), Signer(k.bob)


def dht_record(*, value: bytes = b"v" * 40, seq: int = 1, expires: int | None = None, key: bytes = b"") -> dht.Record:
    _, publisher = signers()
    return make_record(
        key=key or hashlib.sha256(b"fuzz").digest(),
        value=value,
        publisher=keys().bob.public_key,
        seq=seq,
        expires=int(NOW) + 600 if expires is None else expires,
        sign=publisher.sign,
    )


@functools.cache
def dht_contacts() -> tuple[dht.Contact, ...]:
    return (
        dht.Contact(pubkey=keys().carol.public_key, host="127.0.0.1", port=4760),
        dht.Contact(pubkey=keys().bob.public_key, host="::1", port=1),
    )


@functools.cache
def dht_messages() -> tuple[dht.Message, ...]:
    rpc = b"\x01" * dht.RPC_ID_LEN
    key = hashlib.sha256(b"fuzz").digest()
    contacts = dht_contacts()
    record = dht_record()
    return (
        dht.Ping(rpc_id=rpc),
        dht.Pong(rpc_id=rpc),
        dht.FindNode(rpc_id=rpc, target=key),
        dht.Nodes(rpc_id=rpc, contacts=contacts),
        dht.FindValue(rpc_id=rpc, key=key),
        dht.FindValue(rpc_id=rpc, key=key, cursor=b""),
        dht.Values(rpc_id=rpc, key=key, records=(record,), next_cursor=None, contacts=contacts),
        dht.Values(rpc_id=rpc, key=key, records=(record,), next_cursor=record.publisher, digest=b"\x02" * 16),
        dht.Store(rpc_id=rpc, record=record),
        dht.Store(rpc_id=rpc, record=dht_record(value=b"")),
        dht.StoreAck(rpc_id=rpc, stored=False, reason="key_full"),
    )


def sign_datagram(inner: bytes) -> bytes:
    """A datagram around ``inner`` (any bytes), signed by the sender seed's key."""
    sender, _ = signers()
    return bytes(cbor2.dumps([inner, sender.sign(dht.SIGNING_DOMAIN + inner)], canonical=True))


@functools.cache
def dht_datagrams() -> tuple[bytes, ...]:
    sender, _ = signers()
    pub = keys().alice.public_key
    return tuple(dht.encode(m, sender_pub=pub, now=NOW, sign=sender.sign) for m in dht_messages())


@functools.cache
def dht_inner_lists() -> tuple[list[Any], ...]:
    """The decoded ``inner`` arrays of the seed datagrams (to fuzz their fields and sign them again)."""
    return tuple(cbor2.loads(cbor2.loads(d)[0]) for d in dht_datagrams())


# -- HTTP/1.1 --------------------------------------------------------------------------------------------------

HTTP_REQUESTS: tuple[bytes, ...] = (
    b"GET /health/live HTTP/1.1\r\nHost: node\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: node\r\nAccept: */*\r\nConnection: close\r\n\r\n",
    b"POST /lookup HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: 35\r\n\r\n"
    b'{"service":"ls_ship","query":"fin"}',
    b'POST /submit HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: chunked\r\nx-topics: ["tm_ship"]\r\n\r\n'
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
    b"POST /requestSyncResponse HTTP/1.1\r\nHost: node\r\nExpect: 100-continue\r\nContent-Length: 12\r\n"
    b'x-bsv-topic: tm_ship\r\n\r\n{"since": 0}',
    b"GET /uhrp/" + b"ab" * 32 + b"?x=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: node\r\n\r\n",
    b"GET http://node:4761/listTopicManagers HTTP/1.1\r\nHost: node\r\n\r\n",
    b"\r\nGET /health/ready HTTP/1.1\r\nHost: a\r\n\r\nGET /health/live HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD /health/live HTTP/1.1\r\nHost: node\r\nX-Long: " + b"v" * 200 + b"\r\n\r\n",
)


# -- JSON bodies -----------------------------------------------------------------------------------------------

JSON_BODIES: tuple[Any, ...] = (
    {"service": "ls_ship", "query": {"findAll": True, "limit": 10, "skip": 0, "sortOrder": "asc"}},
    {"namespace": "ship", "name": "tm_foo", "value": "hello", "ttl": 60},
    {"topics": ["tm_ship"], "beef_hex": "0100beef00", "mode": "current-tx"},
    {"outpoint": "ab" * 32 + ".0", "depth": 2},
    {"capabilities": ["a", "b"], "max_price": 10, "region": "eu", "service_type": "llm"},
    {"stream_id": "s1", "rate": 2, "pricing_model": "per-packet", "tags": ["x"], "title": "t"},
    {"provider": "02" + "ab" * 32, "resource": "content:x", "amount": "100"},
    {"since": 0, "limit": 5},
    {"graphID": "ab" * 32 + ".0", "txid": "cd" * 32, "outputIndex": 0, "metadata": False},
    {"identity_keys": ["02" + "00" * 32], "timeout": 1.5},
    [1, 2, {"a": None}],
    "findAll",
)


@functools.cache
def json_texts() -> tuple[bytes, ...]:
    texts = [json.dumps(v).encode() for v in JSON_BODIES]
    texts += [json.dumps(v, indent=2).encode("utf-16") for v in JSON_BODIES[:2]]
    texts += [b'{"a": 1e5, "b": -0.0, "c": "\\u00e9\\ud83d\\ude00", "d": [true, false, null]}']
    return tuple(texts)


# -- transactions, BEEF and merkle paths -------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainSeeds:
    """A funding transaction mined in a block of two, a P2PKH spend of its first output (with a PushDrop output)
    and a plain P2PKH spend of its second."""

    funding: bytes
    funding_bump: bytes
    child: bytes
    ef_child: bytes
    beef_v1: bytes
    beef_v2: bytes
    atomic: bytes
    other_txid: str

    @property
    def all(self) -> tuple[bytes, ...]:
        return (self.funding, self.child, self.ef_child, self.beef_v1, self.beef_v2, self.atomic)


def _plain_tx(inputs: list[tuple[bytes, bytes]], outputs: list[tuple[bytes, int]]) -> bytes:
    out = bytearray((1).to_bytes(4, "little"))
    out.append(len(inputs))
    for outpoint, script in inputs:
        out += outpoint + bytes([len(script)]) + script + b"\xff\xff\xff\xff"
    out.append(len(outputs))
    for script, satoshis in outputs:
        out += satoshis.to_bytes(8, "little") + bytes([len(script)]) + script
    return bytes(out + bytes(4))


@functools.cache
def chain_seeds() -> ChainSeeds:
    k = keys()
    secret = k.alice.private_bytes
    lock = p2pkh_for_key(k.alice.public_key)
    funding = _plain_tx([(b"\x11" * 36, b"\x51")], [(lock, 100_000), (lock, 5_000)])
    funding_txid = txid_of_raw(funding)
    other = txid_of_raw(b"another transaction of the block")
    bump = block_merkle_paths([other, funding_txid], 100)[1]
    assert bump is not None
    token = ship_token(k.bob, "SHIP", "https://overlay.example.com", "tm_fuzz")
    child = sign_p2pkh(
        [P2pkhSpend(outpoint=outpoint_bytes(funding_txid, 0), locking_script=lock, satoshis=100_000, secret=secret)],
        [(lock, 90_000), (token, 1)],
    )
    # Extended Format: the marker after the version, each input followed by the output it spends
    n_in_at = 4
    head = child[:n_in_at] + b"\x00\x00\x00\x00\x00\xef" + child[n_in_at : n_in_at + 1]
    input_end = n_in_at + 1 + 36 + 1 + child[n_in_at + 1 + 36] + 4
    ef_child = (
        head
        + child[n_in_at + 1 : input_end]
        + (100_000).to_bytes(8, "little")
        + bytes([len(lock)])
        + lock
        + child[input_end:]
    )
    plain = sign_p2pkh(
        [P2pkhSpend(outpoint=outpoint_bytes(funding_txid, 1), locking_script=lock, satoshis=5_000, secret=secret)],
        [(lock, 4_000)],
    )
    child_txid = txid_of_raw(child)
    return ChainSeeds(
        funding=funding,
        funding_bump=bump,
        child=child,
        ef_child=ef_child,
        beef_v1=encode_beef_v1([(funding, bump), (child, None), (plain, None)]),
        beef_v2=encode_beef_v2([BeefEntry(funding_txid, funding, bump), BeefEntry(child_txid, child)]),
        atomic=atomic_beef(child_txid, [BeefEntry(funding_txid, funding, bump), BeefEntry(child_txid, child)]),
        other_txid=other,
    )


# -- CBOR messages and token scripts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageSeeds:
    """Encodings of the content, advert, payment and stream messages, and the token scripts."""

    provider: bytes
    tags: bytes
    children: bytes
    advert: bytes
    index: bytes
    grant: dict[str, Any]
    quote: dict[str, Any]
    payment: dict[str, Any]
    receipt: dict[str, Any]
    terms: dict[str, Any]
    packets: dict[str, Any]
    record: list[object]
    ship: bytes
    slap: bytes
    uhrp: bytes

    @property
    def values(self) -> tuple[bytes, ...]:
        return (self.provider, self.tags, self.children, self.advert, self.index)

    @property
    def maps(self) -> tuple[Any, ...]:
        return (self.grant, self.quote, self.payment, self.receipt, self.terms, self.packets, self.record)

    @property
    def scripts(self) -> tuple[bytes, ...]:
        return (self.ship, self.slap, self.uhrp)


@functools.cache
def message_seeds() -> MessageSeeds:
    k = keys()
    cid = hashlib.sha256(b"content").digest()
    provider = content.ProviderRecord(
        content_id=cid,
        size=1234,
        content_type="text/plain",
        price=5,
        producer=k.alice.public_key,
        expires=int(NOW) + 3600,
        swarm=("ws://127.0.0.1:4760/p2p/1",),
        http="https://node.example.com",
        parents=(hashlib.sha256(b"parent").digest(),),
        relationship="derived",
    )
    tags = [content.TagItem(content_id=cid, size=10, price=0, content_type="text/plain", title="a title")]
    children = [content.ChildItem(content_id=cid, relationship="processed")]
    advert = make_advert(
        k.alice,
        name="tm_fuzz",
        uri="https://overlay.example.com",
        endpoints=Endpoints(swarm=("ws://127.0.0.1:1/p2p/1",), http="https://h.example.com", dht="127.0.0.1:2"),
        expires=int(NOW) + 3600,
        offer=Offer(service_type="llm", pricing_model="per-request", price=3, capabilities=("gpu",), region="eu"),
        token="ab" * 32 + ".0",
        resource="stream-1",
    )
    grant = content.sign_grant(k.alice, cid, k.bob.public_key, int(NOW) + 60)
    quote = payments.Quote.issue(
        k.alice, payer=k.bob.public_key_hex, resource="content:" + cid.hex(), amount=50, now_ms=1, ttl_ms=60_000
    )
    payment = payments.PaymentMessage(
        quote=quote,
        derivation_prefix=quote.prefix,
        derivation_suffix="c3VmZml4",
        sender_identity_key=k.bob.public_key_hex,
        transaction=chain_seeds().atomic,
    )
    receipt = {
        "quote_id": quote.quote_id,
        "payee": k.alice.public_key_hex,
        "payer": k.bob.public_key_hex,
        "resource": quote.resource,
        "price": 50,
        "amount": 50,
        "txid": "cd" * 32,
        "paid_ms": 2,
        "next_quote": b"\x05" * 32,
        "key_id": "receipt-1",
        "sig": quote.sig,
    }
    terms = streams.StreamTerms(
        stream_id="stream-1", producer=k.alice.public_key_hex, pricing_model="per-packet", rate=2, tags=("a",)
    )
    packets = streams.PacketBatch(stream_id="stream-1", first=0, payloads=("one", "two"), head=5)
    return MessageSeeds(
        provider=content.encode_provider(provider),
        tags=content.encode_tag_items(tags),
        children=content.encode_children(children),
        advert=encode_advert(advert),
        index=encode_index([cid, hashlib.sha256(b"other").digest()]),
        grant=grant.to_wire(),
        quote=quote.to_wire(),
        payment=payment.to_wire(),
        receipt=receipt,
        terms=terms.to_wire(),
        packets=packets.to_wire(),
        record=record_to_wire(dht_record()),
        ship=ship_token(k.alice, "SHIP", "https://overlay.example.com", "tm_fuzz"),
        slap=ship_token(k.alice, "SLAP", "wss://overlay.example.com", "ls_fuzz"),
        uhrp=uhrp_token(k.alice, cid, "https://files.example.com/x", int(NOW) + 3600, 1234),
    )
