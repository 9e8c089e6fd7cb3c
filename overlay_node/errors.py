"""The small error hierarchy of the daemon.

Everything the node raises on purpose derives from :class:`OverlayError`. Each family carries a stable ``code``
(used in HTTP error bodies and close reasons) and an ``exit_code`` (used by the CLI), so that one table maps an error
to what a user or a script sees.

Foreign exceptions (``OSError``, ``sqlite3.Error``, trio's stream errors) are mapped once, at the edge that sees
them, with ``raise ... from exc``.
"""

from __future__ import annotations


class OverlayError(Exception):
    """Root of every error the node raises on purpose."""

    code: str = "error"
    exit_code: int = 1
    http_status: int = 500


class ConfigError(OverlayError):
    """A config file, env variable or flag is unknown, mistyped or out of range; the message names the dotted key."""

    code = "config"
    exit_code = 3
    http_status = 400


class DataDirError(OverlayError):
    """The data dir cannot be used: locked by another daemon, unsafe permissions, missing identity."""

    code = "data_dir"
    exit_code = 4
    http_status = 500


class ProtocolError(OverlayError):
    """Abstract: a protocol rule was broken. Use one of the two concrete children."""

    code = "protocol"
    exit_code = 6
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
    exit_code = 7
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
    exit_code = 8
    http_status = 500


class NotFound(OverlayError):
    """The requested object does not exist."""

    code = "not_found"
    exit_code = 9
    http_status = 404


class Conflict(OverlayError):
    """The request conflicts with current state (duplicate, already running, already used)."""

    code = "conflict"
    exit_code = 10
    http_status = 409


class BadRequest(OverlayError):
    """A request from a local or remote client is malformed or out of range."""

    code = "bad_request"
    exit_code = 2
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
    exit_code = 5


class PaymentError(OverlayError):
    """A payment was refused (by the payee, or by us as payee) or cannot be made. The subclasses say why; a
    refused payment changes no balance."""

    code = "payment_refused"
    exit_code = 11
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
