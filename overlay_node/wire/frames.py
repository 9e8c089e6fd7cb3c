"""The peer-link frame codec: every frame kind as a frozen dataclass, one CBOR map per frame (sans-IO).

Invariants:

1. A frame is one CBOR map ``{"t": kind, ...}`` with text keys; :func:`encode` writes it, :func:`decode` reads it.
   ``decode(encode(f)) == f`` for every valid frame ``f`` (tuples in bodies come back as lists).
2. :func:`decode` raises nothing but :class:`~overlay_node.errors.RemoteProtocolError` for any input bytes. The
   size limit is checked before a single byte is parsed (reason ``frame_too_large``); malformed CBOR, trailing
   bytes, tags, duplicate keys, indefinite lengths, non-text map keys and wrong field types give
   ``malformed_frame``; an unknown ``t`` gives ``unknown_frame``.
3. Constructing a frame with invalid fields raises :class:`~overlay_node.errors.LocalProtocolError` (our misuse),
   so nothing we send can be rejected by a peer that runs this codec. Bodies (request, response, notice, transfer
   header and result) hold only plain data: ``None``, bool, int (64-bit range), float, str, bytes, lists and maps
   with text keys, nested at most :data:`MAX_BODY_DEPTH` deep.
4. Extra keys in a map are ignored (forward compatibility); the fields named here are required.

The session layer (``overlay_node.protocol.session``) adds the sequence number and MAC around these bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, NoReturn, TypeAlias

import cbor2

from overlay_node.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAX_BODY_DEPTH",
    "MAX_ID",
    "Close",
    "ErrorResponse",
    "Frame",
    "Hello",
    "Notice",
    "Ping",
    "Pong",
    "Request",
    "Response",
    "TransferAbort",
    "TransferAck",
    "TransferCancel",
    "TransferChunk",
    "TransferCredit",
    "TransferEnd",
    "TransferOpen",
    "decode",
    "encode",
]

#: default largest encoded frame (the ``swarm.max_frame`` setting overrides it per link)
DEFAULT_MAX_FRAME: Final = 1024 * 1024
#: request / transfer ids are in ``[0, MAX_ID]``
MAX_ID: Final = 2**63 - 1
#: deepest nesting of lists and maps inside a body
MAX_BODY_DEPTH: Final = 16
MAX_METHOD_LEN: Final = 128
MAX_CODE_LEN: Final = 64
MAX_MESSAGE_LEN: Final = 4096
MAX_AGENT_LEN: Final = 128
MAX_LISTEN: Final = 16
MAX_ADDRESS_LEN: Final = 512
MAX_CREDIT: Final = 2**31
_INT_MIN, _INT_MAX = -(2**64), 2**64 - 1

Body: TypeAlias = dict[str, Any]


# -- field checks (LocalProtocolError; decode turns them into RemoteProtocolError) ---------------------------


def _bad(message: str) -> NoReturn:
    raise LocalProtocolError(message, reason="malformed_frame")


def _check_id(value: object, name: str = "id") -> None:
    if type(value) is not int or not 0 <= value <= MAX_ID:
        _bad(f"{name} must be an integer in [0, 2**63-1], got {value!r:.40}")


def _check_text(value: object, name: str, limit: int, *, empty: bool = False) -> None:
    if type(value) is not str:
        _bad(f"{name} must be text, got {type(value).__name__}")
    if len(value) > limit or (not empty and not value):
        _bad(f"{name} must be {0 if empty else 1}-{limit} characters, got {len(value)}")


def _check_plain(value: object, depth: int) -> None:
    t = type(value)
    if t is str or t is bytes or t is bool or t is float or value is None:
        return
    if t is int:
        if not _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
            _bad("integers in a body must fit in 64 bits")
        return
    if depth >= MAX_BODY_DEPTH:
        _bad(f"body nested deeper than {MAX_BODY_DEPTH}")
    # text and bytes (most leaves: packets, keys, signatures) are taken here without a call each
    if t is list or t is tuple:
        for item in value:  # type: ignore[attr-defined]
            if type(item) is not str and type(item) is not bytes:
                _check_plain(item, depth + 1)
        return
    if t is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                _bad("map keys in a body must be text")
            if type(item) is not str and type(item) is not bytes:
                _check_plain(item, depth + 1)
        return
    _bad(f"a body cannot hold {t.__name__} values")


def _check_body(value: object, name: str = "body") -> None:
    if type(value) is not dict:
        _bad(f"{name} must be a map, got {type(value).__name__}")
    _check_plain(value, 0)


def _check_credit(value: object) -> None:
    if type(value) is not int or not 1 <= value <= MAX_CREDIT:
        _bad(f"credit must be an integer in [1, 2**31], got {value!r:.40}")


# -- frame kinds ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """Ask the peer to run ``method``; answered by a :class:`Response` or :class:`ErrorResponse` with the same id.

    Ids are allocated by the requester; a response's id always refers to the receiver's own requests.
    """

    KIND: ClassVar[str] = "req"
    id: int
    method: str
    body: Body = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_text(self.method, "method", MAX_METHOD_LEN)
        _check_body(self.body)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "req", "id": self.id, "m": self.method, "b": self.body}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> Request:
        return cls(id=m["id"], method=m["m"], body=m["b"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """The successful answer to the request with the same id."""

    KIND: ClassVar[str] = "res"
    id: int
    body: Body = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_body(self.body)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "res", "id": self.id, "b": self.body}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> Response:
        return cls(id=m["id"], body=m["b"])


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorResponse:
    """The failed answer to the request with the same id: a stable ``code`` and a human message."""

    KIND: ClassVar[str] = "err"
    id: int
    code: str
    message: str = ""

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_text(self.code, "code", MAX_CODE_LEN)
        _check_text(self.message, "message", MAX_MESSAGE_LEN, empty=True)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "err", "id": self.id, "c": self.code, "msg": self.message}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> ErrorResponse:
        return cls(id=m["id"], code=m["c"], message=m["msg"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    """A one-way message; nothing answers it."""

    KIND: ClassVar[str] = "note"
    method: str
    body: Body = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_text(self.method, "method", MAX_METHOD_LEN)
        _check_body(self.body)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "note", "m": self.method, "b": self.body}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> Notice:
        return cls(method=m["m"], body=m["b"])


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferOpen:
    """Sender -> receiver: start transfer ``id`` for ``method``; chunks may follow once credit is granted."""

    KIND: ClassVar[str] = "topen"
    id: int
    method: str
    header: Body = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_text(self.method, "method", MAX_METHOD_LEN)
        _check_body(self.header, "header")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "topen", "id": self.id, "m": self.method, "h": self.header}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> TransferOpen:
        return cls(id=m["id"], method=m["m"], header=m["h"])


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferChunk:
    """Sender -> receiver: the next piece of transfer ``id``; spends one credit."""

    KIND: ClassVar[str] = "tchunk"
    id: int
    data: bytes

    def __post_init__(self) -> None:
        _check_id(self.id)
        if type(self.data) is not bytes:
            _bad(f"chunk data must be bytes, got {type(self.data).__name__}")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "tchunk", "id": self.id, "d": self.data}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> TransferChunk:
        return cls(id=m["id"], data=m["d"])


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferCredit:
    """Receiver -> sender: the sender may send ``credit`` more chunks of transfer ``id``."""

    KIND: ClassVar[str] = "tcredit"
    id: int
    credit: int

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_credit(self.credit)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "tcredit", "id": self.id, "n": self.credit}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> TransferCredit:
        return cls(id=m["id"], credit=m["n"])


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferEnd:
    """Sender -> receiver: transfer ``id`` is complete; no more chunks."""

    KIND: ClassVar[str] = "tend"
    id: int

    def __post_init__(self) -> None:
        _check_id(self.id)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "tend", "id": self.id}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> TransferEnd:
        return cls(id=m["id"])


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferAbort:
    """Sender -> receiver: transfer ``id`` is abandoned (the receiver discards what it got)."""

    KIND: ClassVar[str] = "tabort"
    id: int
    code: str
    message: str = ""

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_text(self.code, "code", MAX_CODE_LEN)
        _check_text(self.message, "message", MAX_MESSAGE_LEN, empty=True)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "tabort", "id": self.id, "c": self.code, "msg": self.message}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> TransferAbort:
        return cls(id=m["id"], code=m["c"], message=m["msg"])


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferCancel:
    """Receiver -> sender: stop transfer ``id``; the receiver refused it or its handler failed."""

    KIND: ClassVar[str] = "tcancel"
    id: int
    code: str
    message: str = ""

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_text(self.code, "code", MAX_CODE_LEN)
        _check_text(self.message, "message", MAX_MESSAGE_LEN, empty=True)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "tcancel", "id": self.id, "c": self.code, "msg": self.message}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> TransferCancel:
        return cls(id=m["id"], code=m["c"], message=m["msg"])


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferAck:
    """Receiver -> sender: the receiver's handler consumed transfer ``id`` to its end and succeeded."""

    KIND: ClassVar[str] = "tack"
    id: int

    def __post_init__(self) -> None:
        _check_id(self.id)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "tack", "id": self.id}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> TransferAck:
        return cls(id=m["id"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Keepalive and round-trip probe; the peer answers with a :class:`Pong` carrying the same nonce."""

    KIND: ClassVar[str] = "ping"
    nonce: int

    def __post_init__(self) -> None:
        _check_id(self.nonce, "nonce")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "ping", "n": self.nonce}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> Ping:
        return cls(nonce=m["n"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """The answer to a :class:`Ping`."""

    KIND: ClassVar[str] = "pong"
    nonce: int

    def __post_init__(self) -> None:
        _check_id(self.nonce, "nonce")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "pong", "n": self.nonce}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> Pong:
        return cls(nonce=m["n"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Close:
    """The sender is closing the link on purpose; ``reason`` is a short machine-readable word."""

    KIND: ClassVar[str] = "close"
    reason: str
    message: str = ""

    def __post_init__(self) -> None:
        _check_text(self.reason, "reason", MAX_CODE_LEN)
        _check_text(self.message, "message", MAX_MESSAGE_LEN, empty=True)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "close", "r": self.reason, "msg": self.message}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> Close:
        return cls(reason=m["r"], message=m["msg"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """The first MAC'd frame of each side: proves the sender holds its identity key (the initiator's proof).

    ``listen`` are the sender's dialable swarm addresses, ``max_frame`` the largest frame it accepts.
    """

    KIND: ClassVar[str] = "hello"
    agent: str
    listen: tuple[str, ...] = ()
    max_frame: int = DEFAULT_MAX_FRAME

    def __post_init__(self) -> None:
        _check_text(self.agent, "agent", MAX_AGENT_LEN, empty=True)
        if type(self.listen) is not tuple or len(self.listen) > MAX_LISTEN:
            _bad(f"listen must be a list of at most {MAX_LISTEN} addresses")
        for address in self.listen:
            _check_text(address, "listen address", MAX_ADDRESS_LEN)
        if type(self.max_frame) is not int or not 1024 <= self.max_frame <= 2**31:
            _bad(f"max_frame must be an integer in [1024, 2**31], got {self.max_frame!r:.40}")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "hello", "agent": self.agent, "listen": list(self.listen), "max_frame": self.max_frame}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> Hello:
        listen = m["listen"]
        if type(listen) is not list:
            _bad("listen must be a list")
        return cls(agent=m["agent"], listen=tuple(listen), max_frame=m["max_frame"])


Frame: TypeAlias = (
    Request
    | Response
    | ErrorResponse
    | Notice
    | TransferOpen
    | TransferChunk
    | TransferCredit
    | TransferEnd
    | TransferAbort
    | TransferCancel
    | TransferAck
    | Ping
    | Pong
    | Close
    | Hello
)

_KINDS: Final[dict[str, Callable[[Mapping[str, Any]], Frame]]] = {
    cls.KIND: cls.from_wire
    for cls in (
        Request,
        Response,
        ErrorResponse,
        Notice,
        TransferOpen,
        TransferChunk,
        TransferCredit,
        TransferEnd,
        TransferAbort,
        TransferCancel,
        TransferAck,
        Ping,
        Pong,
        Close,
        Hello,
    )
}


# -- codec ----------------------------------------------------------------------------------------------------


class _Rejected(Exception):
    """A CBOR tag was found; our frames never carry tags."""


def _reject_tag(*_args: object) -> NoReturn:
    raise _Rejected("CBOR tags are not allowed")


# cbor2 decodes these tags itself (dates, bignums, regexes, shared references, ...) unless overridden; shared
# references could even build cyclic structures. Every one of them is refused.
_BUILTIN_TAGS: Final = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004)
_REJECT_SEMANTIC: Final = dict.fromkeys((*_BUILTIN_TAGS, 43000, 55799), _reject_tag)


def encode(frame: Frame) -> bytes:
    """The CBOR bytes of ``frame`` (fields were validated when the frame was built)."""
    try:
        return cbor2.dumps(frame.to_wire())
    except (cbor2.CBOREncodeError, ValueError, TypeError) as exc:  # pragma: no cover - guarded by __post_init__
        raise LocalProtocolError(f"cannot encode {type(frame).__name__}: {exc}", reason="malformed_frame") from exc


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_FRAME) -> Frame:
    """Parse one frame from untrusted bytes.

    Raises:
        RemoteProtocolError: ``frame_too_large`` (checked first, before parsing), ``malformed_frame`` or
            ``unknown_frame``. Nothing else, whatever the input.
    """
    size = len(data)
    if size > max_size:
        raise RemoteProtocolError(f"frame of {size} bytes exceeds the limit of {max_size}", reason="frame_too_large")
    try:
        stream = io.BytesIO(data)
        decoder = cbor2.CBORDecoder(
            stream,
            read_size=size,  # one read: the default 4 KiB reads make large chunks several times slower
            tag_hook=_reject_tag,
            semantic_decoders=_REJECT_SEMANTIC,
            max_depth=MAX_BODY_DEPTH + 2,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
        obj = decoder.decode()
        consumed = stream.tell()
    except (cbor2.CBORError, _Rejected, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise RemoteProtocolError(f"frame is not valid CBOR: {exc}", reason="malformed_frame") from None
    if consumed != size:
        raise RemoteProtocolError(f"{size - consumed} bytes after the frame", reason="malformed_frame")
    if type(obj) is not dict:
        raise RemoteProtocolError(f"frame must be a CBOR map, got {type(obj).__name__}", reason="malformed_frame")
    kind = obj.get("t")
    build = _KINDS.get(kind) if type(kind) is str else None
    if build is None:
        raise RemoteProtocolError(f"unknown frame kind {kind!r:.40}", reason="unknown_frame")
    try:
        return build(obj)
    except KeyError as exc:
        raise RemoteProtocolError(f"{kind} frame lacks field {exc}", reason="malformed_frame") from None
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"bad {kind} frame: {exc}", reason="malformed_frame") from None
