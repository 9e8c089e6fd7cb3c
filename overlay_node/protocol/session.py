"""One authenticated peer-link session, sans-IO: the BRC-103 handshake, the key schedule and MAC'd frames.

Invariants:

1. Message order on the websocket: A (initiator) sends ``initialRequest`` (text); B (responder) answers
   ``initialResponse`` (text); A sends its :class:`~overlay_node.wire.frames.Hello` (binary, MAC'd: A's proof of its
   key); B checks it, is then established and sends its own ``Hello``; A is established when that arrives. So when
   the initiator is established, the responder already is.
2. Key schedule (HKDF-SHA256, RFC 5869): ``S`` = ECDH(identity keys) as a 33-byte point;
   ``PRK = HMAC(salt = nA || nB, S)``; per direction ``K = HMAC(PRK, LABEL || keyA || keyB || dir || 0x01)`` with
   ``dir`` = ``b"i2r"`` or ``b"r2i"``. Each session has fresh keys (fresh nonces), each direction its own key,
   so frames can be neither replayed from another session nor reflected back to their sender.
3. Every binary message after the handshake is ``seq (8 bytes, big-endian) || cbor frame || HMAC-SHA256(K, seq ||
   cbor frame)``. ``seq`` starts at 0 in each direction and grows by exactly one per frame.
4. Checks on every received message, in this order: size (``frame_too_large``, before anything else), MAC
   (``bad_mac``), sequence (``replay`` if lower than expected, ``out_of_order`` if higher), CBOR frame
   (``malformed_frame``/``unknown_frame``). Any failure raises
   :class:`~overlay_node.errors.RemoteProtocolError`; the session is then closed and the link must drop.
5. Nothing is delivered before the peer's ``Hello`` checked out: any other frame first is ``auth_required``; a
   second ``Hello`` is ``unexpected_frame``; a text message after the handshake is ``unexpected_text``.

Theory of operation: the I/O layer calls :meth:`Session.start` (initiator), then for each websocket message
:meth:`Session.receive_message`, sends everything :meth:`Session.data_to_send` returns (in order), and seals its
own frames with :meth:`Session.send` under its send lock (the sequence number is taken when sealing).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from overlay_node.crypto.keys import Identity
from overlay_node.errors import LocalProtocolError, RemoteProtocolError
from overlay_node.protocol.handshake import (
    HandshakeInitiator,
    HandshakeResponder,
    HandshakeResult,
    RandomBytes,
)
from overlay_node.wire.frames import Frame, Hello, decode, encode

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = [
    "FRAME_OVERHEAD",
    "LINK_KEY_LABEL",
    "Established",
    "FrameOpener",
    "FrameSealer",
    "LinkKeys",
    "Session",
    "SessionState",
    "derive_link_keys",
]

LINK_KEY_LABEL: Final = b"overlay-node/1 peer link"
SEQ_LEN: Final = 8
MAC_LEN: Final = 32
#: bytes a MAC'd message adds around the CBOR frame
FRAME_OVERHEAD: Final = SEQ_LEN + MAC_LEN


@dataclass(frozen=True, slots=True)
class LinkKeys:
    """The two per-direction MAC keys of a session."""

    initiator_to_responder: bytes
    responder_to_initiator: bytes

    def __repr__(self) -> str:  # keys never reach logs
        return "LinkKeys(...)"


def derive_link_keys(shared_secret: bytes, handshake: HandshakeResult) -> LinkKeys:
    """The session's MAC keys from the ECDH secret of the identity keys and both nonces (HKDF-SHA256)."""
    prk = hmac.digest(handshake.initiator_nonce + handshake.responder_nonce, shared_secret, "sha256")
    info = LINK_KEY_LABEL + handshake.initiator_key + handshake.responder_key
    return LinkKeys(
        initiator_to_responder=hmac.digest(prk, info + b"i2r\x01", "sha256"),
        responder_to_initiator=hmac.digest(prk, info + b"r2i\x01", "sha256"),
    )


def _hmac_pads(key: bytes) -> tuple[_Hash, _Hash]:
    """SHA-256 states that have absorbed the HMAC key's inner and outer pads (RFC 2104): a copy of each gives the
    HMAC of a message without hashing the key again (two compression rounds saved per frame)."""
    block = key.ljust(64, b"\0") if len(key) <= 64 else hashlib.sha256(key).digest().ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    return inner, outer


