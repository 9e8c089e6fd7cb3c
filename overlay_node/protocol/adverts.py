"""SHIP/SLAP adverts (BRC-88) as values of signed DHT records: the fields, the signature, the checks.

Theory of operation:
1. An advert carries the five fields of the official SHIP/SLAP PushDrop token: protocol (``SHIP`` for a topic
   ``tm_*``, ``SLAP`` for a service ``ls_*``), the advertiser's identity key, the advertised URI, the topic or
   service name, and the BRC-88 signature over ``f0 || f1 || f2 || f3``. The signature is made the way the reference
   advertiser makes it and the reference topic managers check it: BRC-42 protocol
   ``[2, "service host interconnect"]`` (SHIP) or ``[2, "service lookup availability"]`` (SLAP), key id ``"1"``,
   counterparty ``anyone``, signing with our own child key (``forSelf``). The token's locking key is that child
   public key; a verifier derives ``f1 + HMAC(f1, invoice)·G`` and requires it to equal the locking key and the
   signature to verify under it. The fields, the signature and that check are :mod:`overlay_node.topics.ship`'s,
   the code ``tm_ship``/``tm_slap`` admit on-chain tokens with.
2. Beside the token fields, an advert carries what discovery needs: the node's endpoints, service type, pricing
   model and price, capabilities, region and an expiry. These are covered by the DHT record signature (the record's
   publisher must be the advert's identity key), not by the BRC-88 signature, exactly as an overlay host's own
   metadata would be.
3. Revocation is a DHT tombstone by the same publisher; expiry is the record's and the advert's ``expires``.
4. An advert may name one ``resource`` of many a node offers under the same service (a stream's id under
   ``ls_stream``); it is then stored under ``<namespace>:<name>/<resource>``, one record per resource.
5. Discovery without a name goes through index records: every publisher keeps, under ``index:type:<service type>``
   and ``index:cap:<capability>``, one record listing the DHT keys of its live adverts with that service type or
   capability (:func:`encode_index`); a consumer reads the index, then each advert it names.
6. Everything here is pure: bytes in, dataclasses out, :class:`AdvertError` (a RemoteProtocolError) for anything
   a peer could have forged or mangled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Final

import cbor2

from overlay_node.crypto.brc42 import ProtocolID
from overlay_node.crypto.keys import Identity
from overlay_node.crypto.pushdrop import ANYONE, KEY_ID, read_public_key, token_locking_key
from overlay_node.errors import BadRequest, RemoteProtocolError
from overlay_node.topics.ship import (
    NAME_RE,
    SHIP_PROTOCOL,
    SLAP_PROTOCOL,
    Kind,
    is_valid_name,
    protocol_for,
    ship_fields,
    ship_is_linked,
    ship_signature,
)

__all__ = [
    "ANYONE",
    "KEY_ID",
    "NAME_RE",
    "SHIP_PROTOCOL",
    "SLAP_PROTOCOL",
    "Advert",
    "AdvertError",
    "Endpoints",
    "Filter",
    "Kind",
    "Offer",
    "check_resource",
    "decode_advert",
    "decode_index",
    "dht_name",
    "encode_advert",
    "encode_index",
    "host_score",
    "index_terms",
    "kind_of",
    "make_advert",
    "protocol_of",
    "signature_is_linked",
    "token_fields",
]

PRICING_MODELS: Final = ("free", "per-packet", "per-second", "per-request", "per-byte", "flat")
MAX_URI: Final = 200
MAX_CAPABILITIES: Final = 16
MAX_TEXT: Final = 40
MAX_RESOURCE: Final = 128
#: advert keys one index record lists (32 bytes each; a record value is at most 1 KiB)
MAX_INDEX_REFS: Final = 24
_RESOURCE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class AdvertError(RemoteProtocolError):
    """An advert value is malformed, forged or inconsistent with its record."""

    def __init__(self, message: str, *, reason: str = "bad_advert") -> None:
        super().__init__(message, reason=reason)


def kind_of(name: str) -> Kind:
    """``SHIP`` for a topic ``tm_*``, ``SLAP`` for a service ``ls_*``.

    Raises:
        BadRequest: the name breaks the BRC-87 rules.
    """
    if not is_valid_name(name):
        raise BadRequest(
            f"bad topic or service name {name!r}: tm_ or ls_ then lower-case words joined by single underscores "
            "(letters only, at most 50 characters)"
        )
    return "SHIP" if name.startswith("tm_") else "SLAP"


def protocol_of(kind: Kind) -> ProtocolID:
    return protocol_for(kind)


def dht_name(kind: Kind, name: str, resource: str = "") -> tuple[str, str]:
    """The DHT namespace and name an advert is stored under: ``ship:<topic>`` or ``slap:<service>``, with
    ``/<resource>`` after the name for an advert of one resource."""
    return ("ship" if kind == "SHIP" else "slap", f"{name}/{resource}" if resource else name)


def check_resource(value: str) -> str:
    """A resource name: 1-128 characters of ``[A-Za-z0-9._:-]`` starting with a letter or digit, or empty.

    Raises:
        BadRequest: otherwise.
    """
    if value and not _RESOURCE.fullmatch(value):
        raise BadRequest("an advert's resource must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return value


def token_fields(kind: Kind, identity_key: bytes, uri: str, name: str) -> list[bytes]:
    """The four signed PushDrop fields f0..f3 of the official token."""
    return ship_fields(kind, identity_key, uri, name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoints:
    """Where the advertising node answers."""

    swarm: tuple[str, ...] = ()
    http: str = ""
    dht: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """What the advertising node offers, the part of an advert a discovery :class:`Filter` matches."""

    service_type: str = ""
    pricing_model: str = "free"
    price: int = 0
    capabilities: tuple[str, ...] = ()
    region: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Advert:
    """One SHIP or SLAP advert. ``signature`` and ``locking_key`` are the BRC-88 token's f4 and locking key."""

    kind: Kind
    identity_key: bytes
    uri: str
    name: str
    signature: bytes
    locking_key: bytes
    endpoints: Endpoints = field(default_factory=Endpoints)
    offer: Offer = field(default_factory=Offer)
    expires: int = 0
    #: the outpoint (``txid.vout``) of the same advert's token on chain, when there is one
    token: str = ""
    #: the one resource this advert offers (a stream id), when the node offers several under one name
    resource: str = ""

    @property
    def dht_key_name(self) -> tuple[str, str]:
        """The DHT namespace and name this advert is stored under."""
        return dht_name(self.kind, self.name, self.resource)

    @property
    def identity_hex(self) -> str:
        return self.identity_key.hex()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view for the control API."""
        return {
            "protocol": self.kind,
            "identity_key": self.identity_hex,
            "uri": self.uri,
            "topic" if self.kind == "SHIP" else "service": self.name,
            "endpoints": {"swarm": list(self.endpoints.swarm), "http": self.endpoints.http, "dht": self.endpoints.dht},
            "service_type": self.offer.service_type,
            "pricing_model": self.offer.pricing_model,
            "price": self.offer.price,
            "capabilities": list(self.offer.capabilities),
            "region": self.offer.region,
            "expires": self.expires,
            "signature": self.signature.hex(),
            "locking_key": self.locking_key.hex(),
            "token": self.token or None,
            "resource": self.resource or None,
        }


def _check_text(what: str, value: str, limit: int = MAX_TEXT) -> str:
    if len(value) > limit or any(ord(c) < 0x20 for c in value):
        raise BadRequest(f"{what} must be at most {limit} printable characters")
    return value


def _check_offer(offer: Offer) -> Offer:
    """``offer`` with its capabilities as a tuple.

    Raises:
        BadRequest: a bad pricing model, price or metadata.
    """
    if offer.pricing_model not in PRICING_MODELS:
        raise BadRequest(f"bad pricing model {offer.pricing_model!r}: one of {', '.join(PRICING_MODELS)}")
    if not 0 <= offer.price <= 21_000_000 * 100_000_000:
        raise BadRequest("price must be a non-negative number of satoshis")
    if len(offer.capabilities) > MAX_CAPABILITIES:
        raise BadRequest(f"at most {MAX_CAPABILITIES} capabilities")
    for cap in offer.capabilities:
        _check_text("a capability", cap)
    _check_text("service type", offer.service_type)
    _check_text("region", offer.region)
    return replace(offer, capabilities=tuple(offer.capabilities))


def make_advert(
    identity: Identity,
    *,
    name: str,
    uri: str,
    endpoints: Endpoints,
    expires: int,
    offer: Offer = Offer(),
    token: str = "",
    resource: str = "",
) -> Advert:
    """Create and sign an advert for ``name`` (a ``tm_`` topic or ``ls_`` service); ``token``: the outpoint of the
    same advert's token on chain, if any; ``resource``: the one resource it offers, if any.

    Raises:
        BadRequest: a bad name, URI, pricing model, price, resource or metadata.
    """
    kind = kind_of(name)
    if not uri or len(uri) > MAX_URI or not re.match(r"^[a-z][a-z0-9+.-]*:", uri):
        raise BadRequest(f"bad advertised URI {uri!r}: a URI with a scheme, at most {MAX_URI} characters")
    offer = _check_offer(offer)
    signature = ship_signature(identity, kind, uri, name)
    locking_key = token_locking_key(identity, protocol_of(kind))
    return Advert(
        kind=kind,
        identity_key=identity.public_key,
        uri=uri,
        name=name,
        signature=signature,
        locking_key=locking_key,
        endpoints=endpoints,
        offer=offer,
        expires=expires,
        token=token,
        resource=check_resource(resource),
    )


def signature_is_linked(advert: Advert) -> bool:
    """The reference check (``isTokenSignatureCorrectlyLinked``, shared with ``tm_ship``/``tm_slap``): as
    ``anyone``, derive the advertiser's child key for the protocol, require it to equal the locking key, and require
    the signature to verify under it. Both keys must be written compressed (a token's script may hold other forms;
    an advert carries the canonical one)."""
    if any(read_public_key(key) != key for key in (advert.identity_key, advert.locking_key)):
        return False
    return ship_is_linked(
        advert.kind, advert.identity_key, advert.uri, advert.name, advert.locking_key, advert.signature
    )


# -- value codec -------------------------------------------------------------------------------------------------


def encode_advert(advert: Advert) -> bytes:
    """The DHT record value: canonical CBOR with short keys (a record value is at most about 1 KiB)."""
    fields: dict[str, Any] = {
        "p": advert.kind,
        "k": advert.identity_key,
        "u": advert.uri,
        "n": advert.name,
        "s": advert.signature,
        "l": advert.locking_key,
        "e": [list(advert.endpoints.swarm), advert.endpoints.http, advert.endpoints.dht],
        "t": advert.offer.service_type,
        "m": advert.offer.pricing_model,
        "c": advert.offer.price,
        "a": list(advert.offer.capabilities),
        "r": advert.offer.region,
        "x": advert.expires,
    }
    if advert.token:
        fields["o"] = advert.token  # absent when there is none: adverts of nodes without tokens stay byte-identical
    if advert.resource:
        fields["i"] = advert.resource  # likewise absent for an advert of a whole topic or service
    return bytes(cbor2.dumps(fields, canonical=True))


def _get(data: dict[Any, Any], key: str, typ: type[Any]) -> Any:
    value = data.get(key)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise AdvertError(f"advert field {key!r} missing or not {typ.__name__}", reason="malformed_advert")
    return value


_OUTPOINT: Final = re.compile(r"^[0-9a-f]{64}\.[0-9]{1,9}$")


def _token(value: object) -> str:
    if value == "":
        return ""
    if not isinstance(value, str) or not _OUTPOINT.fullmatch(value):
        raise AdvertError("advert token is not a txid.vout outpoint", reason="malformed_advert")
    return value


def _resource(value: object) -> str:
    if not isinstance(value, str):
        raise AdvertError("advert resource is not text", reason="malformed_advert")
    try:
        return check_resource(value)
    except BadRequest as exc:
        raise AdvertError(str(exc), reason="malformed_advert") from None


def decode_advert(value: bytes, *, publisher: bytes) -> Advert:
    """Parse and fully check a DHT record value as an advert published by ``publisher``.

    Raises:
        AdvertError: malformed CBOR or fields, a name or protocol that do not agree, a publisher that is not the
            advertised identity, or a BRC-88 signature that does not check out.
    """
    if len(value) > 4096:
        raise AdvertError("advert value too large", reason="malformed_advert")
    try:
        data = cbor2.loads(value)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise AdvertError(f"advert is not CBOR: {exc}", reason="malformed_advert") from exc
    if not isinstance(data, dict):
        raise AdvertError("advert is not a map", reason="malformed_advert")
    endpoints = _get(data, "e", list)
    if len(endpoints) != 3 or not isinstance(endpoints[0], list):
        raise AdvertError("advert endpoints malformed", reason="malformed_advert")
    swarm, http, dht = endpoints
    if not all(isinstance(x, str) for x in swarm) or not isinstance(http, str) or not isinstance(dht, str):
        raise AdvertError("advert endpoints malformed", reason="malformed_advert")
    caps = _get(data, "a", list)
    if not all(isinstance(c, str) for c in caps):
        raise AdvertError("advert capabilities malformed", reason="malformed_advert")
    kind = _get(data, "p", str)
    name = _get(data, "n", str)
    if kind not in ("SHIP", "SLAP"):
        raise AdvertError(f"advert protocol {kind!r} is neither SHIP nor SLAP", reason="malformed_advert")
    try:
        if kind_of(name) != kind:
            raise AdvertError(f"{kind} advert for {name!r}", reason="malformed_advert")
    except BadRequest as exc:
        raise AdvertError(str(exc), reason="malformed_advert") from exc
    advert = Advert(
        kind=kind,
        identity_key=_get(data, "k", bytes),
        uri=_get(data, "u", str),
        name=name,
        signature=_get(data, "s", bytes),
        locking_key=_get(data, "l", bytes),
        endpoints=Endpoints(swarm=tuple(swarm), http=http, dht=dht),
        offer=Offer(
            service_type=_get(data, "t", str),
            pricing_model=_get(data, "m", str),
            price=_get(data, "c", int),
            capabilities=tuple(caps),
            region=_get(data, "r", str),
        ),
        expires=_get(data, "x", int),
        token=_token(data.get("o", "")),
        resource=_resource(data.get("i", "")),
    )
    if advert.identity_key != publisher:
        raise AdvertError(
            f"advert for {advert.identity_key.hex()[:16]} published by {publisher.hex()[:16]}",
            reason="publisher_mismatch",
        )
    if not signature_is_linked(advert):
        raise AdvertError("advert BRC-88 signature does not check out", reason="bad_advert_signature")
    return advert


# -- discovery ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Filter:
    """What a consumer asks of discovery; empty fields match everything."""

    capabilities: tuple[str, ...] = ()
    max_price: int | None = None
    region: str = ""
    service_type: str = ""

    def matches(self, advert: Advert) -> bool:
        offer = advert.offer
        if self.max_price is not None and offer.price > self.max_price:
            return False
        if self.region and offer.region != self.region:
            return False
        if self.service_type and offer.service_type != self.service_type:
            return False
        return all(cap in offer.capabilities for cap in self.capabilities)


def index_terms(offer: Offer) -> set[str]:
    """The index records an advert with ``offer`` is listed in: ``type:<service type>`` and ``cap:<capability>``
    (the names under the ``index`` namespace)."""
    terms = {f"cap:{cap}" for cap in offer.capabilities if cap}
    if offer.service_type:
        terms.add(f"type:{offer.service_type}")
    return terms


def encode_index(keys: list[bytes]) -> bytes:
    """An index record's value: the DHT keys of the publisher's adverts listed under it (at most
    ``MAX_INDEX_REFS``)."""
    return bytes(cbor2.dumps({"v": 1, "k": keys[:MAX_INDEX_REFS]}, canonical=True))


def decode_index(value: bytes) -> list[bytes]:
    """The advert keys an index record lists.

    Raises:
        AdvertError: not an index record.
    """
    try:
        data = cbor2.loads(value)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise AdvertError(f"index is not CBOR: {exc}", reason="malformed_index") from exc
    keys = data.get("k") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, bytes) and len(k) == 32 for k in keys):
        raise AdvertError("index record malformed", reason="malformed_index")
    return keys[:MAX_INDEX_REFS]


def host_score(latency_ms: float | None, failures: int, successes: int) -> float:
    """A host's score in [0, 1]: higher is better. Unknown hosts sit in the middle; latency and failures lower it,
    successes raise confidence (the spirit of the reference HostReputationTracker)."""
    if latency_ms is None and failures == 0 and successes == 0:
        return 0.5
    speed = 1.0 / (1.0 + (latency_ms or 0.0) / 100.0)
    reliability = (successes + 1) / (successes + failures + 2)
    return round(speed * reliability, 4)
