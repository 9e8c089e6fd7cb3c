"""Sans-IO sessions joined in memory: handshake to established, MAC'd frames, every attack the frame layer stops,
and the credit-based transfer state machines."""

from __future__ import annotations

import hmac
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.crypto.keys import Identity
from overlay_node.errors import LocalProtocolError, RemoteProtocolError
from overlay_node.protocol import handshake as hs
from overlay_node.protocol.session import (
    FRAME_OVERHEAD,
    Established,
    FrameOpener,
    FrameSealer,
    Session,
    SessionState,
    derive_link_keys,
)
from overlay_node.protocol.transfer import (
    IncomingTransfer,
    LocalIdSpace,
    OutgoingTransfer,
    PeerIdSpace,
    TransferState,
)
from overlay_node.wire import frames as f

MAX_FRAME = 4096


class ConnectionPair:
    """An initiator and a responder session joined by an in-memory link (h11's ConnectionPair idea)."""

    def __init__(self, *, expect_key: str | None = None, responder: Identity | None = None) -> None:
        self.alice = Identity.generate()
        self.bob = responder or Identity.generate()
        hello_a = f.Hello(agent="a", listen=("ws://a:1/p2p/1",), max_frame=MAX_FRAME)
        hello_b = f.Hello(agent="b", listen=("ws://b:2/p2p/1",), max_frame=MAX_FRAME)
        self.a = Session(self.alice, initiator=True, hello=hello_a, expect_key=expect_key)
        self.b = Session(self.bob, initiator=False, hello=hello_b)
        self.events: dict[str, list[object]] = {"a": [], "b": []}

    def pump(self) -> None:
        """Deliver queued messages both ways until both sides are quiet."""
        moved = True
        while moved:
            moved = False
            for src, dst, name in ((self.a, self.b, "b"), (self.b, self.a, "a")):
                for message in src.data_to_send():
                    moved = True
                    event = dst.receive_message(message)
                    if event is not None:
                        self.events[name].append(event)

    def establish(self) -> ConnectionPair:
        self.a.start()
        self.pump()
        return self


def test_handshake_establishes_both_sides() -> None:
    pair = ConnectionPair().establish()
    assert pair.a.is_open
    assert pair.b.is_open
    assert pair.events["a"] == [Established(peer_key=pair.bob.public_key_hex, hello=pair.b._hello)]
    assert pair.events["b"] == [Established(peer_key=pair.alice.public_key_hex, hello=pair.a._hello)]
    assert pair.a.peer_hello is not None
    assert pair.a.peer_hello.listen == ("ws://b:2/p2p/1",)
    assert pair.a.peer_max_frame == MAX_FRAME


def test_message_order_initiator_is_established_last() -> None:
    pair = ConnectionPair()
    pair.a.start()
    (request,) = pair.a.data_to_send()
    assert isinstance(request, str)
    assert pair.b.receive_message(request) is None
    (response,) = pair.b.data_to_send()
    assert isinstance(response, str)
    assert pair.b.state is SessionState.AWAIT_HELLO
    assert pair.a.receive_message(response) is None
    (hello_a,) = pair.a.data_to_send()
    assert isinstance(hello_a, bytes)
    assert pair.a.state is SessionState.AWAIT_HELLO
    assert isinstance(pair.b.receive_message(hello_a), Established)  # the responder first
    (hello_b,) = pair.b.data_to_send()
    assert isinstance(pair.a.receive_message(hello_b), Established)


def test_frames_flow_both_ways_in_order() -> None:
    pair = ConnectionPair().establish()
    sent = [f.Request(id=i, method="m", body={"i": i}) for i in range(5)]
    assert [pair.b.receive_message(pair.a.send(frame)) for frame in sent] == sent
    back = f.Response(id=3, body={"ok": True})
    assert pair.a.receive_message(pair.b.send(back)) == back


