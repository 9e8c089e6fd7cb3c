"""The small error hierarchy of the daemon.

Everything the node raises on purpose derives from :class:`OverlayError`. Each family carries a stable ``code``
(used in HTTP error bodies and close reasons) and an ``exit_code`` (used by the CLI) from :data:`EXIT_CODES`, the one
table that maps an error to what a user or a script sees.

Foreign exceptions (``OSError``, ``sqlite3.Error``, trio's stream errors) are mapped once, at the edge that sees
them, with ``raise ... from exc``.
"""

from __future__ import annotations

#: The one table of exit codes: an error's ``code`` (in HTTP error bodies, NDJSON error events and close reasons)
#: -> the exit code the CLI ends with. Every error class takes its ``exit_code`` from here (a class whose code is
#: not listed inherits its parent's); the daemon's error bodies carry it as ``exit_code``, and the CLI, which
#: imports no service, looks codes up here when a body has none. docs/cli.md lists the families.
EXIT_CODES: dict[str, int] = {
    "error": 1,
    "http": 1,
    "truncated": 1,
    "timeout": 1,
    "bad_request": 2,
    "range_not_satisfiable": 2,
    "broadcast_refused": 2,
    "config": 3,
    "data_dir": 4,
    "no_daemon": 5,
    "protocol": 6,
    "gasp": 7,
    "transport": 7,
    "dial_failed": 7,
    "connection_lost": 7,
    "peer_timeout": 7,
    "daemon_closed": 7,
    "store": 8,
    "not_found": 9,
    "no_peer_link": 9,
    "content_unavailable": 9,
    "conflict": 10,
    "payment_refused": 11,
    "payment_invalid": 11,
    "payment_insufficient": 11,
    "payment_replayed": 11,
    "quote_expired": 11,
    "payment_malformed": 11,
    "invalid_derivation_prefix": 11,
    "insufficient_funds": 11,
    "paid_too_early": 11,
    "payment_required": 11,
    "price_exceeded": 11,
    "storage_full": 12,
}


def exit_code_for(code: str) -> int:
    """The exit code of an error ``code`` (1 for a code not in :data:`EXIT_CODES`)."""
    return EXIT_CODES.get(code, 1)


class OverlayError(Exception):
    """Root of every error the node raises on purpose."""

    code: str = "error"
    exit_code: int = 1
    http_status: int = 500

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "exit_code" not in cls.__dict__ and cls.code in EXIT_CODES:
            cls.exit_code = EXIT_CODES[cls.code]


class ConfigError(OverlayError):
    """A config file, env variable or flag is unknown, mistyped or out of range; the message names the dotted key."""

    code = "config"
    http_status = 400


class DataDirError(OverlayError):
    """The data dir cannot be used: locked by another daemon, unsafe permissions, missing identity."""

    code = "data_dir"
    http_status = 500


class ProtocolError(OverlayError):
    """Abstract: a protocol rule was broken. Use one of the two concrete children."""

    code = "protocol"
    http_status = 400

    def __init__(self, message: str, *, reason: str = "protocol_error") -> None:
        if type(self) is ProtocolError:
            raise TypeError("instantiate LocalProtocolError or RemoteProtocolError")
        super().__init__(message)
        #: short machine-readable reason, sent to the peer as the close reason
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids (our bug or misuse)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: bad signature, replay, altered or oversized frame, malformed message.

    ``reason`` is the close reason the link sends before it drops the peer.
    """


class TransportError(OverlayError):
    """A network operation failed. Only ``net/`` raises these."""

    code = "transport"
    http_status = 502


class DialError(TransportError):
    """A peer could not be reached or refused the link."""

    code = "dial_failed"


class ConnectionLost(TransportError):
    """An established link closed before the operation finished."""

    code = "connection_lost"


class PeerTimeout(TransportError):
    """A peer did not answer within the configured time."""

    code = "peer_timeout"
    http_status = 504


class StoreError(OverlayError):
    """The local database failed. Only ``store/`` raises these."""

    code = "store"
    http_status = 500


class NotFound(OverlayError):
    """The requested object does not exist."""

    code = "not_found"
    http_status = 404


class Conflict(OverlayError):
    """The request conflicts with current state (duplicate, already running, already used)."""

    code = "conflict"
    http_status = 409


class BadRequest(OverlayError):
    """A request from a local or remote client is malformed or out of range."""

    code = "bad_request"
    http_status = 400


class ApiError(OverlayError):
    """Client side: the control API answered with an error. Carries the server's code and HTTP status."""

    def __init__(self, message: str, *, code: str, status: int, exit_code: int = 1) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = status
        self.exit_code = exit_code


class DaemonNotRunning(OverlayError):
    """Client side: no daemon answers for the data dir."""

    code = "no_daemon"


class DaemonClosed(OverlayError):
    """Client side: the daemon closed the control connection in the middle of a call (it died or was stopped)."""

    code = "daemon_closed"


class PaymentError(OverlayError):
    """A payment was refused (by the payee, or by us as payee) or cannot be made. The subclasses say why; a
    refused payment changes no balance."""

    code = "payment_refused"
    http_status = 402


class InvalidPayment(PaymentError):
    """The payment transaction is not acceptable: malformed BEEF, bad script or signature, unbalanced, fee too
    low, unproven or unknown ancestors, output 0 paying the wrong key, a double spend."""

    code = "payment_invalid"


class InsufficientPayment(PaymentError):
    """The payment is valid but pays less than the quoted price."""

    code = "payment_insufficient"


class PaymentReplayed(PaymentError):
    """The quote's derivation prefix was already used by an accepted payment (a replay)."""

    code = "payment_replayed"


class PaidTooEarly(PaymentError):
    """A stream payment ahead of what the subscription may hold on credit: the producer keeps the quote open, and
    the consumer pays it again once more packets have been used (the message ends with "pay when it is used")."""

    code = "paid_too_early"


class QuoteExpired(PaymentError):
    """The quote is past its expiry, or unknown to the node that should hold it: ask for a new one."""

    code = "quote_expired"


class MalformedPayment(PaymentError):
    """A BRC-105 ``x-bsv-payment`` header that is not the JSON it must be (BRC-105 ``ERR_MALFORMED_PAYMENT``)."""

    code = "payment_malformed"
    http_status = 400


class InvalidDerivationPrefix(PaymentError):
    """A BRC-105 derivation prefix this node did not issue to this payer, or one past its time to live
    (BRC-105 ``ERR_INVALID_DERIVATION_PREFIX``)."""

    code = "invalid_derivation_prefix"
    http_status = 400


class InsufficientFunds(PaymentError):
    """Our wallet does not hold enough spendable satoshis for a payment and its fee."""

    code = "insufficient_funds"


def first_overlay_error(exc: BaseException) -> OverlayError | None:
    """The first OverlayError inside (possibly nested) exception groups, so that a process can report the error
    that stopped it as one line instead of trio's group traceback."""
    if isinstance(exc, OverlayError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_overlay_error(inner)
            if found is not None:
                return found
    return None
