"""BRC-104 and BRC-105 sans-IO (``protocol/http_auth.py``, ``protocol/http_payment.py``): payloads against what the
official @bsv/sdk computes (AuthFetch's request serializer, SimplifiedFetchTransport's response payload), nonces and
signatures both ways, the server's checks of every header, the session table's bounds and expiry, and replays."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from overlay_node.crypto import brc42
from overlay_node.crypto.keys import Identity
from overlay_node.errors import InvalidDerivationPrefix, MalformedPayment, PaymentReplayed, RemoteProtocolError
from overlay_node.protocol import http_auth as ha
from overlay_node.protocol import http_payment as hp

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / ".tools" / "node_modules" / "@bsv" / "sdk"


def sdk(jobs: dict[str, Any]) -> dict[str, Any]:
    """Run tests/unit/js/auth_vectors.cjs (the official TypeScript SDK) on ``jobs``."""
    node = shutil.which("node")
    if node is None or not SDK.is_dir():
        pytest.fail("@bsv/sdk or node missing: run `make tools` (npm install --prefix .tools @bsv/sdk)")
    proc = subprocess.run(
        [node, str(ROOT / "tests/unit/js/auth_vectors.cjs"), str(SDK)],
        input=json.dumps(jobs).encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture(scope="module")
def server() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def client() -> Identity:
    return Identity.generate()


REQUESTS: list[dict[str, Any]] = [
    {"url": "https://h.example/uhrp/abc", "method": "GET", "headers": {}, "body": None},
    {
        "url": "https://h.example/lookup",
        "method": "POST",
        "headers": {"Content-Type": "application/json"},
        "body": None,
    },
    {
        "url": "https://h.example:8443/requestSyncResponse?x=1&y=%20z",
        "method": "POST",
        "headers": {
            "content-type": "application/json; charset=utf-8",
            "X-BSV-Topic": "tm_demo",
            "x-bsv-payment": '{"derivationPrefix":"p"}',
            "Authorization": "Bearer t",
            "x-bsv-a_b": "1",
            "x-bsv-a-b": "2",
            "x-bsv-a.b": "3",
            "x-bsv-a0": "4",
        },
        "body": '{"version":1,"since":0}',
    },
    {"url": "https://h.example/submit", "method": "DELETE", "headers": {"content-type": "text/plain"}, "body": None},
    {
        "url": "https://h.example/caf%C3%A9/é",
        "method": "PUT",
        "headers": {"content-type": "text/plain"},
        "body": "é" * 300,
    },
]


def _ours_request(req: dict[str, Any], request_id: bytes) -> bytes:
    from urllib.parse import urlsplit

    import httpx

    url = httpx.URL(req["url"])
    body = req["body"]
    method = req["method"]
    if body is None and method in ("POST", "PUT", "PATCH", "DELETE"):
        is_json = any(k.lower() == "content-type" and "application/json" in v for k, v in req["headers"].items())
        body = "{}" if is_json else ""
    path = url.raw_path.split(b"?", 1)[0].decode()
    assert urlsplit(req["url"]).scheme == "https"
    search = "?" + url.query.decode() if url.query else ""
    headers = ha.signed_request_headers(req["headers"].items())
    return ha.request_payload(request_id, method, path, search, headers, (body or "").encode())


def _head_with_a_short_key(client: Identity, server: Identity) -> str:
    """A printable nonce head (hex) whose HMAC key, ``client``'s for ``server``, begins with a zero byte: the SDK
    hands its HMAC the key's minimal bytes (one in 256 keys is shorter than 32), as ``brc42.create_hmac`` must."""
    for n in range(100_000):
        head = f"{n:016x}".encode()
        key = brc42.derive_symmetric_key(client, ha.NONCE_PROTOCOL, head.decode("latin-1"), server.public_key_hex)
        if key[0] == 0:
            return head.hex()
    raise AssertionError("no key with a leading zero byte in 100,000 heads")


