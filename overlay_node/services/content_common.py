"""What the content modules share: the peer-link method names, the metadata a producer publishes with its limits,
the checks on request fields, the progress callback type and the content errors.

It sits below :mod:`.content` and its helpers (:mod:`.content_place`, :mod:`.content_receive`,
:mod:`.content_repair`), so that each of them can import it without importing the service. Callers import these
names from here (the service module exports only the service).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from overlay_node.crypto.uhrp import parse_uhrp
from overlay_node.errors import BadRequest, NotFound, OverlayError
from overlay_node.protocol.content import MAX_CONTENT_TYPE, MAX_PARENTS, RELATIONSHIPS

__all__ = [
    "BAD",
    "GRANT",
    "HAS",
    "MANIFEST",
    "MAX_TAGS",
    "MAX_TAG_LEN",
    "MAX_TITLE",
    "OFFER",
    "READ",
    "REPLICATE",
    "ContentMeta",
    "NoPeerLink",
    "PaymentRequired",
    "Progress",
    "StorageFull",
    "hex_id",
    "int_field",
    "no_progress",
]

OFFER: Final = "content.offer"
REPLICATE: Final = "content.replicate"
MANIFEST: Final = "content.manifest"
READ: Final = "content.read"
HAS: Final = "content.has"
BAD: Final = "content.bad"
GRANT: Final = "content.grant"
MAX_TAGS: Final = 16
MAX_TAG_LEN: Final = 64
MAX_TITLE: Final = 256

#: progress callback: one JSON-ready event per step
Progress = Callable[[dict[str, Any]], None]


def no_progress(_: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentMeta:
    """What a producer says about content it publishes: title, tags, media type, price, and its lineage (the
    ``parents``, hex ids or UHRP URLs, it derives from, and the ``relationship`` to them)."""

    title: str = ""
    tags: tuple[str, ...] = ()
    content_type: str = "application/octet-stream"
    price: int = 0
    parents: tuple[str, ...] = ()
    relationship: str = ""

    def checked(self) -> ContentMeta:
        """This metadata with its tags normalized (stripped, lower case, each once, in order).

        Raises:
            BadRequest: too many or too long tags, a long title, a bad content type, a negative price.
        """
        tags = tuple(dict.fromkeys(t.strip().lower() for t in self.tags if t.strip()))
        if len(tags) > MAX_TAGS or any(len(t) > MAX_TAG_LEN for t in tags):
            raise BadRequest(f"at most {MAX_TAGS} tags of at most {MAX_TAG_LEN} characters")
        if len(self.title) > MAX_TITLE:
            raise BadRequest(f"title longer than {MAX_TITLE} characters")
        content_type = self.content_type
        if not content_type or len(content_type) > MAX_CONTENT_TYPE or "/" not in content_type:
            raise BadRequest(f"bad content type {content_type!r}")
        if self.price < 0:
            raise BadRequest("price must not be negative")
        return replace(self, tags=tags)

    def parent_ids(self) -> tuple[str, ...]:
        """The parents' content ids (hex).

        Raises:
            BadRequest: a parent that is no content id, more than ``MAX_PARENTS`` parents, parents without a known
                relationship, or a relationship without parents.
        """
        parent_ids = tuple(dict.fromkeys(parse_uhrp(p).hex() for p in self.parents))
        if len(parent_ids) > MAX_PARENTS:
            raise BadRequest(f"at most {MAX_PARENTS} --parent values")
        if parent_ids and self.relationship not in RELATIONSHIPS:
            raise BadRequest(f"relationship must be one of {', '.join(RELATIONSHIPS)} when parents are given")
        if self.relationship and not parent_ids:
            raise BadRequest("a relationship needs --parent")
        return parent_ids


class StorageFull(OverlayError):
    """This node's storage budget cannot take the content (a refusal of an offer, not a fault)."""

    code = "storage_full"
    exit_code = 12
    http_status = 507


class PaymentRequired(OverlayError):
    """Priced content asked for without a valid access grant."""

    code = "payment_required"
    exit_code = 11
    http_status = 402


class NoPeerLink(NotFound):
    """The producer of priced content cannot be linked (no address, or every dial failed); ``gateway`` is its http
    origin when its provider record names one (``ctl access`` then buys over HTTP with BRC-105)."""

    code = "no_peer_link"

    def __init__(self, message: str, *, gateway: str = "") -> None:
        super().__init__(message)
        self.gateway = gateway


def hex_id(value: object) -> bytes:
    """The content id in a request's ``hash`` field (hex SHA-256 or UHRP URL). Raises BadRequest."""
    if not isinstance(value, str):
        raise BadRequest("field 'hash' must be a hex SHA-256 or a UHRP URL")
    return parse_uhrp(value)


def int_field(body: dict[str, Any], key: str, lo: int = 0, hi: int = 1 << 62) -> int:
    """The integer ``body[key]``, checked to lie in ``[lo, hi]`` (booleans refused). Raises BadRequest."""
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"field {key!r} must be an integer in [{lo}, {hi}]")
    return value
