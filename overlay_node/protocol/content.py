"""Content as data: chunk plans and manifests, replica states, placement by XOR distance, the DHT record values
(provider and tag records) and access grants. Pure: no I/O, no clocks (callers pass wall-clock seconds).

Invariants:

1. A content id is the 32-byte SHA-256 of the bytes. The **manifest** splits the content into chunks of one
   ``chunk_size`` (a power of two, at least 64 KiB, chosen so that a manifest holds at most ``MAX_CHUNKS``
   hashes) and lists the SHA-256 of each. A manifest only speeds up detecting a bad holder: a download is good
   when the whole-content SHA-256 equals the id, whoever supplied the manifest.
2. A replica moves ``pending -> transferring -> available`` or ends ``failed``; ``failed`` may be retried
   (back to ``pending``). Only ``available`` counts towards the replication factor. A repair pass moves an
   ``available`` replica whose holder does not answer to ``unreachable`` (and back when it answers again).
3. Placement ranks candidate nodes by XOR distance between their node id (SHA-256 of the identity key) and the
   content id; the closest that accept hold the replicas. The same rule picks who repairs (the closest live
   holder) and who trims (the farthest).
4. A provider record (DHT key ``uhrp:<hex>``, published by the holder) says "I hold it" with the size, content
   type, price, producer and expiry; a tag record (``tag:<tag>``, published by the producer) lists up to
   ``MAX_TAG_ITEMS`` of its contents, newest first. Both values stay under the DHT's 1 KiB value limit.
   Content published with lineage carries it in every provider record (``pa`` parents, ``rl`` relationship), so
   replicas and any node can tell its parents; a children record (``children:<parent hex>``, published by each
   node that holds content derived from that parent) lists up to ``MAX_CHILD_ITEMS`` children with their
   relationship, so descendants can be found from the parent.
5. An access grant is signed by the producer over (content id, consumer identity key, expiry); any holder checks
   it before serving priced content to that consumer.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any, Final

import cbor2

from overlay_node.crypto.keys import Identity, ecdsa_verify_digest, parse_public_key
from overlay_node.errors import BadRequest

__all__ = [
    "MAX_CHILD_ITEMS",
    "MAX_CHUNKS",
    "MAX_PARENTS",
    "MIN_CHUNK",
    "RELATIONSHIPS",
    "AccessGrant",
    "ChildItem",
    "ChunkPlan",
    "ProviderRecord",
    "ReplicaState",
    "TagItem",
    "can_transition",
    "chunk_hashes",
    "decode_children",
    "decode_provider",
    "decode_tag_items",
    "encode_children",
    "encode_provider",
    "encode_tag_items",
    "grant_digest",
    "node_id_of_key",
    "rank_by_distance",
    "sign_grant",
    "verify_grant",
    "xor_distance",
]

MIN_CHUNK: Final = 64 * 1024
MAX_CHUNKS: Final = 16_384
MAX_TAG_ITEMS: Final = 16
MAX_CONTENT_TYPE: Final = 128
RELATIONSHIPS: Final = ("derived", "processed", "enriched")
#: parents one content may name (all of them travel in its provider records, under the 1 KiB value limit)
MAX_PARENTS: Final = 8
MAX_CHILD_ITEMS: Final = 16
_GRANT_TAG: Final = "overlay-node/access-grant/1"
_MAX_VALUE: Final = 1024


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise BadRequest(message)


# -- chunk plans -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkPlan:
    """How content of ``size`` bytes is cut into chunks of ``chunk_size`` (the last one may be shorter)."""

    size: int
    chunk_size: int

    def __post_init__(self) -> None:
        _need(self.size >= 0, "content size must not be negative")
        _need(
            self.chunk_size >= MIN_CHUNK and self.chunk_size & (self.chunk_size - 1) == 0,
            f"chunk size must be a power of two of at least {MIN_CHUNK}",
        )
        _need(self.count <= MAX_CHUNKS, f"content of {self.size} bytes needs more than {MAX_CHUNKS} chunks")

    @classmethod
    def for_size(cls, size: int, preferred: int) -> ChunkPlan:
        """The plan for ``size`` bytes: ``preferred`` (rounded up to a power of two) or larger if needed."""
        chunk = max(MIN_CHUNK, 1 << max(0, preferred - 1).bit_length())
        while -(-size // chunk) > MAX_CHUNKS:
            chunk *= 2
        return cls(size=size, chunk_size=chunk)

    @property
    def count(self) -> int:
        return max(1, -(-self.size // self.chunk_size)) if self.size else 0

    def bounds(self, index: int) -> tuple[int, int]:
        """``(offset, length)`` of chunk ``index``."""
        _need(0 <= index < self.count, f"chunk {index} out of range 0..{self.count - 1}")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)


def chunk_hashes(data: bytes, plan: ChunkPlan) -> list[bytes]:
    """The manifest of ``data`` under ``plan`` (tests and small content; the blob store hashes while writing)."""
    return [hashlib.sha256(data[o : o + n]).digest() for o, n in (plan.bounds(i) for i in range(plan.count))]


# -- replica states ----------------------------------------------------------------------------------------------


class ReplicaState(enum.StrEnum):
    PENDING = "pending"
    TRANSFERRING = "transferring"
    AVAILABLE = "available"
    #: was available; did not answer the last live-holder check (or its provider record is gone)
    UNREACHABLE = "unreachable"
    FAILED = "failed"


_TRANSITIONS: Final = {
    ReplicaState.PENDING: {ReplicaState.TRANSFERRING, ReplicaState.AVAILABLE, ReplicaState.FAILED},
    ReplicaState.TRANSFERRING: {ReplicaState.AVAILABLE, ReplicaState.FAILED},
    ReplicaState.AVAILABLE: {ReplicaState.FAILED, ReplicaState.AVAILABLE, ReplicaState.UNREACHABLE},
    ReplicaState.UNREACHABLE: {ReplicaState.AVAILABLE, ReplicaState.PENDING, ReplicaState.FAILED},
    ReplicaState.FAILED: {ReplicaState.PENDING, ReplicaState.AVAILABLE},
}


def can_transition(old: ReplicaState, new: ReplicaState) -> bool:
    """Whether a replica may move from ``old`` to ``new`` (see invariant 2)."""
    return new in _TRANSITIONS[old]


# -- placement ---------------------------------------------------------------------------------------------------


def node_id_of_key(identity_key: bytes | str) -> bytes:
    """The DHT node id of an identity key: SHA-256 of its 33 bytes."""
    raw = bytes.fromhex(identity_key) if isinstance(identity_key, str) else identity_key
    return hashlib.sha256(raw).digest()


def xor_distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def rank_by_distance(content_id: bytes, identity_keys: list[str]) -> list[str]:
    """``identity_keys`` (hex), closest to ``content_id`` first (ties broken by key, so every node agrees)."""
    return sorted(set(identity_keys), key=lambda k: (xor_distance(node_id_of_key(k), content_id), k))


# -- DHT record values -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderRecord:
    """The value of a holder's record under ``uhrp:<hex>``."""

    content_id: bytes
    size: int
    content_type: str = "application/octet-stream"
    price: int = 0
    producer: bytes = b""
    expires: int = 0
    chunk_size: int = MIN_CHUNK
    swarm: tuple[str, ...] = ()
    http: str = ""
    #: lineage: the content ids this one derives from, and how (one of ``RELATIONSHIPS``; both empty for none)
    parents: tuple[bytes, ...] = ()
    relationship: str = ""

    def __post_init__(self) -> None:
        _need(len(self.content_id) == 32, "content id must be 32 bytes")
        _check_lineage(self.parents, self.relationship)
        _need(self.size >= 0 and self.price >= 0 and self.expires >= 0, "size, price and expiry must be >= 0")
        _need(len(self.content_type) <= MAX_CONTENT_TYPE, "content type too long")
        _need(self.producer == b"" or len(self.producer) == 33, "producer must be a 33-byte key")
        _need(len(self.swarm) <= 4 and all(len(a) <= 200 for a in self.swarm), "too many or too long addresses")
        _need(len(self.http) <= 200, "http address too long")

    def as_dict(self) -> dict[str, Any]:
        return {
            "hash": self.content_id.hex(),
            "size": self.size,
            "content_type": self.content_type,
            "price": self.price,
            "producer": self.producer.hex(),
            "expires": self.expires,
            "swarm": list(self.swarm),
            "http": self.http,
            "parents": [p.hex() for p in self.parents],
            "relationship": self.relationship,
        }


