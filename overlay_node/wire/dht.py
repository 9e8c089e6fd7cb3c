"""The DHT datagram codec: every Kademlia RPC as a frozen dataclass, and its signed (or MAC'd) CBOR envelope.

Invariants:

1. A datagram is the canonical CBOR array ``[inner, sig]``; ``inner`` is the canonical CBOR array
   ``[version, type, sender_pub, timestamp, rpc_id, body]``. In version 1 ``sig`` is the sender's signature over
   ``SIGNING_DOMAIN + inner``; in version 2 (:data:`MAC_VERSION`) it is a 32-byte HMAC-SHA256 over
   ``MAC_DOMAIN + inner`` under the key the sender and the receiver share (``services/dht_rpc.py`` derives it by
   ECDH), which only those two can make. Only one byte string decodes to a given message (canonical form is checked
   on decode), so a relayed datagram cannot be re-encoded into a different but still valid one.
2. The sender's node id is ``SHA-256(sender_pub)``; it is derived, never carried, so a datagram cannot claim an id
   that its key does not own. The same holds for every contact in ``NODES``/``VALUES``.
3. No datagram is larger than :data:`MAX_DATAGRAM` bytes, on encode (``LocalProtocolError``) or decode
   (``DhtDropped("oversized")``). A ``FIND_VALUE`` answer that would not fit is paged: the responder packs what
   fits with :func:`pack_values` and returns a cursor; the asker repeats ``FIND_VALUE`` with that cursor.
4. :func:`decode` raises nothing but :class:`DhtDropped` for any input bytes, whatever their content.
5. Signing and verifying (and MACs) are injected callables, so this module has no crypto dependency; time is passed
   in. A version-2 datagram given to a :func:`decode` without ``verify_mac`` is dropped as ``version``, as a node
   that speaks version 1 only drops it. A datagram replayed within ``max_skew`` still decodes: matching answers to
   our own rpc ids is the service's job.
6. An rpc id that begins with :data:`RPC_MARK` says its sender takes version-2 datagrams (:func:`takes_macs`): a
   node that speaks version 1 only echoes the id, so the mark costs it nothing.
7. The envelope and the inner array's five fixed fields are written and read by hand, in the one shape every
   encoder writes (small version and type, byte strings with the shortest head, a timestamp that needs 64 bits);
   only the body goes through cbor2, loaded and checked canonical on its own (an array's canonical form is its head
   and its items' canonical forms one after another). Whatever has another shape goes through cbor2 whole, as before,
   so every input decodes to the same message, or is dropped for the same reason, either way. A :class:`BodyCache`
   (one per node) keeps the encoded bytes of NODES and VALUES bodies by their fields, the message each body's bytes
   decoded to by (type, bytes), and each record it decoded by its fields: a body (or a record) seen before skips its
   CBOR and its checks, never anything else (rpc id, sender, timestamp, MAC or signature are read and checked for
   every datagram).

Theory of operation: the DHT service calls :func:`encode` with its key's ``sign`` for each outgoing message and
:func:`decode` with a ``verify`` for each incoming datagram, counts ``DhtDropped.reason`` in metrics and moves on.
Paging of ``FIND_VALUE``: a request with ``cursor=None`` asks for closer contacts plus the first records (ordered
by publisher); ``Values.next_cursor`` is ``None`` when nothing is left, else the asker sends ``FIND_VALUE`` with
that cursor (records whose publisher sorts after it; ``b""`` means from the first record) and gets records only.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import ipaddress
import logging
import math
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

import cbor2

from overlay_node.errors import LocalProtocolError, RemoteProtocolError
from overlay_node.lru import LruMap

__all__ = [
    "BODY_CACHE_SIZE",
    "MAC_DOMAIN",
    "MAC_LEN",
    "MAC_VERSION",
    "MAX_CONTACTS",
    "MAX_DATAGRAM",
    "MAX_SIGNATURE",
    "MAX_VALUE",
    "NODE_ID_LEN",
    "PUBKEY_LEN",
    "RPC_ID_LEN",
    "RPC_MARK",
    "SIGNING_DOMAIN",
    "BodyCache",
    "Contact",
    "DhtDropped",
    "DropReason",
    "Envelope",
    "FindNode",
    "FindValue",
    "Message",
    "MessageType",
    "Nodes",
    "Ping",
    "Pong",
    "Record",
    "Store",
    "StoreAck",
    "Values",
    "decode",
    "encode",
    "new_rpc_id",
    "node_id_of",
    "pack_values",
    "records_digest",
    "takes_macs",
]

logger = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = 1
#: Largest datagram we send or accept. Not ~1,200 bytes (docs/design.md, DHT): it has to carry one record with a
#: 1 KiB value plus the envelope (about 1,330 bytes), and stays below the 1,452 bytes of a 1,500-byte MTU.
MAX_DATAGRAM: Final = 1400
#: Largest signature accepted (a DER ECDSA signature is at most 72 bytes).
MAX_SIGNATURE: Final = 80
#: Largest record value the wire carries; a store may set a lower limit, never a higher one.
MAX_VALUE: Final = 1024
RPC_ID_LEN: Final = 8
NODE_ID_LEN: Final = 32
PUBKEY_LEN: Final = 33
#: Most contacts in one NODES/VALUES answer (Kademlia's k).
MAX_CONTACTS: Final = 20
#: A paging cursor is a publisher key.
MAX_CURSOR: Final = PUBKEY_LEN
#: bytes of a VALUES answer's digest of the holder's records (:func:`records_digest`)
DIGEST_LEN: Final = 16
MAX_SEQ: Final = 2**63 - 1
MAX_REASON: Final = 32
SIGNING_DOMAIN: Final = b"overlay-node/dht/v1\n"
#: a datagram authenticated by the MAC of the pair of nodes instead of a signature (invariant 1)
MAC_VERSION: Final = 2
MAC_DOMAIN: Final = b"overlay-node/dht/v2\n"
#: bytes of a version-2 datagram's MAC (HMAC-SHA256, not truncated)
MAC_LEN: Final = 32
#: the first bytes of the rpc ids of a node that takes version-2 datagrams (invariant 6)
RPC_MARK: Final = b"dht2"

DropReason = Literal["oversized", "malformed", "version", "stale", "bad_signature", "bad_node_id"]


class DhtDropped(RemoteProtocolError):
    """An incoming datagram was dropped; ``reason`` is one of :data:`DropReason` (a metrics label)."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"dht datagram dropped: {reason}" + (f" ({detail})" if detail else ""), reason=reason)