def test_layout_is_seq_cbor_mac() -> None:
    pair = ConnectionPair().establish()
    frame = f.Ping(nonce=7)
    data = pair.a.send(frame)
    assert int.from_bytes(data[:8], "big") == 1  # the Hello was frame 0
    assert f.decode(data[8:-32]) == frame
    assert len(data) == len(f.encode(frame)) + FRAME_OVERHEAD


@pytest.mark.parametrize("key_len", [16, 32, 64, 65, 100])
def test_the_precomputed_mac_states_give_hmac_sha256(key_len: int) -> None:
    """Sealer and opener keep SHA-256 states keyed with the pads (RFC 2104); the MAC is still HMAC-SHA256(K, seq ||
    frame), for any key length (keys longer than a block are hashed first)."""
    key = os.urandom(key_len)
    sealer, opener = FrameSealer(key), FrameOpener(key, 4096)
    for seq, payload in enumerate([b"\xa0", os.urandom(1000), b"\xa0"]):
        sealed = sealer.seal(payload)
        head = seq.to_bytes(8, "big") + payload
        assert sealed == head + hmac.digest(key, head, "sha256")
        assert opener.open(sealed) == payload
    with pytest.raises(RemoteProtocolError) as info:
        FrameOpener(os.urandom(key_len), 4096).open(FrameSealer(key).seal(b"\xa0"))
    assert info.value.reason == "bad_mac"


def test_keys_are_per_direction_and_per_session() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    initiator = hs.HandshakeInitiator(alice)
    response, result_b = hs.HandshakeResponder(bob).receive_request(initiator.initial_request())
    result_a = initiator.receive_response(response)
    keys_a = derive_link_keys(alice.shared_secret(bob.public_key), result_a)
    keys_b = derive_link_keys(bob.shared_secret(alice.public_key), result_b)
    assert keys_a == keys_b
    assert keys_a.initiator_to_responder != keys_a.responder_to_initiator
    assert repr(keys_a) == "LinkKeys(...)"
    other = ConnectionPair().establish()
    assert other.a._sealer is not None
    assert other.a._sealer._key not in (
        keys_a.initiator_to_responder,
        keys_a.responder_to_initiator,
    )


def _reason(pair_session: Session, message: str | bytes) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        pair_session.receive_message(message)
    assert pair_session.state is SessionState.CLOSED
    with pytest.raises(LocalProtocolError):
        pair_session.receive_message(message)
    return info.value.reason


def test_replayed_frame_is_refused() -> None:
    pair = ConnectionPair().establish()
    data = pair.a.send(f.Notice(method="pay", body={"amount": 5}))
    pair.b.receive_message(data)
    assert _reason(pair.b, data) == "replay"


def test_reordered_frames_are_refused() -> None:
    pair = ConnectionPair().establish()
    first, second = pair.a.send(f.Ping(nonce=1)), pair.a.send(f.Ping(nonce=2))
    assert first != second
    assert _reason(pair.b, second) == "out_of_order"


@pytest.mark.parametrize("position", [0, 7, 8, 12, -33, -1])
def test_altered_frames_are_refused(position: int) -> None:
    pair = ConnectionPair().establish()
    data = bytearray(pair.a.send(f.Request(id=1, method="m", body={"amount": 5})))
    data[position] ^= 0x01
    assert _reason(pair.b, bytes(data)) == "bad_mac"


def test_injected_frames_are_refused() -> None:
    pair = ConnectionPair().establish()
    forged = FrameSealer(b"k" * 32)
    forged._seq = 1  # the right sequence number does not help without the key
    assert _reason(pair.b, forged.seal(f.encode(f.Ping(nonce=1)))) == "bad_mac"


def test_frames_from_another_session_are_refused() -> None:
    one, two = ConnectionPair().establish(), ConnectionPair().establish()
    assert _reason(two.b, one.a.send(f.Ping(nonce=1))) == "bad_mac"


def test_reflected_frames_are_refused() -> None:
    pair = ConnectionPair().establish()
    assert _reason(pair.a, pair.a.send(f.Ping(nonce=1))) == "bad_mac"


