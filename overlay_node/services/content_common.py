"""What the content modules share: the peer-link method names, the metadata limits, the checks on request fields,
the progress callback type and the content errors.

It sits below :mod:`.content` and its helpers (:mod:`.content_place`, :mod:`.content_receive`,
:mod:`.content_repair`), so that each of them can import it without importing the service. Callers import these
names from here (the service module exports only the service).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from overlay_node.crypto.uhrp import parse_uhrp
from overlay_node.errors import BadRequest, NotFound, OverlayError

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