def test_payloads_signatures_and_nonces_match_the_sdk(server: Identity, client: Identity) -> None:
    request_ids = [os.urandom(32) for _ in REQUESTS]
    responses: list[dict[str, Any]] = [
        {"status": 200, "body": "68656c6c6f", "headers": {}},
        {
            "status": 402,
            "body": "7b7d",
            "headers": {"x-bsv-payment-version": "1.0", "x-bsv-payment-satoshis-required": "5"},
        },
        {"status": 204, "body": None, "headers": {"authorization": "x", "x-bsv-z": "1", "x-bsv-a_b": "2"}},
        {"status": 200, "body": "", "headers": {"x-bsv-payment-satoshis-paid": "5", "content-type": "text/plain"}},
    ]
    rid = os.urandom(32)
    for r in responses:
        r["headers"] |= {
            "x-bsv-auth-version": "0.1",
            "x-bsv-auth-identity-key": server.public_key_hex,
            "x-bsv-auth-signature": "3006020101020101",
            "x-bsv-auth-request-id": base64.b64encode(rid).decode(),
        }
    ascii_heads = [os.urandom(16).hex()[:16].encode().hex() for _ in range(3)]  # printable ASCII heads
    ascii_heads.append(_head_with_a_short_key(client, server))
    ours = [
        ha.create_nonce(client, head=bytes.fromhex(ascii_heads[0])),
        ha.create_nonce(client, head=bytes.fromhex(ascii_heads[1]), counterparty=server.public_key_hex),
        ha.create_nonce(server, head=bytes.fromhex(ascii_heads[2])),  # another key's: must not verify
        ha.create_nonce(client, head=bytes.fromhex(ascii_heads[3]), counterparty=server.public_key_hex),
    ]
    sig_jobs = []
    for data, key_id in ((b"payload", "n1 n2"), (os.urandom(500), "a" * 44 + " " + "b" * 64)):
        theirs = brc42.create_signature(
            server, data, protocol=ha.SIGNATURE_PROTOCOL, key_id=key_id, counterparty=client.public_key_hex
        )
        sig_jobs.append(
            {"data": data.hex(), "keyID": key_id, "counterparty": server.public_key_hex, "theirs": theirs.hex()}
        )
    out = sdk(
        {
            "key": client.private_bytes.hex(),
            "peer": server.public_key_hex,
            "requests": [{**r, "requestId": i.hex()} for r, i in zip(REQUESTS, request_ids, strict=True)],
            "responses": responses,
            "nonces": [
                {"head": ascii_heads[0], "counterparty": "self", "ours": ours[0]},
                {"head": ascii_heads[1], "counterparty": server.public_key_hex, "ours": ours[1]},
                {"head": ascii_heads[2], "counterparty": "self", "ours": ours[2]},
                {"head": ascii_heads[3], "counterparty": server.public_key_hex, "ours": ours[3]},
            ],
            "signatures": sig_jobs,
        }
    )
    # request payloads: byte for byte what AuthFetch signs
    for req, request_id, theirs in zip(REQUESTS, request_ids, out["requests"], strict=True):
        assert _ours_request(req, request_id).hex() == theirs, req
    # response payloads: what AuthFetch verifies (an empty body is length 0, not -1)
    for resp, theirs in zip(responses, out["responses"], strict=True):
        body = bytes.fromhex(resp["body"] or "")
        signed = ha.signed_response_headers(resp["headers"].items())
        assert ha.response_payload(rid, resp["status"], signed, body).hex() == theirs, resp
    # nonces: the same HMAC as the SDK's createNonce, and the SDK's verifyNonce takes ours (for the right key)
    assert [n["sdk"] for n in out["nonces"]] == [ours[0], ours[1], out["nonces"][2]["sdk"], ours[3]]
    assert [n["verifies"] for n in out["nonces"]] == [True, True, False, True]
    assert len(out["sdkNonce"]) == 64
    assert "=" not in out["sdkNonce"]
    # signatures: theirs verify with us, ours with them
    for job, theirs in zip(sig_jobs, out["signatures"], strict=True):
        assert brc42.verify_signature(
            server,
            bytes.fromhex(job["data"]),
            bytes.fromhex(theirs),
            protocol=ha.SIGNATURE_PROTOCOL,
            key_id=job["keyID"],
            counterparty=client.public_key_hex,
        )
    assert out["verified"] == [True, True]