def test_oversized_and_truncated_messages() -> None:
    pair = ConnectionPair().establish()
    assert _reason(pair.b, b"\x00" * (MAX_FRAME + FRAME_OVERHEAD + 1)) == "frame_too_large"
    pair = ConnectionPair().establish()
    assert _reason(pair.b, b"\x00" * FRAME_OVERHEAD) == "malformed_frame"


def test_oversized_frame_with_valid_mac_is_refused_by_size() -> None:
    pair = ConnectionPair().establish()
    assert pair.a._sealer is not None
    big = pair.a._sealer.seal(f.encode(f.TransferChunk(id=1, data=b"x" * MAX_FRAME)))
    assert _reason(pair.b, big) == "frame_too_large"


def test_valid_mac_but_garbage_cbor() -> None:
    pair = ConnectionPair().establish()
    assert pair.a._sealer is not None
    assert _reason(pair.b, pair.a._sealer.seal(b"\xff\xff")) == "malformed_frame"


def test_sending_beyond_the_peer_limit_is_a_local_error() -> None:
    pair = ConnectionPair().establish()
    with pytest.raises(LocalProtocolError):
        pair.a.send(f.TransferChunk(id=1, data=b"x" * MAX_FRAME))
    pair.a.send(f.TransferChunk(id=1, data=b"x" * (MAX_FRAME - 64)))


def test_text_after_handshake_and_second_hello() -> None:
    pair = ConnectionPair().establish()
    assert _reason(pair.b, "{}") == "unexpected_text"
    pair = ConnectionPair().establish()
    assert pair.a._sealer is not None
    assert _reason(pair.b, pair.a._sealer.seal(f.encode(pair.a._hello))) == "unexpected_frame"


def test_nothing_is_delivered_before_the_initiator_proof() -> None:
    """A correctly MAC'd request as the initiator's first frame is refused: the Hello must come first."""
    pair = ConnectionPair()
    pair.a.start()
    pair.b.receive_message(pair.a.data_to_send()[0])
    pair.a.receive_message(pair.b.data_to_send()[0])
    pair.a.data_to_send()  # the initiator's Hello is withheld
    assert pair.a._sealer is not None
    pair.a._sealer._seq = 0  # as if the Hello had never been sealed
    skipped = pair.a._sealer.seal(f.encode(f.Request(id=0, method="m", body={})))
    assert _reason(pair.b, skipped) == "auth_required"


def test_impersonator_cannot_produce_the_proof() -> None:
    """Mallory claims Alice's key: Bob answers, but Mallory cannot derive the link keys."""
    alice, bob = Identity.generate(), Identity.generate()
    responder = Session(bob, initiator=False, hello=f.Hello(agent="b"))
    claimed = hs.InitialRequest(identity_key=alice.public_key_hex, initial_nonce=hs.create_nonce(Identity.generate()))
    responder.receive_message(claimed.to_json())
    response = json.loads(responder.data_to_send()[0])
    assert response["yourNonce"] == claimed.initial_nonce
    # Mallory's best guess: keys from her own ECDH with bob
    guess = FrameSealer(b"\x00" * 32)
    assert _reason(responder, guess.seal(f.encode(f.Hello(agent="m")))) == "bad_mac"


def test_binary_during_handshake_and_unexpected_identity() -> None:
    pair = ConnectionPair()
    assert _reason(pair.b, b"\x00") == "bad_handshake"
    pair = ConnectionPair(expect_key=Identity.generate().public_key_hex)
    pair.a.start()
    pair.b.receive_message(pair.a.data_to_send()[0])
    assert _reason(pair.a, pair.b.data_to_send()[0]) == "unexpected_identity"


def test_send_before_open_is_a_local_error() -> None:
    pair = ConnectionPair()
    with pytest.raises(LocalProtocolError):
        pair.a.send(f.Ping(nonce=1))
    with pytest.raises(LocalProtocolError):
        pair.a.receive_message("{}")  # the initiator must start() first