def node_id_of(pubkey: bytes) -> bytes:
    """The 32-byte node id of a 33-byte compressed public key: SHA-256 of the key."""
    return hashlib.sha256(pubkey).digest()


def records_digest(records: Iterable[Record]) -> bytes:
    """What a VALUES first page says a holder has under a key: the first :data:`DIGEST_LEN` bytes of SHA-256 over
    ``publisher || seq`` (8 bytes, big-endian) of each of its records, in publisher order. Two holders with the same
    digest hold the same (publisher, seq) pairs, so an asker that fetched every page of one needs no more pages of
    the other."""
    h = hashlib.sha256()
    for record in records:
        h.update(record.publisher + record.seq.to_bytes(8, "big"))
    return h.digest()[:DIGEST_LEN]


def new_rpc_id(*, takes_macs: bool = False) -> bytes:
    """A fresh random rpc id; ``takes_macs``: marked as a version-2 node's (:data:`RPC_MARK` and 4 random bytes:
    ids need only be unique among one node's requests in flight, an answer is matched to its sender too)."""
    if takes_macs:
        return RPC_MARK + os.urandom(RPC_ID_LEN - len(RPC_MARK))
    return os.urandom(RPC_ID_LEN)


def takes_macs(rpc_id: bytes) -> bool:
    """Whether the sender of a request with this rpc id takes version-2 datagrams (invariant 6)."""
    return rpc_id.startswith(RPC_MARK)


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise LocalProtocolError(f"invalid dht message: {what}", reason="malformed")


def _is_bytes(value: object, size: int | None = None, *, max_size: int | None = None) -> bool:
    if type(value) is not bytes:
        return False
    if size is not None and len(value) != size:
        return False
    return max_size is None or len(value) <= max_size


def _check_pubkey(pubkey: object, what: str) -> None:
    ok = isinstance(pubkey, bytes) and _is_bytes(pubkey, PUBKEY_LEN) and pubkey[0] in (2, 3)
    _need(ok, f"{what} must be a 33-byte compressed key")


def _check_int(value: object, lo: int, hi: int, what: str) -> None:
    ok = isinstance(value, int) and type(value) is int and lo <= value <= hi
    _need(ok, f"{what} must be an int in [{lo}, {hi}]")


# Contacts repeat in every NODES/VALUES answer: their IP conversions are memoised (parsing an address costs more
# than the rest of a contact's checks). Invalid input raises ValueError, which lru_cache does not store.


@functools.lru_cache(maxsize=4096)
def _canonical_host(host: str) -> str:
    return str(ipaddress.ip_address(host))


@functools.lru_cache(maxsize=4096)
def _packed_host(host: str) -> bytes:
    return ipaddress.ip_address(host).packed