def _check_lineage(parents: tuple[bytes, ...], relationship: str) -> None:
    _need(len(parents) <= MAX_PARENTS, f"at most {MAX_PARENTS} parents")
    _need(all(isinstance(p, bytes) and len(p) == 32 for p in parents), "a parent must be a 32-byte content id")
    _need(
        (not parents and relationship == "") or (bool(parents) and relationship in RELATIONSHIPS),
        f"parents need a relationship of {', '.join(RELATIONSHIPS)} (and a relationship needs parents)",
    )


def encode_provider(record: ProviderRecord) -> bytes:
    fields: dict[str, Any] = {
        "v": 1,
        "h": record.content_id,
        "s": record.size,
        "ct": record.content_type,
        "p": record.price,
        "pr": record.producer,
        "e": record.expires,
        "c": record.chunk_size,
        "sw": list(record.swarm),
        "ht": record.http,
    }
    if record.parents:  # content without lineage keeps the record it always had
        fields |= {"pa": list(record.parents), "rl": record.relationship}
    value = cbor2.dumps(fields)
    _need(len(value) <= _MAX_VALUE, "provider record too large")
    return value


def _decode_map(value: bytes, what: str) -> dict[Any, Any]:
    _need(isinstance(value, bytes) and 0 < len(value) <= _MAX_VALUE, f"{what}: bad size")
    try:
        data = cbor2.loads(value)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise BadRequest(f"{what}: not CBOR: {exc}") from exc
    if not isinstance(data, dict) or data.get("v") != 1:
        raise BadRequest(f"{what}: not a version-1 map")
    return dict(data)


