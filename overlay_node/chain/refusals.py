"""ARC's error vocabulary: the status codes ARC answers when it refuses a request, as our own error type.

ARC (bitcoin-sv/arc, ``pkg/api/status.go``) refuses with an RFC 7807 problem object whose ``status`` is also
the HTTP status: 460-473 for transactions it will not take, 400/401/404/409 for the rest. The devnet answers
the same codes so that a client written against it works against a real ARC.
"""

from __future__ import annotations

import enum
from typing import Any

from overlay_node.errors import BadRequest


class ArcCode(enum.IntEnum):
    """ARC's refusal codes (the HTTP status of the answer)."""

    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    NOT_FOUND = 404
    GENERIC = 409
    TOO_LARGE = 413
    TX_FORMAT = 460
    UNLOCKING_SCRIPTS = 461
    INPUTS = 462
    MALFORMED = 463
    OUTPUTS = 464
    FEES = 465
    CONFLICT = 466
    MINED_ANCESTORS_NOT_FOUND = 467
    CALCULATING_MERKLE_ROOTS = 468
    VALIDATING_MERKLE_ROOTS = 469
    CUMULATIVE_FEES = 473


#: ARC's title and default detail for each code
_TEXT: dict[ArcCode, tuple[str, str]] = {
    ArcCode.BAD_REQUEST: ("Bad request", "The request seems to be malformed and cannot be processed"),
    ArcCode.UNAUTHORIZED: ("Unauthorized", "The request is not authorized"),
    ArcCode.NOT_FOUND: ("Not found", "The requested resource could not be found"),
    ArcCode.GENERIC: ("Generic error", "Transaction could not be processed"),
    ArcCode.TOO_LARGE: ("Payload too large", "The request body is larger than this server accepts"),
    ArcCode.TX_FORMAT: (
        "Not extended format",
        "Transaction is not in extended format, missing input scripts",
    ),
    ArcCode.UNLOCKING_SCRIPTS: ("Malformed transaction", "Transaction is malformed and cannot be processed"),
    ArcCode.INPUTS: ("Invalid inputs", "Transaction is invalid because the inputs are non-existent or spent"),
    ArcCode.MALFORMED: ("Malformed transaction", "Transaction is malformed and cannot be processed"),
    ArcCode.OUTPUTS: (
        "Invalid outputs",
        "Transaction is invalid because the outputs are non-existent or invalid",
    ),
    ArcCode.FEES: ("Fee too low", "Fees are too low"),
    ArcCode.CONFLICT: ("Conflicting tx found", "Transaction is valid, but there is a conflicting tx"),
    ArcCode.MINED_ANCESTORS_NOT_FOUND: (
        "Mined ancestors not found",
        "Error validating BEEF: mined ancestors not found in transaction inputs",
    ),
    ArcCode.CALCULATING_MERKLE_ROOTS: (
        "Invalid BUMPs",
        "Error validating BEEF: could not calculate Merkle Roots from given BUMPs",
    ),
    ArcCode.VALIDATING_MERKLE_ROOTS: (
        "Merkle Roots validation failed",
        "Error validating BEEF: could not validate Merkle Roots",
    ),
    ArcCode.CUMULATIVE_FEES: ("Cumulative fee too low", "The cumulative fee is too low"),
}

_DOCS = "https://bitcoin-sv.github.io/arc/#/errors?id=_"


class Refusal(BadRequest):
    """The devnet refuses a request the way ARC would: an ARC code plus what exactly was wrong.

    Raised by the devnet's parsers and validators; the HTTP app turns it into ARC's problem object (with our
    ``code``/``message`` fields added). Nothing has changed in the ledger when it is raised.

    Args:
        arc_code: the ARC status code (also the HTTP status).
        extra_info: what exactly was wrong, e.g. ``"input 0 spends unknown output <txid>:1"``.
        txid: the transaction concerned, when known.
    """

    def __init__(self, arc_code: ArcCode, extra_info: str, *, txid: str | None = None) -> None:
        title, _ = _TEXT[arc_code]
        super().__init__(f"{title}: {extra_info}")
        self.arc_code = arc_code
        self.extra_info = extra_info
        self.txid = txid
        self.http_status = int(arc_code)
        self.code = arc_code.name.lower()

    def with_txid(self, txid: str) -> Refusal:
        """This refusal naming ``txid`` (when it named none)."""
        if self.txid is not None:
            return self
        return Refusal(self.arc_code, self.extra_info, txid=txid)

    def problem(self, timestamp: str) -> dict[str, Any]:
        """ARC's problem object for this refusal, plus our ``code`` and ``message`` fields."""
        title, detail = _TEXT[self.arc_code]
        return {
            "type": f"{_DOCS}{int(self.arc_code)}",
            "title": title,
            "status": int(self.arc_code),
            "detail": detail,
            "instance": None,
            "txid": self.txid,
            "extraInfo": self.extra_info,
            "timestamp": timestamp,
            "code": self.code,
            "message": str(self),
        }