def test_header_order_is_locale_compare() -> None:
    names = ["x-bsv-ab", "x-bsv-a0", "x-bsv-a$", "x-bsv-a~", "x-bsv-a.b", "x-bsv-a-b", "x-bsv-a_b", "authorization"]
    # node -e 'console.log(names.sort((a,b)=>a.localeCompare(b)))'
    expected = ["authorization", "x-bsv-a_b", "x-bsv-a-b", "x-bsv-a.b", "x-bsv-a~", "x-bsv-a$", "x-bsv-a0", "x-bsv-ab"]
    assert sorted(names, key=ha.header_sort_key) == expected


def test_signed_headers_filter_and_normalise() -> None:
    got = ha.signed_request_headers(
        [
            ("Content-Type", "application/json; charset=utf-8"),
            ("content-type", "text/plain"),
            ("X-BSV-Auth-Nonce", "n"),
            ("x-bsv-topic", "a"),
            ("X-Bsv-Topic", "b"),
            ("Accept", "*/*"),
            ("authorization", "one"),
            ("Authorization", "two"),
        ]
    )
    assert dict(got) == {"content-type": "application/json", "x-bsv-topic": "a, b", "authorization": "one"}
    response = ha.signed_response_headers(
        [("Content-Type", "x"), ("x-bsv-auth-nonce", "n"), ("X-BSV-Payment-Satoshis-Paid", "5")]
    )
    assert response == [("x-bsv-payment-satoshis-paid", "5")]


def test_nonces(server: Identity, client: Identity) -> None:
    nonce = ha.create_nonce(server)
    assert len(nonce) == 64
    assert "=" not in nonce
    assert len(base64.b64decode(nonce)) == ha.NONCE_BYTES
    assert ha.verify_nonce(server, nonce) == base64.b64decode(nonce)[:16]
    assert ha.verify_nonce(client, nonce) is None  # only its creator verifies it
    assert ha.verify_nonce(server, nonce, counterparty=client.public_key_hex) is None  # bound to its counterparty
    tampered = nonce[:10] + ("A" if nonce[10] != "A" else "B") + nonce[11:]
    for bad in (tampered, nonce[:-1], nonce + "=", 7, None, "!" * 64, ha.create_nonce(server) + "AAAA"):
        assert ha.verify_nonce(server, bad) is None


# -- the server -----------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0


def _handshake(auth: ha.AuthServer, client: Identity, now: float) -> ha.ClientSession:
    nonce = ha.create_nonce(client)
    answer, headers = auth.handle_message(json.dumps(ha.initial_request(client, nonce)).encode(), now)
    assert dict(headers)["x-bsv-auth-your-nonce"] == nonce
    return ha.check_initial_response(client, nonce, answer)


def _request(
    auth: ha.AuthServer, client: Identity, session: ha.ClientSession, now: float, **overrides: Any
) -> tuple[ha.Verified, bytes]:
    method, path, search = overrides.pop("method", "POST"), overrides.pop("path", "/x"), overrides.pop("search", "")
    headers = overrides.pop("headers", [("content-type", "application/json"), ("x-bsv-topic", "t")])
    body = overrides.pop("body", b'{"a":1}')
    request_id, auth_headers = ha.sign_request(
        client, session, method=method, path=path, search=search, headers=headers, body=body
    )
    sent = dict(auth_headers) | overrides.pop("replace", {})
    verified = auth.verify_request(
        sent,
        method=overrides.pop("as_method", method),
        path=overrides.pop("as_path", path),
        search=overrides.pop("as_search", search),
        signed_headers=ha.signed_request_headers(overrides.pop("as_headers", headers)),
        body=overrides.pop("as_body", body),
        now=now,
    )
    return verified, request_id