# -- transfers --------------------------------------------------------------------------------------------------


def test_credit_flow() -> None:
    sender, receiver = OutgoingTransfer(1), IncomingTransfer(1, window=4)
    assert not sender.can_send
    sender.on_credit(receiver.initial_credit())
    for _ in range(4):
        sender.spend()
        receiver.on_chunk()
    assert not sender.can_send
    assert receiver.buffered == 4
    with pytest.raises(LocalProtocolError):
        sender.spend()
    assert receiver.consumed() == 0  # batching: half a window
    assert receiver.consumed() == 2
    sender.on_credit(2)
    assert sender.credit == 2
    assert receiver.granted == 2


def test_chunk_without_credit_is_a_violation() -> None:
    receiver = IncomingTransfer(1, window=2)
    with pytest.raises(RemoteProtocolError) as info:
        receiver.on_chunk()
    assert info.value.reason == "credit_exceeded"
    receiver.initial_credit()
    receiver.on_chunk()
    receiver.on_chunk()
    with pytest.raises(RemoteProtocolError) as info:
        receiver.on_chunk()
    assert info.value.reason == "credit_exceeded"


def test_transfer_end_and_abort_rules() -> None:
    receiver = IncomingTransfer(1, window=2)
    receiver.initial_credit()
    receiver.on_end()
    with pytest.raises(RemoteProtocolError) as info:
        receiver.on_chunk()
    assert info.value.reason == "transfer_state"
    with pytest.raises(RemoteProtocolError):
        receiver.on_end()
    receiver.on_abort()
    with pytest.raises(RemoteProtocolError):
        receiver.on_abort()
    sender = OutgoingTransfer(2)
    with pytest.raises(RemoteProtocolError) as info:
        sender.on_ack()  # an ack before our end
    assert info.value.reason == "transfer_state"
    sender.on_credit(1)
    sender.end()
    sender.on_credit(5)  # crossing credit after the end is harmless
    assert not sender.can_send
    sender.on_ack()
    assert sender.state is TransferState.DONE
    with pytest.raises(LocalProtocolError):
        sender.end()


def test_credit_overflow() -> None:
    sender = OutgoingTransfer(1)
    sender.on_credit(f.MAX_CREDIT)
    with pytest.raises(RemoteProtocolError) as info:
        sender.on_credit(1)
    assert info.value.reason == "credit_overflow"


@settings(max_examples=200, deadline=None)
@given(window=st.integers(1, 9), steps=st.lists(st.sampled_from(["send", "consume"]), max_size=80))
def test_buffer_never_exceeds_the_window(window: int, steps: list[str]) -> None:
    sender, receiver = OutgoingTransfer(1), IncomingTransfer(1, window=window)
    sender.on_credit(receiver.initial_credit())
    for step in steps:
        if step == "send" and sender.can_send:
            sender.spend()
            receiver.on_chunk()
        elif step == "consume" and receiver.buffered:
            credit = receiver.consumed()
            if credit:
                sender.on_credit(credit)
        assert receiver.granted + receiver.buffered + receiver.pending == window
        assert receiver.buffered <= window
        assert sender.credit == receiver.granted  # no frames in flight in this model


def test_id_spaces() -> None:
    local = LocalIdSpace()
    assert [local.allocate() for _ in range(3)] == [0, 1, 2]
    assert local.issued(2)
    assert not local.issued(3)
    assert not local.issued(-1)
    peer = PeerIdSpace()
    peer.open(5)
    peer.check_known(3)  # an id below the last opened one may be a finished transfer
    for bad, reason in ((5, "transfer_id_reused"), (4, "transfer_id_reused")):
        with pytest.raises(RemoteProtocolError) as info:
            peer.open(bad)
        assert info.value.reason == reason
    with pytest.raises(RemoteProtocolError) as info:
        peer.check_known(6)
    assert info.value.reason == "unknown_transfer"
    with pytest.raises(LocalProtocolError):
        IncomingTransfer(1, window=0)