@functools.lru_cache(maxsize=4096)
def _host_of_packed(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


# -- data carried by messages ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Contact:
    """A DHT node as others can reach it: its key, and the UDP endpoint (an IP literal, not a host name)."""

    pubkey: bytes
    host: str
    port: int
    node_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_pubkey(self.pubkey, "contact pubkey")
        _need(type(self.host) is str, "contact host must be a str")
        try:
            # one spelling per address, so that contacts compare equal after a round trip
            object.__setattr__(self, "host", _canonical_host(self.host))
        except ValueError:
            _need(False, f"contact host {self.host!r} is not an IP address")
        _check_int(self.port, 1, 65535, "contact port")
        object.__setattr__(self, "node_id", node_id_of(self.pubkey))


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """A signed DHT record; see ``protocol/dht_records.py`` for signing and the storage rules.

    An empty ``value`` is a tombstone: it revokes the publisher's earlier records under ``key``.
    ``expires`` is in whole wall-clock seconds since the epoch.
    """

    key: bytes
    value: bytes
    publisher: bytes
    seq: int
    expires: int
    sig: bytes

    def __post_init__(self) -> None:
        _need(_is_bytes(self.key, NODE_ID_LEN), "record key must be 32 bytes")
        _need(_is_bytes(self.value, max_size=MAX_VALUE), f"record value must be bytes of at most {MAX_VALUE}")
        _check_pubkey(self.publisher, "record publisher")
        _check_int(self.seq, 0, MAX_SEQ, "record seq")
        _check_int(self.expires, 0, MAX_SEQ, "record expires")
        _need(_is_bytes(self.sig, max_size=MAX_SIGNATURE) and len(self.sig) > 0, "record sig")

    @property
    def is_tombstone(self) -> bool:
        """True if this record revokes earlier ones of its publisher."""
        return not self.value


# -- messages ----------------------------------------------------------------------------------------------------


class MessageType(enum.IntEnum):
    """The type code of each message on the wire."""

    PING = 1
    PONG = 2
    FIND_NODE = 3
    NODES = 4
    FIND_VALUE = 5
    VALUES = 6
    STORE = 7
    STORE_ACK = 8


def _check_rpc(rpc_id: object) -> None:
    _need(_is_bytes(rpc_id, RPC_ID_LEN), f"rpc_id must be {RPC_ID_LEN} bytes")


def _check_contacts(contacts: object) -> None:
    ok = isinstance(contacts, tuple) and len(contacts) <= MAX_CONTACTS and all(type(c) is Contact for c in contacts)
    _need(ok, f"contacts must be a tuple of at most {MAX_CONTACTS} Contact")


def _check_cursor(cursor: object, what: str) -> None:
    _need(cursor is None or _is_bytes(cursor, max_size=MAX_CURSOR), f"{what} must be None or short bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Are you alive? Answered by :class:`Pong`."""

    rpc_id: bytes

    def __post_init__(self) -> None:
        _check_rpc(self.rpc_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """Answer to :class:`Ping`."""

    rpc_id: bytes

    def __post_init__(self) -> None:
        _check_rpc(self.rpc_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class FindNode:
    """Ask for the contacts closest to ``target``; answered by :class:`Nodes`."""

    rpc_id: bytes
    target: bytes

    def __post_init__(self) -> None:
        _check_rpc(self.rpc_id)
        _need(_is_bytes(self.target, NODE_ID_LEN), "target must be 32 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Nodes:
    """Answer to :class:`FindNode`: up to k contacts."""

    rpc_id: bytes
    contacts: tuple[Contact, ...]

    def __post_init__(self) -> None:
        _check_rpc(self.rpc_id)
        _check_contacts(self.contacts)


@dataclass(frozen=True, slots=True, kw_only=True)
class FindValue:
    """Ask for the records under ``key``; ``cursor=None`` also asks for closer contacts (the first page)."""

    rpc_id: bytes
    key: bytes
    cursor: bytes | None = None

    def __post_init__(self) -> None:
        _check_rpc(self.rpc_id)
        _need(_is_bytes(self.key, NODE_ID_LEN), "key must be 32 bytes")
        _check_cursor(self.cursor, "cursor")


@dataclass(frozen=True, slots=True, kw_only=True)
class Values:
    """Answer to :class:`FindValue`: one page of records (all under ``key``), closer contacts on the first page, and
    on a first page that has more pages after it the :func:`records_digest` of all the holder's records."""

    rpc_id: bytes
    key: bytes
    records: tuple[Record, ...]
    next_cursor: bytes | None
    contacts: tuple[Contact, ...] = ()
    digest: bytes | None = None

    def __post_init__(self) -> None:
        _check_rpc(self.rpc_id)
        _need(_is_bytes(self.key, NODE_ID_LEN), "key must be 32 bytes")
        _need(type(self.records) is tuple, "records must be a tuple")
        _need(all(type(r) is Record and r.key == self.key for r in self.records), "records must be under key")
        _check_cursor(self.next_cursor, "next_cursor")
        _check_contacts(self.contacts)
        _need(self.digest is None or _is_bytes(self.digest, DIGEST_LEN), f"digest must be None or {DIGEST_LEN} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Store:
    """Store one record; answered by :class:`StoreAck`."""

    rpc_id: bytes
    record: Record

    def __post_init__(self) -> None:
        _check_rpc(self.rpc_id)
        _need(type(self.record) is Record, "record must be a Record")


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreAck:
    """Answer to :class:`Store`: whether it was kept and, if not, a short reason (a store refusal code)."""

    rpc_id: bytes
    stored: bool
    reason: str = ""

    def __post_init__(self) -> None:
        _check_rpc(self.rpc_id)
        _need(type(self.stored) is bool, "stored must be a bool")
        _need(type(self.reason) is str and len(self.reason) <= MAX_REASON, "reason must be a short str")


Message = Ping | Pong | FindNode | Nodes | FindValue | Values | Store | StoreAck

_TYPE_OF: Final[dict[type[Message], MessageType]] = {
    Ping: MessageType.PING,
    Pong: MessageType.PONG,
    FindNode: MessageType.FIND_NODE,
    Nodes: MessageType.NODES,
    FindValue: MessageType.FIND_VALUE,
    Values: MessageType.VALUES,
    Store: MessageType.STORE,
    StoreAck: MessageType.STORE_ACK,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A decoded, verified datagram: who sent it, when (their wall clock), and the message; ``mac``: it came as
    version 2 (MAC'd, not signed)."""

    sender_pub: bytes
    timestamp: float
    message: Message
    mac: bool = False
    sender_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_pubkey(self.sender_pub, "sender pubkey")
        object.__setattr__(self, "sender_id", node_id_of(self.sender_pub))


# -- body encoding -----------------------------------------------------------------------------------------------

_Raw = list[object]


def _contact_raw(c: Contact) -> _Raw:
    return [c.pubkey, _packed_host(c.host), c.port]


def _record_raw(r: Record, *, with_key: bool) -> _Raw:
    fields: _Raw = [r.value, r.publisher, r.seq, r.expires, r.sig]
    return [r.key, *fields] if with_key else fields


def _body(msg: Message) -> _Raw:
    match msg:
        case Ping() | Pong():
            return []
        case FindNode(target=target):
            return [target]
        case Nodes(contacts=contacts):
            return [[_contact_raw(c) for c in contacts]]
        case FindValue(key=key, cursor=cursor):
            return [key, cursor]
        case Values(key=key, records=records, next_cursor=cursor, contacts=contacts, digest=digest):
            raw: list[object] = [
                key,
                [_record_raw(r, with_key=False) for r in records],
                cursor,
                [_contact_raw(c) for c in contacts],
            ]
            return raw if digest is None else [*raw, digest]
        case Store(record=record):
            return [_record_raw(record, with_key=True)]
        case StoreAck(stored=stored, reason=reason):
            return [stored, reason]


# -- canonical CBOR by hand (invariant 7) ---------------------------------------------------------------------------


def _bytes_item(value: bytes) -> bytes:
    """The canonical CBOR item of a byte string (shorter than 65,536 bytes, as everything in a datagram is)."""
    size = len(value)
    if size < 24:
        return bytes((0x40 | size,)) + value
    if size < 0x100:
        return bytes((0x58, size)) + value
    return b"\x59" + size.to_bytes(2, "big") + value


def _read_bytes_item(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """The byte string whose canonical CBOR item starts at ``pos`` and the position after it; None if none does
    (another type, a longer head than the size needs, or too few bytes)."""
    if pos >= len(data):
        return None
    head = data[pos]
    if 0x40 <= head < 0x58:
        size, start = head - 0x40, pos + 1
    elif head == 0x58 and pos + 1 < len(data) and data[pos + 1] >= 24:
        size, start = data[pos + 1], pos + 2
    elif head == 0x59 and pos + 2 < len(data):
        size, start = int.from_bytes(data[pos + 1 : pos + 3], "big"), pos + 3
        if size < 0x100:
            return None
    else:
        return None
    end = start + size
    if end > len(data):
        return None
    return data[start:end], end


_F64: Final = struct.Struct(">d")
_F32: Final = struct.Struct(">f")


def _fits_float32(value: float) -> bool:
    """Whether canonical CBOR writes ``value`` in 32 bits or fewer (a finite value a 32-bit float holds exactly)."""
    try:
        return bool(_F32.unpack(_F32.pack(value))[0] == value)
    except OverflowError:
        return False


def _envelope_parts(data: bytes) -> tuple[bytes, bytes] | None:
    """``inner`` and ``sig`` of a datagram that is the canonical array of two byte strings; None if it is not."""
    if data[:1] != b"\x82":
        return None
    first = _read_bytes_item(data, 1)
    if first is None:
        return None
    inner, pos = first
    second = _read_bytes_item(data, pos)
    if second is None or second[1] != len(data):
        return None
    return inner, second[0]


def _inner_parts(inner: bytes) -> tuple[int, int, bytes, float, bytes, bytes] | None:
    """Version, type, sender key, timestamp, rpc id and the body's bytes of an inner array in the shape every
    encoder writes (small version and type, byte strings, a timestamp that needs 64 bits); None if it has another
    shape, which the generic path then judges. Each part read here is canonical; the body is not checked."""
    if len(inner) < 3 or inner[0] != 0x86 or inner[1] >= 24 or inner[2] >= 24:
        return None
    item = _read_bytes_item(inner, 3)
    if item is None:
        return None
    sender_pub, pos = item
    if inner[pos : pos + 1] != b"\xfb" or len(inner) < pos + 9:
        return None
    (timestamp,) = _F64.unpack_from(inner, pos + 1)
    if not math.isfinite(timestamp) or _fits_float32(timestamp):
        return None
    item = _read_bytes_item(inner, pos + 9)
    if item is None or item[1] >= len(inner):
        return None
    rpc_id, pos = item
    return inner[1], inner[2], sender_pub, timestamp, rpc_id, inner[pos:]


#: bodies each of a node's two caches holds (:class:`BodyCache`)
BODY_CACHE_SIZE: Final = 1024
#: the fields of each message besides its rpc id, in order
_BODY_FIELDS: Final[dict[type[Message], tuple[str, ...]]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls) if f.name != "rpc_id") for cls in _TYPE_OF
}


class BodyCache:
    """The message bodies one node sends and receives again and again, each encoded or decoded once (invariant 7).

    Answers repeat: a holder sends every asker of a key the same records and much the same contacts, and a node
    that looks a key up again gets the same answers, each under a new rpc id. Encoding keeps the bytes of the
    bodies of :class:`Nodes` and :class:`Values` by their fields; decoding keeps the message each body's bytes
    decoded to (after the checks that passed), by type and bytes, and each record by its fields (the holders of a
    key send the same records in bodies that differ, by their contacts). Bytes decode to one message whoever sends them,
    so what is kept is only ever what the checks would give again (a flood of new bodies only pushes old ones out).
    Each node (``services/dht_rpc.py``) has its own.
    """

    __slots__ = ("decoded", "encoded", "records")

    def __init__(self, size: int = BODY_CACHE_SIZE) -> None:
        self.decoded: LruMap[tuple[int, bytes], Message] = LruMap(size)
        self.encoded: LruMap[tuple[object, ...], bytes] = LruMap(size)
        self.records: LruMap[tuple[object, ...], Record] = LruMap(size)


def _body_bytes(msg: Message, cache: BodyCache | None) -> bytes:
    if cache is None or not isinstance(msg, Values | Nodes):
        return cbor2.dumps(_body(msg), canonical=True)
    key = (type(msg), *(getattr(msg, name) for name in _BODY_FIELDS[type(msg)]))
    body = cache.encoded.get(key)
    if body is None:
        body = cbor2.dumps(_body(msg), canonical=True)
        cache.encoded.put(key, body)
    return body


def _with_rpc_id(template: Message, rpc_id: object) -> Message:
    """``template`` (a checked message) under another rpc id, without checking its other fields again."""
    _check_rpc(rpc_id)
    cls = type(template)
    message = object.__new__(cls)
    object.__setattr__(message, "rpc_id", rpc_id)
    for name in _BODY_FIELDS[cls]:
        object.__setattr__(message, name, getattr(template, name))
    return message


def _inner(
    msg: Message, sender_pub: bytes, now: float, version: int = PROTOCOL_VERSION, cache: BodyCache | None = None
) -> bytes:
    """The canonical CBOR of ``[version, type, sender_pub, now, rpc_id, body]``: an array's items one after another
    behind its head, so the fixed fields are written by hand and the body may come from ``cache``."""
    return b"".join(
        (
            bytes((0x86, version, _TYPE_OF[type(msg)])),
            _bytes_item(sender_pub),
            cbor2.dumps(float(now), canonical=True),
            _bytes_item(msg.rpc_id),
            _body_bytes(msg, cache),
        )
    )


def encode(
    msg: Message,
    *,
    sender_pub: bytes,
    now: float,
    sign: Callable[[bytes], bytes],
    mac: bool = False,
    cache: BodyCache | None = None,
) -> bytes:
    """Encode and sign (or MAC) one message as a datagram.

    Args:
        msg: the message.
        sender_pub: our 33-byte compressed public key.
        now: wall-clock seconds (``clock.wall_time()``), checked by the receiver against its clock.
        sign: signs ``SIGNING_DOMAIN + inner`` with the key of ``sender_pub``; with ``mac``, the HMAC of
            ``MAC_DOMAIN + inner`` under the key shared with the receiver.
        mac: a version-2 datagram (invariant 1).
        cache: the sender's :class:`BodyCache` (the bytes are the same with or without it).

    Returns:
        The datagram bytes.

    Raises:
        LocalProtocolError: the datagram would be larger than :data:`MAX_DATAGRAM` (page with
            :func:`pack_values`), the signature is too long (a MAC not :data:`MAC_LEN` bytes), or
            ``sender_pub``/``now`` are invalid.
    """
    _check_pubkey(sender_pub, "sender_pub")
    _need(math.isfinite(now), "now must be finite")
    if mac:
        inner = _inner(msg, sender_pub, now, MAC_VERSION, cache)
        sig = sign(MAC_DOMAIN + inner)
        _need(_is_bytes(sig, MAC_LEN), f"a mac must be {MAC_LEN} bytes")
    else:
        inner = _inner(msg, sender_pub, now, PROTOCOL_VERSION, cache)
        sig = sign(SIGNING_DOMAIN + inner)
        _need(_is_bytes(sig, max_size=MAX_SIGNATURE) and len(sig) > 0, "signature must be 1..80 bytes")
    data = b"\x82" + _bytes_item(inner) + _bytes_item(sig)
    if len(data) > MAX_DATAGRAM:
        raise LocalProtocolError(
            f"dht datagram of {len(data)} bytes exceeds {MAX_DATAGRAM} ({type(msg).__name__})", reason="oversized"
        )
    return data


# -- decoding ----------------------------------------------------------------------------------------------------


def _loads_canonical(data: bytes) -> object:
    """Decode CBOR that must be in canonical form with no trailing bytes; raise DhtDropped otherwise."""
    try:
        obj = cbor2.loads(data, max_depth=6, allow_indefinite=False, allow_duplicate_keys=False)
        again = cbor2.dumps(obj, canonical=True)
    except Exception as exc:  # noqa: BLE001 -- foreign bytes: any cbor2 failure is a malformed datagram
        raise DhtDropped("malformed", f"cbor: {type(exc).__name__}") from None
    if again != data:
        raise DhtDropped("malformed", "not canonical cbor")
    return obj


def _list(raw: object, size: int | None = None) -> list[object]:
    if type(raw) is not list or (size is not None and len(raw) != size):
        raise DhtDropped("malformed", "wrong shape")
    return raw


# Decoded values go to the dataclasses as they are: their __post_init__ checks every type and size (hence the
# arg-type ignores) and raises LocalProtocolError, which decode() turns into DhtDropped("malformed").


def _contact_from(raw: object) -> Contact:
    pubkey, packed, port = _list(raw, 3)
    if type(packed) is not bytes or len(packed) not in (4, 16):
        raise DhtDropped("malformed", "contact address")
    if type(pubkey) is not bytes or type(port) is not int:
        raise DhtDropped("malformed", "contact fields")
    return _contact_of(pubkey, packed, port)


@functools.lru_cache(maxsize=4096)
def _contact_of(pubkey: bytes, packed: bytes, port: int) -> Contact:
    """Contacts repeat in every answer: a checked one is shared (it is immutable), so the checks and the node id
    hash run once per contact. Invalid input raises LocalProtocolError, which lru_cache does not store."""
    return Contact(pubkey=pubkey, host=_host_of_packed(packed), port=port)


def _record_from(raw: object, key: bytes | None, known: LruMap[tuple[object, ...], Record] | None = None) -> Record:
    """The record of a decoded body's fields; ``known``: a node's records by their fields (:class:`BodyCache`), for
    the records every holder of a key sends again."""
    fields = _list(raw, 5 if key is not None else 6)
    if key is None:
        key_obj, *fields = fields
    else:
        key_obj = key
    value, publisher, seq, expires, sig = fields
    slot = (key_obj, value, publisher, seq, expires, sig)
    # only fields of the right types are looked up (a list would not even hash); the others fail the record's checks
    typed = (
        type(seq) is int and type(expires) is int and all(type(f) is bytes for f in (key_obj, value, publisher, sig))
    )
    record = known.get(slot) if known is not None and typed else None
    if record is None:
        record = Record(key=key_obj, value=value, publisher=publisher, seq=seq, expires=expires, sig=sig)  # type: ignore[arg-type]
        if known is not None:
            known.put(slot, record)  # the record's checks passed: its fields hash
    return record


def _message_from(
    mtype: MessageType, rpc_id: bytes, body: list[object], known: LruMap[tuple[object, ...], Record] | None = None
) -> Message:
    match mtype:
        case MessageType.PING:
            _list(body, 0)
            return Ping(rpc_id=rpc_id)
        case MessageType.PONG:
            _list(body, 0)
            return Pong(rpc_id=rpc_id)
        case MessageType.FIND_NODE:
            (target,) = _list(body, 1)
            return FindNode(rpc_id=rpc_id, target=target)  # type: ignore[arg-type]
        case MessageType.NODES:
            (contacts,) = _list(body, 1)
            return Nodes(rpc_id=rpc_id, contacts=tuple(_contact_from(c) for c in _list(contacts)))
        case MessageType.FIND_VALUE:
            key, cursor = _list(body, 2)
            return FindValue(rpc_id=rpc_id, key=key, cursor=cursor)  # type: ignore[arg-type]
        case MessageType.VALUES:
            if len(_list(body)) == 4:
                key, records, cursor, contacts = body
                digest = None
            else:
                key, records, cursor, contacts, digest = _list(body, 5)
                if digest is None:
                    raise DhtDropped("malformed", "values digest")  # absent is written by leaving it out
            if type(key) is not bytes:
                raise DhtDropped("malformed", "values key")
            return Values(
                rpc_id=rpc_id,
                key=key,
                records=tuple(_record_from(r, key, known) for r in _list(records)),
                next_cursor=cursor,  # type: ignore[arg-type]
                contacts=tuple(_contact_from(c) for c in _list(contacts)),
                digest=digest,  # type: ignore[arg-type]
            )
        case MessageType.STORE:
            (record,) = _list(body, 1)
            return Store(rpc_id=rpc_id, record=_record_from(record, None, known))
        case MessageType.STORE_ACK:
            stored, reason = _list(body, 2)
            return StoreAck(rpc_id=rpc_id, stored=stored, reason=reason)  # type: ignore[arg-type]


def _envelope(data: bytes) -> tuple[bytes, bytes]:
    """``inner`` and ``sig`` of a datagram: by hand (invariant 7), else through cbor2, which says what is wrong."""
    parts = _envelope_parts(data)
    if parts is None:
        inner, sig = _list(_loads_canonical(data), 2)
    else:
        inner, sig = parts
    if not _is_bytes(inner) or not _is_bytes(sig, max_size=MAX_SIGNATURE) or not sig:
        raise DhtDropped("malformed", "envelope fields")
    assert isinstance(inner, bytes)  # narrowed for mypy by the check above
    assert isinstance(sig, bytes)
    return inner, sig


@dataclass(slots=True)
class _Fields:
    """The inner array's fields as read, not checked yet; the body parsed, or the message it decoded to before."""

    version: object
    mtype: object
    sender_pub: object
    timestamp: object
    rpc_id: object
    body: object = None
    known: Message | None = None
    #: the body's bytes when the fixed fields were read by hand (a :class:`BodyCache` key with the type)
    body_bytes: bytes | None = None


def _fields(inner: bytes, cache: BodyCache | None) -> _Fields:
    """Read the fields of ``inner``: by hand, the body checked canonical on its own or found in ``cache``
    (invariant 7); else all through cbor2, which says what is wrong."""
    fixed = _inner_parts(inner)
    if fixed is None:
        version, mtype, sender_pub, timestamp, rpc_id, body = _list(_loads_canonical(inner), 6)
        return _Fields(version, mtype, sender_pub, timestamp, rpc_id, body)
    version, mtype, sender_pub, timestamp, rpc_id, body_bytes = fixed
    fields = _Fields(version, mtype, sender_pub, timestamp, rpc_id, body_bytes=body_bytes)
    if cache is not None:
        fields.known = cache.decoded.get((mtype, body_bytes))
    if fields.known is None:
        fields.body = _loads_canonical(body_bytes)
    return fields


def _message(fields: _Fields, cache: BodyCache | None) -> Message:
    """The message of checked fixed fields: from the one its body decoded to before, or decoded (and kept)."""
    if fields.known is not None:
        return _with_rpc_id(fields.known, fields.rpc_id)
    records = cache.records if cache is not None else None
    message = _message_from(MessageType(fields.mtype), fields.rpc_id, _list(fields.body), records)  # type: ignore[arg-type]
    if cache is not None and fields.body_bytes is not None:
        cache.decoded.put((fields.mtype, fields.body_bytes), message)  # type: ignore[arg-type]  # an int: checked
    return message


def decode(
    data: bytes,
    *,
    now: float,
    verify: Callable[[bytes, bytes, bytes], bool],
    max_skew: float,
    expect_node_id: bytes | None = None,
    verify_mac: Callable[[bytes, bytes, bytes], bool] | None = None,
    cache: BodyCache | None = None,
) -> Envelope:
    """Parse, check and verify one datagram.

    Checks run cheapest first: size, CBOR shape and canonical form, message fields, timestamp, expected sender,
    signature (or MAC).

    Args:
        data: the datagram as received.
        now: our wall-clock seconds.
        verify: ``verify(pubkey, message, signature) -> bool``; must return False (not raise) for bad input.
        max_skew: largest accepted difference, in seconds, between the sender's timestamp and ``now``.
        expect_node_id: if given (an answer to a request we sent), the sender must have this node id.
        verify_mac: ``verify_mac(pubkey, message, mac) -> bool`` for version 2 (the MAC under the key shared with
            the sender); without it a version-2 datagram is dropped as ``version``.
        cache: the receiver's :class:`BodyCache` (the outcome is the same with or without it).

    Returns:
        The verified envelope.

    Raises:
        DhtDropped: the datagram is oversized, malformed, of another version, stale or from the future, not from
            ``expect_node_id`` (``bad_node_id``), or its signature does not verify.
    """
    if type(data) is not bytes:
        raise DhtDropped("malformed", "not bytes")
    if len(data) > MAX_DATAGRAM:
        raise DhtDropped("oversized", f"{len(data)} bytes")
    inner, sig = _envelope(data)
    fields = _fields(inner, cache)
    version, timestamp = fields.version, fields.timestamp
    if type(version) is not int or not (
        version == PROTOCOL_VERSION or (version == MAC_VERSION and verify_mac is not None)
    ):
        raise DhtDropped("version", f"version {version!r}")
    mac = version == MAC_VERSION
    if mac and len(sig) != MAC_LEN:
        raise DhtDropped("malformed", "mac length")
    if type(fields.mtype) is not int or not MessageType.PING <= fields.mtype <= MessageType.STORE_ACK:
        raise DhtDropped("malformed", "unknown message type")
    if type(timestamp) is not float or not math.isfinite(timestamp):
        raise DhtDropped("malformed", "timestamp")
    try:
        message = _message(fields, cache)
        envelope = Envelope(sender_pub=fields.sender_pub, timestamp=timestamp, message=message, mac=mac)  # type: ignore[arg-type]
    except LocalProtocolError as exc:
        raise DhtDropped("malformed", str(exc)) from None
    except ValueError:  # unpacking a list of the wrong length
        raise DhtDropped("malformed", "wrong shape") from None
    if abs(timestamp - now) > max_skew:
        raise DhtDropped("stale", f"timestamp off by {timestamp - now:.1f}s")
    if expect_node_id is not None and envelope.sender_id != expect_node_id:
        raise DhtDropped("bad_node_id", "answer from another node than the one asked")
    try:
        if mac:
            assert verify_mac is not None  # a version-2 datagram got this far only with one
            ok = verify_mac(envelope.sender_pub, MAC_DOMAIN + inner, sig)
        else:
            ok = verify(envelope.sender_pub, SIGNING_DOMAIN + inner, sig)
    except ValueError:  # a verifier that rejects a malformed key by raising
        ok = False
    if not ok:
        raise DhtDropped("bad_signature")
    return envelope


# -- paging ------------------------------------------------------------------------------------------------------

_DUMMY_PUB: Final = b"\x02" + b"\x00" * 32
_MAX_CURSOR_BYTES: Final = b"\x00" * MAX_CURSOR


def _worst_case_size(msg: Message) -> int:
    """Encoded datagram size of ``msg`` with the longest accepted signature."""
    inner = _inner(msg, _DUMMY_PUB, 1.0e9 + 0.5)
    return 1 + len(_bytes_item(inner)) + len(_bytes_item(bytes(MAX_SIGNATURE)))


def pack_values(
    *,
    rpc_id: bytes,
    key: bytes,
    records: Iterable[Record],
    contacts: Iterable[Contact] = (),
    first_page: bool,
    digest: bytes | None = None,
) -> Values:
    """Build the largest :class:`Values` page that fits in one datagram.

    Args:
        rpc_id: the rpc id of the :class:`FindValue` being answered.
        key: the record key asked for.
        records: the records to send, ordered by publisher and starting after the request's cursor.
        contacts: closer contacts; sent only on the first page (request cursor ``None``).
        first_page: whether the request had ``cursor=None``.
        digest: the :func:`records_digest` of all the records under ``key``; sent on a first page that does not
            hold them all.

    Returns:
        A page with as many records as fit and ``next_cursor`` set when some did not (``b""`` if none fit on a
        first page, so the next request starts from the first record).

    Raises:
        LocalProtocolError: a single record does not fit even on its own (cannot happen for valid records).
    """
    page_contacts = tuple(contacts)[:MAX_CONTACTS] if first_page else ()
    page_digest = digest if first_page else None
    taken: list[Record] = []
    more = False
    for record in records:
        # sized with the longest cursor: the page sent may carry one (a publisher key) if more records follow
        trial = Values(
            rpc_id=rpc_id,
            key=key,
            records=(*taken, record),
            next_cursor=_MAX_CURSOR_BYTES,
            contacts=page_contacts,
            digest=page_digest,
        )
        if _worst_case_size(trial) <= MAX_DATAGRAM:
            taken.append(record)
            continue
        if not taken and not page_contacts:
            raise LocalProtocolError("a single dht record does not fit in a datagram", reason="oversized")
        more = True
        break
    cursor: bytes | None = None
    if more:
        cursor = taken[-1].publisher if taken else b""
    return Values(
        rpc_id=rpc_id,
        key=key,
        records=tuple(taken),
        next_cursor=cursor,
        contacts=page_contacts,
        digest=page_digest if more else None,
    )