def test_handshake_request_and_signed_answer(server: Identity, client: Identity) -> None:
    auth = ha.AuthServer(server, max_sessions=10, session_ttl=60, max_seen=100)
    session = _handshake(auth, client, 0.0)
    assert session.server_key == server.public_key_hex
    assert len(auth.sessions) == 1
    verified, request_id = _request(auth, client, session, 1.0)
    assert verified.identity_key == client.public_key_hex
    assert verified.request_id == request_id
    headers = [("x-bsv-payment-satoshis-paid", "5"), ("content-type", "application/json")]
    signature = auth.sign_response(verified, 200, headers, b"body")
    ha.verify_response(client, session, request_id, 200, [*headers, *signature], b"body")
    # any change to what is signed is caught
    for status, hdrs, body in ((201, headers, b"body"), (200, headers[1:], b"body"), (200, headers, b"bodY")):
        with pytest.raises(RemoteProtocolError) as info:
            ha.verify_response(client, session, request_id, status, [*hdrs, *signature], body)
        assert info.value.reason == "bad_signature"
    with pytest.raises(RemoteProtocolError, match="another request"):
        ha.verify_response(client, session, os.urandom(32), 200, [*headers, *signature], b"body")
    with pytest.raises(RemoteProtocolError) as info:
        ha.verify_response(client, session, request_id, 401, [("content-type", "application/json")], b"{}")
    assert info.value.reason == "unauthenticated"
    # an empty body: signed as length 0 (AuthFetch), and the reference's -1 is accepted by our client too
    empty_sig = auth.sign_response(verified, 204, [], b"")
    ha.verify_response(client, session, request_id, 204, empty_sig, b"")
    nonce = "bm9uY2U="
    reference = brc42.create_signature(
        server,
        ha.response_payload(request_id, 204, [], b"", empty_as_minus_one=True),
        protocol=ha.SIGNATURE_PROTOCOL,
        key_id=f"{nonce} {session.nonce}",
        counterparty=client.public_key_hex,
    )
    ref_headers = dict(empty_sig) | {"x-bsv-auth-nonce": nonce, "x-bsv-auth-signature": reference.hex()}
    ha.verify_response(client, session, request_id, 204, ref_headers, b"")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"as_body": b'{"a":2}'}, "bad_signature"),
        ({"as_body": b'{"a": 1}'}, "bad_signature"),  # the raw bytes count, not the JSON value
        ({"as_path": "/y"}, "bad_signature"),
        ({"as_search": "?q=1"}, "bad_signature"),
        ({"as_method": "PUT"}, "bad_signature"),
        ({"as_headers": [("content-type", "application/json"), ("x-bsv-topic", "u")]}, "bad_signature"),
        ({"as_headers": [("content-type", "application/json")]}, "bad_signature"),
        ({"replace": {"x-bsv-auth-signature": "3006020101020101"}}, "bad_signature"),
        ({"replace": {"x-bsv-auth-signature": "zz"}}, "bad_headers"),
        ({"replace": {"x-bsv-auth-nonce": "b3RoZXI="}}, "bad_signature"),
        ({"replace": {"x-bsv-auth-your-nonce": "bm9wZQ=="}}, "no_session"),
        ({"replace": {"x-bsv-auth-request-id": "c2hvcnQ="}}, "bad_headers"),
        ({"replace": {"x-bsv-auth-version": "1.0"}}, "bad_version"),
        ({"replace": {"x-bsv-auth-identity-key": "02" + "11" * 32}}, "bad_headers"),
    ],
)
def test_every_refusal(server: Identity, client: Identity, overrides: dict[str, Any], reason: str) -> None:
    auth = ha.AuthServer(server, max_sessions=10, session_ttl=60, max_seen=100)
    session = _handshake(auth, client, 0.0)
    with pytest.raises(RemoteProtocolError) as info:
        _request(auth, client, session, 1.0, **overrides)
    assert info.value.reason == reason
    # a refused request proves nothing and is not remembered: the same session still works
    _request(auth, client, session, 2.0)


def test_wrong_identity_and_replays(server: Identity, client: Identity) -> None:
    auth = ha.AuthServer(server, max_sessions=10, session_ttl=60, max_seen=100)
    session = _handshake(auth, client, 0.0)
    # another key claiming the client's session (it does not hold the client's key)
    mallory = Identity.generate()
    with pytest.raises(RemoteProtocolError) as info:
        _request(auth, mallory, session, 1.0, replace={"x-bsv-auth-identity-key": client.public_key_hex})
    assert info.value.reason == "bad_signature"
    with pytest.raises(RemoteProtocolError) as info:
        _request(auth, mallory, session, 1.0)  # its own key on another's session
    assert info.value.reason == "identity_mismatch"
    # the same signed request twice: the second is a replay
    request_id, headers = ha.sign_request(client, session, method="GET", path="/a", search="", headers=[], body=b"")

    def send() -> ha.Verified:
        return auth.verify_request(
            dict(headers), method="GET", path="/a", search="", signed_headers=[], body=b"", now=2.0
        )

    assert send().request_id == request_id
    with pytest.raises(RemoteProtocolError) as info:
        send()
    assert info.value.reason == "replay"