class FrameSealer:
    """Wraps outgoing CBOR frames: ``seq || frame || mac``; the sequence number grows by one per frame."""

    __slots__ = ("_inner", "_key", "_outer", "_seq")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._inner, self._outer = _hmac_pads(key)
        self._seq = 0

    @property
    def next_seq(self) -> int:
        return self._seq

    def seal(self, payload: bytes) -> bytes:
        head = self._seq.to_bytes(SEQ_LEN, "big") + payload
        self._seq += 1
        inner = self._inner.copy()
        inner.update(head)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return head + outer.digest()


class FrameOpener:
    """Checks incoming MAC'd messages and returns the CBOR frame inside (see the module's rule 4)."""

    __slots__ = ("_inner", "_key", "_limit", "_outer", "_seq")

    def __init__(self, key: bytes, max_frame: int) -> None:
        self._key = key
        self._inner, self._outer = _hmac_pads(key)
        self._limit = max_frame + FRAME_OVERHEAD
        self._seq = 0

    @property
    def next_seq(self) -> int:
        return self._seq

    def open(self, data: bytes) -> bytes:
        size = len(data)
        if size > self._limit:
            raise RemoteProtocolError(
                f"message of {size} bytes exceeds the limit of {self._limit}", reason="frame_too_large"
            )
        if size <= FRAME_OVERHEAD:
            raise RemoteProtocolError(f"message of {size} bytes is too short", reason="malformed_frame")
        view = memoryview(data)
        inner = self._inner.copy()
        inner.update(view[:-MAC_LEN])
        outer = self._outer.copy()
        outer.update(inner.digest())
        if not hmac.compare_digest(outer.digest(), view[-MAC_LEN:]):
            raise RemoteProtocolError("frame MAC does not verify", reason="bad_mac")
        seq = int.from_bytes(view[:SEQ_LEN], "big")
        if seq != self._seq:
            if seq < self._seq:
                raise RemoteProtocolError(f"frame {seq} replayed (expected {self._seq})", reason="replay")
            raise RemoteProtocolError(f"frame {seq} out of order (expected {self._seq})", reason="out_of_order")
        self._seq += 1
        return data[SEQ_LEN:-MAC_LEN]


class SessionState(enum.Enum):
    #: exchanging the BRC-103 JSON messages
    HANDSHAKE = "handshake"
    #: keys derived, waiting for the peer's Hello (its proof of key)
    AWAIT_HELLO = "await_hello"
    #: established: frames flow both ways
    OPEN = "open"
    #: a protocol error ended the session
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Established:
    """The peer's identity is proven; ``hello`` is its Hello frame."""

    peer_key: str
    hello: Hello