def decode_provider(value: bytes) -> ProviderRecord:
    """Parse a provider record value.

    Raises:
        BadRequest: not a well-formed provider record.
    """
    d = _decode_map(value, "provider record")
    try:
        swarm = d.get("sw", [])
        _need(isinstance(swarm, list) and all(isinstance(a, str) for a in swarm), "bad swarm list")
        parents = d.get("pa", [])
        _need(isinstance(parents, list), "bad parent list")
        _need(isinstance(d.get("rl", ""), str), "bad field relationship")
        fields: dict[str, Any] = {
            "content_id": d["h"],
            "size": d["s"],
            "content_type": d.get("ct", "application/octet-stream"),
            "price": d.get("p", 0),
            "producer": d.get("pr", b""),
            "expires": d.get("e", 0),
            "chunk_size": d.get("c", MIN_CHUNK),
            "swarm": tuple(swarm),
            "http": d.get("ht", ""),
            "parents": tuple(parents),
            "relationship": d.get("rl", ""),
        }
        types = {"content_id": bytes, "size": int, "content_type": str, "price": int, "producer": bytes}
        types |= {"expires": int, "chunk_size": int, "http": str}
        for key, typ in types.items():
            _need(isinstance(fields[key], typ) and not isinstance(fields[key], bool), f"bad field {key}")
        return ProviderRecord(**fields)
    except KeyError as exc:
        raise BadRequest(f"provider record: missing {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class TagItem:
    """One content listed in a tag record."""

    content_id: bytes
    size: int
    price: int
    content_type: str
    title: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "hash": self.content_id.hex(),
            "size": self.size,
            "price": self.price,
            "content_type": self.content_type,
            "title": self.title,
        }


def encode_tag_items(items: list[TagItem]) -> bytes:
    """A tag record value: as many of ``items`` (newest first) as fit in 1 KiB; titles are cut to 40 chars."""
    kept: list[list[object]] = []
    for item in items[:MAX_TAG_ITEMS]:
        entry: list[object] = [item.content_id, item.size, item.price, item.content_type[:64], item.title[:40]]
        if len(cbor2.dumps({"v": 1, "i": [*kept, entry]})) > _MAX_VALUE:
            break
        kept.append(entry)
    return cbor2.dumps({"v": 1, "i": kept})


def decode_tag_items(value: bytes) -> list[TagItem]:
    """Parse a tag record value.

    Raises:
        BadRequest: malformed.
    """
    d = _decode_map(value, "tag record")
    raw = d.get("i")
    if not isinstance(raw, list) or len(raw) > MAX_TAG_ITEMS:
        raise BadRequest("tag record: bad item list")
    items = []
    for entry in raw:
        _need(isinstance(entry, list) and len(entry) == 5, "tag record: bad item")
        cid, size, price, ctype, title = entry
        _need(isinstance(cid, bytes) and len(cid) == 32, "tag record: bad content id")
        _need(isinstance(size, int) and isinstance(price, int) and size >= 0 and price >= 0, "tag record: bad size")
        _need(isinstance(ctype, str) and isinstance(title, str), "tag record: bad text")
        items.append(TagItem(content_id=cid, size=size, price=price, content_type=ctype, title=title))
    return items


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildItem:
    """One content listed in a children record: derived from the record's parent by ``relationship``."""

    content_id: bytes
    relationship: str

    def __post_init__(self) -> None:
        _need(isinstance(self.content_id, bytes) and len(self.content_id) == 32, "child id must be 32 bytes")
        _need(self.relationship in RELATIONSHIPS, f"relationship must be one of {', '.join(RELATIONSHIPS)}")