def test_session_table_bounds_expiry_and_replay_horizon() -> None:
    table = ha.SessionTable(max_sessions=3, ttl=10.0, max_seen=4)

    def session(name: str, now: float) -> ha.AuthSession:
        s = ha.AuthSession(nonce=name, peer_nonce="p" + name, peer_key="k", created=now, last_used=now)
        table.add(s, now)
        return s

    a = session("a", 0)
    session("b", 1)
    assert table.accept(a, b"r1", 2)
    assert not table.accept(a, b"r1", 2)  # replay
    session("c", 3)
    session("d", 4)  # full: the oldest unproven (b) goes, not the proven a
    assert "a" in table
    assert "b" not in table
    assert len(table) == 3
    session("e", 5)
    session("f", 6)  # c and d go; a stays while any unproven session can go
    assert "a" in table
    assert table.evicted == 3
    assert table.get("a", 11.5) is a  # last used at 2: idle 9.5 s, alive (and used again now)
    assert table.get("a", 21.6) is None  # idle 10.1 s: gone
    assert table.expired == 1
    # the replay set is bounded; forgetting a request id retires its session
    g = session("g", 100)
    for i in range(4):
        assert table.accept(g, f"g{i}".encode(), 101)
    h = session("h", 102)
    assert table.accept(h, b"h0", 103)  # g0 is forgotten: g is retired
    assert table.get("g", 104) is None
    assert table.retired == 1
    assert table.get("h", 104) is h


def test_session_table_new_sessions_displace_proven_ones_when_all_are_proven() -> None:
    table = ha.SessionTable(max_sessions=2, ttl=100.0, max_seen=100)
    sessions = [ha.AuthSession(nonce=n, peer_nonce="", peer_key="k", created=0, last_used=0) for n in "ab"]
    for i, s in enumerate(sessions):
        table.add(s, i)
        table.accept(s, s.nonce.encode(), i)
    newcomer = ha.AuthSession(nonce="c", peer_nonce="", peer_key="k", created=5, last_used=5)
    table.add(newcomer, 5)
    assert "c" in table
    assert "a" not in table
    assert "b" in table


def test_handshake_refusals(server: Identity, client: Identity) -> None:
    auth = ha.AuthServer(server, max_sessions=10, session_ttl=60, max_seen=100)
    good = ha.initial_request(client, ha.create_nonce(client))
    for body, reason in (
        (b"not json", "bad_handshake"),
        (b"[]", "bad_handshake"),
        (json.dumps({**good, "version": "1.0"}).encode(), "bad_version"),
        (json.dumps({**good, "messageType": "general"}).encode(), "bad_handshake"),
        (json.dumps({**good, "initialNonce": ""}).encode(), "bad_handshake"),
        (json.dumps({**good, "initialNonce": "%%%"}).encode(), "bad_nonce"),
        (json.dumps({**good, "identityKey": "02" + "00" * 32}).encode(), "bad_identity_key"),
    ):
        with pytest.raises(RemoteProtocolError) as info:
            auth.handle_message(body, 0)
        assert info.value.reason == reason, body
    assert len(auth.sessions) == 0
    # the client's checks of the answer
    nonce = good["initialNonce"]
    answer, _ = auth.handle_message(json.dumps(good).encode(), 0)
    for bad, reason in (
        ({**answer, "yourNonce": ha.create_nonce(client)}, "nonce_mismatch"),
        ({**answer, "signature": [1, 2, 3]}, "bad_signature"),
        ({**answer, "identityKey": Identity.generate().public_key_hex}, "bad_signature"),
        ({**answer, "version": "0.2"}, "bad_version"),
    ):
        with pytest.raises(RemoteProtocolError) as info:
            ha.check_initial_response(client, nonce, bad)
        assert info.value.reason == reason


