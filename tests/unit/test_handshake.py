"""The BRC-103 handshake messages, nonces and signatures, and every rejection reason."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from bsv.auth.utils import verify_nonce as bsv_verify_nonce
from bsv.keys import PrivateKey as BsvPrivateKey
from bsv.wallet.wallet_impl import ProtoWallet

from overlay_node.crypto import brc42
from overlay_node.crypto.keys import Identity
from overlay_node.errors import LocalProtocolError, RemoteProtocolError
from overlay_node.protocol import handshake as hs


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity.generate()


def _exchange(alice: Identity, bob: Identity) -> tuple[hs.HandshakeInitiator, str, str]:
    initiator = hs.HandshakeInitiator(alice)
    request = initiator.initial_request()
    response, _ = hs.HandshakeResponder(bob).receive_request(request)
    return initiator, request, response


def test_happy_path(alice: Identity, bob: Identity) -> None:
    initiator = hs.HandshakeInitiator(alice, expect_key=bob.public_key_hex.upper())
    request = initiator.initial_request()
    response, bob_result = hs.HandshakeResponder(bob).receive_request(request)
    alice_result = initiator.receive_response(response)
    assert alice_result.role == "initiator"
    assert bob_result.role == "responder"
    assert alice_result.peer_key == bob.public_key
    assert bob_result.peer_key == alice.public_key
    assert alice_result.initiator_nonce == bob_result.initiator_nonce
    assert alice_result.responder_nonce == bob_result.responder_nonce
    assert alice_result.initiator_key == bob_result.initiator_key == alice.public_key
    assert alice_result.responder_key == bob_result.responder_key == bob.public_key
    assert alice_result.peer_key_hex == bob.public_key_hex


def test_messages_use_brc103_field_names(alice: Identity, bob: Identity) -> None:
    _, request, response = _exchange(alice, bob)
    req = json.loads(request)
    assert req == {
        "version": "0.1",
        "messageType": "initialRequest",
        "identityKey": alice.public_key_hex,
        "initialNonce": req["initialNonce"],
        "requestedCertificates": {"certifiers": [], "types": {}},
    }
    res = json.loads(response)
    assert set(res) == {
        "version",
        "messageType",
        "identityKey",
        "initialNonce",
        "yourNonce",
        "requestedCertificates",
        "signature",
    }
    assert res["messageType"] == "initialResponse"
    assert res["yourNonce"] == req["initialNonce"]
    assert all(isinstance(b, int) and 0 <= b <= 255 for b in res["signature"])


def test_response_signature_verifies_with_bsv_sdk(alice: Identity, bob: Identity) -> None:
    _, request, response = _exchange(alice, bob)
    n_a, res = json.loads(request)["initialNonce"], json.loads(response)
    n_b = res["initialNonce"]
    wallet = ProtoWallet(BsvPrivateKey(alice.private_bytes))
    verdict = wallet.verify_signature(
        {
            "protocolID": [2, "auth message signature"],
            "keyID": f"{n_a} {n_b}",
            "counterparty": bob.public_key_hex,
            "data": base64.b64decode(n_a) + base64.b64decode(n_b),
            "signature": bytes(res["signature"]),
        }
    )
    assert verdict == {"valid": True}


def test_nonces(alice: Identity, bob: Identity, capsys: pytest.CaptureFixture[str]) -> None:
    nonce = hs.create_nonce(alice)
    assert len(nonce) == 64
    assert "=" not in nonce
    assert len(base64.b64decode(nonce)) == 48
    assert hs.verify_nonce(alice, nonce)
    assert not hs.verify_nonce(bob, nonce)
    assert not hs.verify_nonce(alice, nonce[:-4] + "AAAA")
    assert not hs.verify_nonce(alice, "short")
    # the reference py-sdk (Latin-1 key id, like ours) accepts our nonce too
    assert bsv_verify_nonce(nonce, ProtoWallet(BsvPrivateKey(alice.private_bytes)))
    capsys.readouterr()  # py-sdk prints debug lines


def test_nonces_are_random(alice: Identity) -> None:
    assert len({hs.create_nonce(alice) for _ in range(20)}) == 20


def test_misuse_is_a_local_error(alice: Identity, bob: Identity) -> None:
    initiator = hs.HandshakeInitiator(alice)
    with pytest.raises(LocalProtocolError):
        initiator.receive_response("{}")
    request = initiator.initial_request()
    with pytest.raises(LocalProtocolError):
        initiator.initial_request()
    responder = hs.HandshakeResponder(bob)
    responder.receive_request(request)
    with pytest.raises(LocalProtocolError):
        responder.receive_request(request)


def _edit(message: str, change: Callable[[dict[str, Any]], object]) -> str:
    obj = json.loads(message)
    change(obj)
    return json.dumps(obj)


OTHER_NONCE = base64.b64encode(bytes(48)).decode()
NONCE_32 = base64.b64encode(bytes(32)).decode()
NONCE_PADDED = base64.b64encode(bytes(47)).decode()

REQUEST_CASES: list[tuple[str, Callable[[str], str | bytes], str]] = [
    ("binary", lambda m: m.encode(), "bad_handshake"),
    ("not json", lambda m: m[:-1], "bad_handshake"),
    ("array", lambda _: "[1]", "bad_handshake"),
    ("huge", lambda _: " " * (hs.MAX_HANDSHAKE_MESSAGE + 1), "bad_handshake"),
    ("no version", lambda m: _edit(m, lambda o: o.pop("version")), "bad_handshake"),
    ("version 1.0", lambda m: _edit(m, lambda o: o.update(version="1.0")), "bad_version"),
    ("version number", lambda m: _edit(m, lambda o: o.update(version=0.1)), "bad_version"),
    ("wrong type", lambda m: _edit(m, lambda o: o.update(messageType="general")), "bad_handshake"),
    ("no key", lambda m: _edit(m, lambda o: o.pop("identityKey")), "bad_identity_key"),
    ("short key", lambda m: _edit(m, lambda o: o.update(identityKey="02ab")), "bad_identity_key"),
    ("off-curve key", lambda m: _edit(m, lambda o: o.update(identityKey="02" + "ff" * 32)), "bad_identity_key"),
    ("no nonce", lambda m: _edit(m, lambda o: o.pop("initialNonce")), "bad_nonce"),
    (
        "32-byte nonce",
        lambda m: _edit(m, lambda o: o.update(initialNonce=NONCE_32)),
        "bad_nonce",
    ),
    (
        "padded nonce",
        lambda m: _edit(m, lambda o: o.update(initialNonce=NONCE_PADDED)),
        "bad_nonce",
    ),
    ("non-b64 nonce", lambda m: _edit(m, lambda o: o.update(initialNonce="!" * 64)), "bad_nonce"),
    ("bad certs", lambda m: _edit(m, lambda o: o.update(requestedCertificates={"certifiers": "x"})), "bad_handshake"),
    (
        "cert types",
        lambda m: _edit(m, lambda o: o.update(requestedCertificates={"types": {"t": [1]}})),
        "bad_handshake",
    ),
]


@pytest.mark.parametrize(("mutate", "reason"), [c[1:] for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES])
def test_responder_rejects(alice: Identity, bob: Identity, mutate: Callable[[str], str | bytes], reason: str) -> None:
    request = hs.HandshakeInitiator(alice).initial_request()
    with pytest.raises(RemoteProtocolError) as info:
        hs.HandshakeResponder(bob).receive_request(mutate(request))
    assert info.value.reason == reason


def test_responder_accepts_missing_certificate_request(alice: Identity, bob: Identity) -> None:
    request = _edit(hs.HandshakeInitiator(alice).initial_request(), lambda o: o.pop("requestedCertificates"))
    hs.HandshakeResponder(bob).receive_request(request)


def test_responder_rejects_its_own_key(bob: Identity) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        hs.HandshakeResponder(bob).receive_request(hs.HandshakeInitiator(bob).initial_request())
    assert info.value.reason == "self_link"


def _resign(bob_or_other: Identity, n_a: str, n_b: str, counterparty: str) -> list[int]:
    data, key_id = hs.signature_payload(n_a, n_b)
    sig = brc42.create_signature(
        bob_or_other, data, protocol=hs.SIGNATURE_PROTOCOL, key_id=key_id, counterparty=counterparty
    )
    return list(sig)


def test_initiator_rejects_wrong_signatures(alice: Identity, bob: Identity) -> None:
    mallory = Identity.generate()
    cases: list[Callable[[dict[str, Any]], object]] = [
        lambda o: o.update(signature=[*o["signature"][:-1], o["signature"][-1] ^ 1]),  # altered
        lambda o: o.update(signature=[0x30, 0x06, 2, 1, 1, 2, 1, 1]),  # valid DER, wrong value
        # signed by someone else while claiming bob's key
        lambda o: o.update(signature=_resign(mallory, o["yourNonce"], o["initialNonce"], alice.public_key_hex)),
        # bob signs for the wrong counterparty
        lambda o: o.update(signature=_resign(bob, o["yourNonce"], o["initialNonce"], mallory.public_key_hex)),
        # bob signs the nonces in the wrong order
        lambda o: o.update(signature=_resign(bob, o["initialNonce"], o["yourNonce"], alice.public_key_hex)),
    ]
    for change in cases:
        initiator, _, response = _exchange(alice, bob)
        with pytest.raises(RemoteProtocolError) as info:
            initiator.receive_response(_edit(response, change))
        assert info.value.reason == "bad_signature"


RESPONSE_CASES: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    ("version", lambda o: o.update(version="0.2"), "bad_version"),
    ("type", lambda o: o.update(messageType="initialRequest"), "bad_handshake"),
    ("no signature", lambda o: o.pop("signature"), "bad_handshake"),
    ("hex signature", lambda o: o.update(signature="3044"), "bad_handshake"),
    ("signature bytes", lambda o: o.update(signature=[256]), "bad_handshake"),
    ("empty signature", lambda o: o.update(signature=[]), "bad_handshake"),
    ("no yourNonce", lambda o: o.pop("yourNonce"), "bad_nonce"),
    ("other yourNonce", lambda o: o.update(yourNonce=OTHER_NONCE), "nonce_mismatch"),
    ("bad initialNonce", lambda o: o.update(initialNonce="x"), "bad_nonce"),
    ("bad key", lambda o: o.update(identityKey=5), "bad_identity_key"),
]


@pytest.mark.parametrize(("change", "reason"), [c[1:] for c in RESPONSE_CASES], ids=[c[0] for c in RESPONSE_CASES])
def test_initiator_rejects(
    alice: Identity, bob: Identity, change: Callable[[dict[str, Any]], object], reason: str
) -> None:
    initiator, _, response = _exchange(alice, bob)
    with pytest.raises(RemoteProtocolError) as info:
        initiator.receive_response(_edit(response, change))
    assert info.value.reason == reason


def test_initiator_rejects_replayed_response(alice: Identity, bob: Identity) -> None:
    """An initialResponse from an earlier handshake answers another nonce."""
    _, _, old_response = _exchange(alice, bob)
    initiator = hs.HandshakeInitiator(alice)
    initiator.initial_request()
    with pytest.raises(RemoteProtocolError) as info:
        initiator.receive_response(old_response)
    assert info.value.reason == "nonce_mismatch"


def test_initiator_rejects_unexpected_identity(alice: Identity, bob: Identity) -> None:
    initiator = hs.HandshakeInitiator(alice, expect_key=Identity.generate().public_key_hex)
    response, _ = hs.HandshakeResponder(bob).receive_request(initiator.initial_request())
    with pytest.raises(RemoteProtocolError) as info:
        initiator.receive_response(response)
    assert info.value.reason == "unexpected_identity"


def test_initiator_rejects_its_own_key(alice: Identity) -> None:
    initiator = hs.HandshakeInitiator(alice)
    request = initiator.initial_request()
    # a responder holding alice's key answers alice (e.g. a node dialing itself): refused before the signature
    response, _ = hs.HandshakeResponder(Identity.generate()).receive_request(request)
    with pytest.raises(RemoteProtocolError) as info:
        initiator.receive_response(_edit(response, lambda o: o.update(identityKey=alice.public_key_hex)))
    assert info.value.reason == "self_link"