def encode_children(items: list[ChildItem]) -> bytes:
    """A children record value (``children:<parent hex>``): the first ``MAX_CHILD_ITEMS`` of ``items``."""
    kept = [[item.content_id, item.relationship] for item in items[:MAX_CHILD_ITEMS]]
    value = cbor2.dumps({"v": 1, "c": kept})
    _need(len(value) <= _MAX_VALUE, "children record too large")
    return value


def decode_children(value: bytes) -> list[ChildItem]:
    """Parse a children record value.

    Raises:
        BadRequest: malformed.
    """
    d = _decode_map(value, "children record")
    raw = d.get("c")
    if not isinstance(raw, list) or len(raw) > MAX_CHILD_ITEMS:
        raise BadRequest("children record: bad item list")
    items = []
    for entry in raw:
        _need(isinstance(entry, list) and len(entry) == 2, "children record: bad item")
        cid, relationship = entry
        _need(isinstance(relationship, str), "children record: bad relationship")
        items.append(ChildItem(content_id=cid, relationship=relationship))
    return items


# -- access grants -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessGrant:
    """The producer's permission for ``consumer`` to read ``content_id`` until ``expires`` (wall seconds)."""

    content_id: bytes
    consumer: bytes
    producer: bytes
    expires: int
    signature: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        _need(len(self.content_id) == 32, "grant: content id must be 32 bytes")
        _need(len(self.consumer) == 33 and len(self.producer) == 33, "grant: keys must be 33 bytes")
        _need(isinstance(self.expires, int) and self.expires > 0, "grant: bad expiry")
        _need(len(self.signature) <= 73, "grant: signature too long")

    def to_wire(self) -> dict[str, Any]:
        return {
            "hash": self.content_id.hex(),
            "consumer": self.consumer.hex(),
            "producer": self.producer.hex(),
            "expires": self.expires,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_wire(cls, raw: object) -> AccessGrant:
        """Raises BadRequest for a malformed grant (the signature is checked by :func:`verify_grant`)."""
        _need(isinstance(raw, dict), "grant must be an object")
        assert isinstance(raw, dict)
        try:
            return cls(
                content_id=bytes.fromhex(str(raw["hash"])),
                consumer=bytes.fromhex(str(raw["consumer"])),
                producer=bytes.fromhex(str(raw["producer"])),
                expires=raw["expires"],
                signature=bytes.fromhex(str(raw["signature"])),
            )
        except (KeyError, ValueError) as exc:
            raise BadRequest(f"malformed grant: {exc}") from None


def grant_digest(content_id: bytes, consumer: bytes, producer: bytes, expires: int) -> bytes:
    return hashlib.sha256(cbor2.dumps([_GRANT_TAG, content_id, consumer, producer, expires])).digest()


def sign_grant(producer: Identity, content_id: bytes, consumer: bytes, expires: int) -> AccessGrant:
    digest = grant_digest(content_id, consumer, producer.public_key, expires)
    return AccessGrant(
        content_id=content_id,
        consumer=consumer,
        producer=producer.public_key,
        expires=expires,
        signature=producer.sign_digest(digest),
    )


def verify_grant(grant: AccessGrant, *, content_id: bytes, consumer: bytes, producer: bytes, now: float) -> None:
    """Check that ``grant`` lets ``consumer`` read ``content_id`` of ``producer`` at wall time ``now``.

    Raises:
        BadRequest: another content, consumer or producer, expired, or a bad signature.
    """
    _need(grant.content_id == content_id, "grant is for another content")
    _need(grant.consumer == consumer, "grant is for another consumer")
    _need(grant.producer == producer, "grant is not signed by the producer")
    _need(grant.expires > now, "grant has expired")
    digest = grant_digest(grant.content_id, grant.consumer, grant.producer, grant.expires)
    _need(ecdsa_verify_digest(parse_public_key(producer), grant.signature, digest), "grant signature is invalid")