# -- BRC-105 ----------------------------------------------------------------------------------------------------


def test_prefixes_are_bound_to_payer_and_time(server: Identity, client: Identity) -> None:
    payer = client.public_key_hex
    prefix = hp.issue_prefix(server, payer, 1_000_000)
    assert len(prefix) == 64
    assert hp.check_prefix(server, payer, prefix, 1_000_500, 300_000) == 1_000_000
    with pytest.raises(InvalidDerivationPrefix, match="expired"):
        hp.check_prefix(server, payer, prefix, 1_300_000, 300_000)
    with pytest.raises(InvalidDerivationPrefix, match="not issued"):
        hp.check_prefix(server, Identity.generate().public_key_hex, prefix, 1_000_500, 300_000)
    with pytest.raises(InvalidDerivationPrefix, match="not issued"):
        hp.check_prefix(Identity.generate(), payer, prefix, 1_000_500, 300_000)
    with pytest.raises(InvalidDerivationPrefix, match="not issued"):
        hp.check_prefix(server, payer, ha.create_nonce(server), 1_000_500, 300_000)  # a session nonce is not one
    assert hp.payment_quote_id(prefix) == hp.payment_quote_id(prefix) != hp.payment_quote_id(prefix[::-1])


def test_payment_header_parsing() -> None:
    tx = os.urandom(300)
    good = hp.payment_header("p" * 64, "s" * 12, tx)
    assert hp.parse_payment_header(good, max_bytes=1000) == hp.HttpPayment("p" * 64, "s" * 12, tx)
    seen: list[str] = []
    hp.parse_payment_header(good, max_bytes=1000, check=seen.append)
    assert seen == ["p" * 64]
    for text, error in (
        ("{", MalformedPayment),
        ("[]", MalformedPayment),
        (json.dumps({"derivationSuffix": "ssss", "transaction": "AA=="}), InvalidDerivationPrefix),
        (json.dumps({"derivationPrefix": "p", "derivationSuffix": "s", "transaction": "AA=="}), MalformedPayment),
        (json.dumps({"derivationPrefix": "p", "derivationSuffix": "ssss", "transaction": "%%"}), MalformedPayment),
        (json.dumps({"derivationPrefix": "p", "derivationSuffix": "ssss"}), MalformedPayment),
        (hp.payment_header("p", "ssss", os.urandom(2000)), MalformedPayment),
    ):
        with pytest.raises(error):
            hp.parse_payment_header(text, max_bytes=1000)
    # the prefix is checked before the rest, as the reference does
    with pytest.raises(InvalidDerivationPrefix):
        hp.parse_payment_header(
            json.dumps({"derivationPrefix": "p", "derivationSuffix": "s"}),
            max_bytes=1000,
            check=lambda _: (_ for _ in ()).throw(InvalidDerivationPrefix("no")),
        )


def test_refusal_codes_and_402_parsing() -> None:
    assert hp.refusal(MalformedPayment("x"))["code"] == "ERR_MALFORMED_PAYMENT"
    assert hp.refusal(InvalidDerivationPrefix("x"))["code"] == "ERR_INVALID_DERIVATION_PREFIX"
    assert hp.refusal(PaymentReplayed("x"))["code"] == "ERR_INVALID_DERIVATION_PREFIX"
    from overlay_node.errors import InsufficientPayment, InvalidPayment

    assert hp.refusal(InsufficientPayment("x")) == {"status": "error", "code": "ERR_PAYMENT_FAILED", "description": "x"}
    assert hp.refusal(InvalidPayment("y"))["code"] == "ERR_PAYMENT_FAILED"
    assert hp.required_body(7)["satoshisRequired"] == 7
    prefix = "a" * 64
    good = {
        "x-bsv-payment-version": "1.0",
        "x-bsv-payment-satoshis-required": "7",
        "x-bsv-payment-derivation-prefix": prefix,
    }
    assert hp.parse_payment_required(good) == hp.PaymentRequest(7, prefix)
    for bad in (
        good | {"x-bsv-payment-version": "2.0"},
        good | {"x-bsv-payment-satoshis-required": "0"},
        good | {"x-bsv-payment-satoshis-required": "-3"},
        {k: v for k, v in good.items() if k != "x-bsv-payment-derivation-prefix"},
    ):
        with pytest.raises(RemoteProtocolError):
            hp.parse_payment_required(bad)


