"""Peer-link frames after the MAC: ``wire/frames.py`` and ``protocol/session.py`` with real keys, and the BRC-103
handshake messages before them.

Properties: any bytes give a frame or ``RemoteProtocolError`` (nothing else); a decoded frame encodes back to the
same frame; a sealed message reaches the same decoder through an established session (a refused one closes the
session and a new pair is made); mangled handshake messages and MAC'd messages are refused the same way."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from hypothesis import strategies as st

from overlay_node.crypto.keys import Identity
from overlay_node.errors import RemoteProtocolError
from overlay_node.protocol.handshake import HandshakeInitiator
from overlay_node.protocol.session import Established, FrameSealer, Session, SessionState, derive_link_keys
from overlay_node.wire import frames as f

from . import seeds
from .mutate import fuzz_bytes, mutated, mutated_values
from .runner import FuzzReport, fuzz_seconds, run_property

pytestmark = pytest.mark.fuzz

MAX_FRAME = 64 * 1024
#: the surface's budget is shared by its three properties
SHARE = 3


@dataclass
class Pair:
    """Our responder session (the one fuzzed) and a hand-driven initiator that seals whatever it is given."""

    responder: Session
    sealer: FrameSealer


def establish() -> Pair:
    k = seeds.keys()
    responder = Session(k.bob, initiator=False, hello=f.Hello(agent="fuzz", max_frame=MAX_FRAME))
    initiator = HandshakeInitiator(k.alice)
    assert responder.receive_message(initiator.initial_request()) is None
    (response,) = responder.data_to_send()
    result = initiator.receive_response(response)
    keys = derive_link_keys(k.alice.shared_secret(result.peer_key), result)
    sealer = FrameSealer(keys.initiator_to_responder)
    established = responder.receive_message(sealer.seal(f.encode(f.Hello(agent="initiator"))))
    assert isinstance(established, Established)
    responder.data_to_send()
    return Pair(responder, sealer)


_pair: list[Pair] = []


def pair() -> Pair:
    if not _pair or _pair[0].responder.state is not SessionState.OPEN:
        _pair[:] = [establish()]
    return _pair[0]


def frame_inputs() -> st.SearchStrategy[bytes]:
    maps = mutated_values(seeds.frame_maps()).map(lambda v: bytes(cbor2.dumps(v)))
    return st.one_of(fuzz_bytes(seeds.frame_bytes()), maps)


def check_frame(data: bytes) -> None:
    try:
        frame = f.decode(data, max_size=MAX_FRAME)
    except RemoteProtocolError:
        frame = None
    if frame is not None:
        # invariant 3: a frame that decoded is one we could have sent; it encodes to what decodes to it again
        again = f.encode(frame)
        assert f.encode(f.decode(again, max_size=MAX_FRAME)) == again
    # the same bytes behind a real MAC reach the same decoder through the session (a refused frame closes the
    # session and the next input needs a new handshake: refused ones take this path one time in four)
    if frame is None and len(data) % 4:
        return
    p = pair()
    try:
        got: Any = p.responder.receive_message(p.sealer.seal(data))
    except RemoteProtocolError:
        got = None
        assert p.responder.state is SessionState.CLOSED
    if frame is None or isinstance(frame, f.Hello):
        assert got is None
    else:
        assert got is not None
        assert f.encode(got) == f.encode(frame)


def test_frames_behind_the_mac(fuzz_report: FuzzReport) -> None:
    run_property(
        fuzz_report, "peer link: frames behind the MAC", frame_inputs(), check_frame, seconds=fuzz_seconds() / SHARE
    )


def _handshake_input() -> st.SearchStrategy[tuple[int, str | bytes]]:
    request, response = seeds.handshake_seeds()
    texts = [request.encode(), response.encode()]
    as_text = mutated(texts).map(lambda b: b.decode("utf-8", "replace"))
    structured = mutated_values([json.loads(t) for t in texts], json=True).map(json.dumps)
    message: st.SearchStrategy[str | bytes] = st.one_of(as_text, structured, mutated(texts), st.binary(max_size=300))
    return st.tuples(st.integers(0, 2), message)


def check_handshake(case: tuple[int, str | bytes]) -> None:
    session, message = handshake_session(*case)
    try:
        session.receive_message(message)
    except RemoteProtocolError:
        assert session.state is SessionState.CLOSED


@functools.cache
def _stranger() -> Identity:
    return Identity.generate()


def handshake_session(role: int, message: str | bytes) -> tuple[Session, str | bytes]:
    """The session a handshake message in ``role`` (0, 1 or 2) is fed to, and the message as it is to be fed."""
    k = seeds.keys()
    hello = f.Hello(agent="fuzz")
    if role == 0:
        # a responder fed a mangled initialRequest
        session = Session(k.bob, initiator=False, hello=hello)
    elif role == 1:
        # an initiator fed a mangled initialResponse
        session = Session(k.alice, initiator=True, hello=hello)
        session.start()
        session.data_to_send()
    else:
        # a responder that answered, fed a mangled message where the Hello belongs (sealed with a made-up key)
        session = Session(k.bob, initiator=False, hello=hello)
        session.receive_message(HandshakeInitiator(_stranger()).initial_request())
        session.data_to_send()
        if isinstance(message, bytes):
            message = FrameSealer(b"\x07" * 32).seal(message)
    return session, message


def test_handshake_messages(fuzz_report: FuzzReport) -> None:
    run_property(
        fuzz_report, "peer link: handshake", _handshake_input(), check_handshake, seconds=fuzz_seconds() / SHARE
    )


def _sealed_input() -> st.SearchStrategy[str | bytes]:
    sealed = FrameSealer(b"\x07" * 32).seal(seeds.frame_bytes()[1])
    return st.one_of(fuzz_bytes([sealed], max_size=128), st.text(max_size=64))


def check_sealed(message: str | bytes) -> None:
    # a whole message made up or mangled after sealing (under a key the responder does not have): refused by the
    # size check, the MAC, or as text after the handshake
    p = pair()
    with pytest.raises(RemoteProtocolError) as refused:
        p.responder.receive_message(message)
    assert refused.value.reason in ("frame_too_large", "malformed_frame", "bad_mac", "unexpected_text")
    assert p.responder.state is SessionState.CLOSED


def test_mangled_sealed_messages(fuzz_report: FuzzReport) -> None:
    run_property(
        fuzz_report, "peer link: mangled MAC'd messages", _sealed_input(), check_sealed, seconds=fuzz_seconds() / SHARE
    )