class Session:
    """Both phases of one link for one side: handshake, then sealed frames.

    Args:
        identity: our identity key.
        initiator: whether we dialed.
        hello: the Hello we send once keys exist (our listen addresses and frame limit).
        expect_key: for a dialer that knows whom it dials: the peer's identity key (hex).
        random_bytes: randomness for nonces (tests inject a deterministic source).
    """

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        hello: Hello,
        expect_key: str | None = None,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self._identity = identity
        self._initiator = initiator
        self._hello = hello
        self._max_frame = hello.max_frame
        self._state = SessionState.HANDSHAKE
        self._outbox: list[str | bytes] = []
        self._started = False
        self._init: HandshakeInitiator | None = None
        self._resp: HandshakeResponder | None = None
        if initiator:
            self._init = HandshakeInitiator(identity, expect_key=expect_key, random_bytes=random_bytes)
        else:
            self._resp = HandshakeResponder(identity, random_bytes=random_bytes)
        self._sealer: FrameSealer | None = None
        self._opener: FrameOpener | None = None
        self._peer_key: str | None = None
        self._peer_hello: Hello | None = None
        self._peer_max_frame = hello.max_frame

    # -- state ------------------------------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is SessionState.OPEN

    @property
    def initiator(self) -> bool:
        return self._initiator

    @property
    def peer_key(self) -> str | None:
        """The peer's identity key (hex) once the handshake messages checked out; proven once open."""
        return self._peer_key

    @property
    def peer_hello(self) -> Hello | None:
        return self._peer_hello

    @property
    def peer_max_frame(self) -> int:
        """The largest CBOR frame the peer accepts (from its Hello)."""
        return self._peer_max_frame

    # -- driving ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Initiator: queue the ``initialRequest``. A no-op for the responder."""
        if self._init is not None and not self._started:
            self._started = True
            self._outbox.append(self._init.initial_request())

    def data_to_send(self) -> list[str | bytes]:
        """Messages to send now, in order (text for the handshake, bytes for frames)."""
        out, self._outbox = self._outbox, []
        return out

    def receive_message(self, message: str | bytes) -> Frame | Established | None:
        """Feed one websocket message; returns a frame for the application, :class:`Established`, or None.

        Raises:
            RemoteProtocolError: the peer broke the protocol (see the module's reasons); the session is closed.
            LocalProtocolError: called after the session closed.
        """
        state = self._state
        try:
            if state is SessionState.OPEN:
                return self._receive_frame(message)
            if state is SessionState.AWAIT_HELLO:
                return self._receive_hello(message)
            if state is SessionState.HANDSHAKE:
                self._receive_handshake(message)
                return None
        except RemoteProtocolError:
            self._state = SessionState.CLOSED
            raise
        raise LocalProtocolError("session is closed", reason="session_closed")

    def send(self, frame: Frame) -> bytes:
        """Seal one frame for sending; only once the session is open.

        Raises:
            LocalProtocolError: not open, or the frame exceeds the peer's limit.
        """
        if self._state is not SessionState.OPEN or self._sealer is None:
            raise LocalProtocolError(f"cannot send frames in state {self._state.value}", reason="session_state")
        payload = encode(frame)
        if len(payload) > self._peer_max_frame:
            raise LocalProtocolError(
                f"{type(frame).__name__} of {len(payload)} bytes exceeds the peer's limit of {self._peer_max_frame}",
                reason="frame_too_large",
            )
        return self._sealer.seal(payload)

    # -- phases -----------------------------------------------------------------------------------------------

    def _receive_handshake(self, message: str | bytes) -> None:
        if self._init is not None:
            if not self._started:
                raise LocalProtocolError("initiator must call start() first", reason="session_state")
            result = self._init.receive_response(message)
            self._keys_ready(result)
            assert self._sealer is not None
            self._outbox.append(self._sealer.seal(encode(self._hello)))
        else:
            assert self._resp is not None
            text, result = self._resp.receive_request(message)
            self._outbox.append(text)
            self._keys_ready(result)

    def _keys_ready(self, result: HandshakeResult) -> None:
        keys = derive_link_keys(self._identity.shared_secret(result.peer_key), result)
        if self._initiator:
            mine, theirs = keys.initiator_to_responder, keys.responder_to_initiator
        else:
            mine, theirs = keys.responder_to_initiator, keys.initiator_to_responder
        self._sealer = FrameSealer(mine)
        self._opener = FrameOpener(theirs, self._max_frame)
        self._peer_key = result.peer_key_hex
        self._state = SessionState.AWAIT_HELLO

    def _open(self, message: str | bytes) -> Frame:
        if not isinstance(message, bytes):
            raise RemoteProtocolError("text message after the handshake", reason="unexpected_text")
        assert self._opener is not None
        return decode(self._opener.open(message), max_size=self._max_frame)

    def _receive_hello(self, message: str | bytes) -> Established:
        frame = self._open(message)
        if not isinstance(frame, Hello):
            raise RemoteProtocolError(
                f"first frame must be hello (the proof of key), got {type(frame).__name__}", reason="auth_required"
            )
        self._peer_hello = frame
        self._peer_max_frame = frame.max_frame
        self._state = SessionState.OPEN
        if not self._initiator:
            assert self._sealer is not None
            self._outbox.append(self._sealer.seal(encode(self._hello)))
        assert self._peer_key is not None
        return Established(peer_key=self._peer_key, hello=frame)

    def _receive_frame(self, message: str | bytes) -> Frame:
        frame = self._open(message)
        if isinstance(frame, Hello):
            raise RemoteProtocolError("hello after the link was established", reason="unexpected_frame")
        return frame