# -- a value that only matches with a trailing line break (``$`` matches before a final "\n") -----------------


def test_a_signature_with_a_trailing_newline_is_refused(server: Identity, client: Identity) -> None:
    auth = ha.AuthServer(server, max_sessions=10, session_ttl=60, max_seen=100)
    session = _handshake(auth, client, 0.0)
    request_id, headers = ha.sign_request(client, session, method="GET", path="/a", search="", headers=[], body=b"")
    sent = dict(headers)

    def send(auth_headers: dict[str, str]) -> ha.Verified:
        return auth.verify_request(
            auth_headers, method="GET", path="/a", search="", signed_headers=[], body=b"", now=1.0
        )

    with pytest.raises(RemoteProtocolError, match="x-bsv-auth-signature must be a hex DER signature") as info:
        send(sent | {"x-bsv-auth-signature": sent["x-bsv-auth-signature"] + "\n"})
    assert info.value.reason == "bad_headers"
    verified = send(sent)  # the exact signature still passes (and the refused request was not remembered)
    assert verified.request_id == request_id
    # the client's check of the server's signed answer
    answer = dict(auth.sign_response(verified, 200, [], b"ok"))
    newline = answer | {"x-bsv-auth-signature": answer["x-bsv-auth-signature"] + "\n"}
    with pytest.raises(RemoteProtocolError, match="signature is not hex") as info:
        ha.verify_response(client, session, request_id, 200, newline, b"ok")
    assert info.value.reason == "bad_signature"
    ha.verify_response(client, session, request_id, 200, answer, b"ok")


def test_a_handshake_nonce_with_a_trailing_newline_is_refused(server: Identity, client: Identity) -> None:
    auth = ha.AuthServer(server, max_sessions=10, session_ttl=60, max_seen=100)
    good = ha.initial_request(client, ha.create_nonce(client))
    newline = {**good, "initialNonce": good["initialNonce"] + "\n"}
    with pytest.raises(RemoteProtocolError, match="initialNonce must be base64 text of 1-256 characters") as info:
        auth.handle_message(json.dumps(newline).encode(), 0)
    assert info.value.reason == "bad_nonce"
    assert len(auth.sessions) == 0
    # the client's check of the server's answer
    answer, _ = auth.handle_message(json.dumps(good).encode(), 0)
    bad = {**answer, "initialNonce": answer["initialNonce"] + "\n"}
    with pytest.raises(RemoteProtocolError, match="initialNonce must be base64 text of 1-256 characters") as info:
        ha.check_initial_response(client, good["initialNonce"], bad)
    assert info.value.reason == "bad_nonce"
    assert ha.check_initial_response(client, good["initialNonce"], answer).server_key == server.public_key_hex


@pytest.mark.parametrize("text", ["c3VmZml4\n", "Pr==\n"])
def test_a_payment_suffix_or_prefix_with_a_trailing_newline_is_refused(text: str) -> None:
    tx = os.urandom(30)
    header = hp.payment_header("p" * 64, text, tx)
    with pytest.raises(MalformedPayment, match="derivationSuffix must be 4-64 base64 characters"):
        hp.parse_payment_header(header, max_bytes=1000)
    assert hp.parse_payment_header(hp.payment_header("p" * 64, text.strip(), tx), max_bytes=1000).suffix == text.strip()
    required = {
        "x-bsv-payment-version": "1.0",
        "x-bsv-payment-satoshis-required": "7",
        "x-bsv-payment-derivation-prefix": text,
    }
    with pytest.raises(RemoteProtocolError, match="malformed x-bsv-payment-derivation-prefix") as info:
        hp.parse_payment_required(required)
    assert info.value.reason == "bad_payment_request"
    fixed = required | {"x-bsv-payment-derivation-prefix": text.strip()}
    assert hp.parse_payment_required(fixed) == hp.PaymentRequest(7, text.strip())
