"""BRC-104 and BRC-105 on the public http port between real nodes over https, with a shared devnet:

- the official AuthFetch (``@bsv/sdk``, run by node with a ProtoWallet) completes the handshake and calls
  authenticated routes (free content, the GASP route that requires authentication, a lookup); its first request
  sent again, with its signature altered, or under another identity is refused (401, the reference's body) and
  serves nothing; unauthenticated requests to routes that need authentication get the reference's 401, and
  unauthenticated answers carry no ``x-bsv-*`` header;
- AuthFetch's own 402 handling pays priced content from a ProtoWallet given ``createAction`` (one coin);
- our client (``services/auth_fetch.py``): unpaid -> 402 with the BRC-105 headers; paid -> the bytes, once per
  payment; underpaid, replayed, wrong-key, malformed, foreign-prefix and double-spent payments refused with the
  reference's codes and no balance change;
- ``ctl access`` of a gateway URL, and of a UHRP hash whose producer cannot be linked, buys over HTTP; ``ctl status``
  and ``/metrics`` show sessions, requests, refusals and payments.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from overlay_node.chain.formats import BeefEntry, atomic_beef, merge_entries, parse_submission
from overlay_node.crypto.brc29 import payer_locking_script
from overlay_node.crypto.uhrp import url_for_hash
from overlay_node.errors import DialError, PaymentError, RemoteProtocolError
from overlay_node.node import Node
from overlay_node.protocol.http_auth import create_nonce
from overlay_node.protocol.http_payment import PaymentRequest, payment_header, payment_quote_id
from overlay_node.services.auth_fetch import AuthResponse, AuthTransport
from overlay_node.services.content_common import ContentMeta
from overlay_node.services.wallet_build import build_transaction
from overlay_node.store.wallet import HistoryRecord
from tests.conftest import NodeFactory

from .overlay_fixtures import Spender, proven_beef
from .test_cli import cli
from .test_overlay_tokens import ca, client, tls_node
from .test_payments import DevnetFactory, start_devnet

__all__ = ["ca", "start_devnet"]  # fixtures, imported to be used here

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / ".tools" / "node_modules" / "@bsv" / "sdk"
LIMIT = 120
PRICE = 50
GASP_AUTH = {"auth.require": ["/requestSyncResponse", "/requestForeignGASPNode"]}
UNAUTHORIZED = {"status": "error", "code": "UNAUTHORIZED", "message": "Mutual-authentication failed!"}


async def run_auth_fetch(request: dict[str, Any], ca_file: Path) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not SDK.is_dir():
        pytest.fail("@bsv/sdk or node missing: run `make tools` (npm install --prefix .tools @bsv/sdk)")
    proc = await trio.run_process(
        [node, str(ROOT / "tests/integration/js/auth_clients.cjs"), str(SDK)],
        stdin=json.dumps(request).encode(),
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(ca_file)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


async def publish(node: Node, tmp_path: Path, name: str, size: int, price: int = 0) -> tuple[str, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    item = await node.content.publish(path, meta=ContentMeta(price=price), replication=0)
    return item.hash, data


def no_bsv_headers(headers: Any) -> bool:
    return not [k for k in headers if k.lower().startswith("x-bsv")]


async def test_official_auth_fetch_and_refusals(
    start_node: NodeFactory, start_devnet: DevnetFactory, tmp_path: Path, ca: Any
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await tls_node(start_node, tmp_path, ca, "a", devnet.url, **GASP_AUTH)
        free, data = await publish(a, tmp_path, "free.bin", 3000)
        priced, _ = await publish(a, tmp_path, "priced.bin", 2000, PRICE)
        base = a.info.http
        key = os.urandom(32).hex()
        result = await run_auth_fetch(
            {
                "key": key,
                "calls": [
                    {"url": f"{base}/uhrp/{free}"},
                    {
                        "url": f"{base}/requestSyncResponse",
                        "method": "POST",
                        "headers": {"content-type": "application/json", "x-bsv-topic": "tm_ship"},
                        "body": json.dumps({"version": 1, "since": 0}),
                    },
                    {
                        "url": f"{base}/lookup",
                        "method": "POST",
                        "headers": {"content-type": "application/json"},
                        "body": json.dumps({"service": "ls_ship", "query": "findAll"}),
                    },
                    {"url": f"{base}/uhrp/{priced}"},  # 402, and this wallet cannot pay
                ],
                "replays": True,
            },
            ca.cert,
        )
        got_free, sync, lookup, unpaid = result["calls"]
        assert got_free["status"] == 200
        assert bytes.fromhex(got_free["bodyHex"]) == data
        assert got_free["headers"]["x-bsv-auth-identity-key"] == a.info.identity_key
        assert sync["status"] == 200
        assert json.loads(bytes.fromhex(sync["bodyHex"])) == {"UTXOList": [], "since": 0}
        assert lookup["status"] == 200
        assert json.loads(bytes.fromhex(lookup["bodyHex"]))["type"] == "output-list"
        assert "this wallet has no coin" in unpaid["error"], unpaid
        assert a.wallet.balance().satoshis == 0
        # the first authenticated request again as it was, altered, under another identity: 401 and nothing served
        for answer, reason in (
            (result["replayed"], "Replayed request"),
            (result["tampered"], "Invalid signature"),
            (result["otherIdentity"], "belongs to another identity"),
        ):
            assert answer["status"] == 401, answer
            body = json.loads(answer["body"])
            assert body["status"] == "error"
            assert body["code"] == "ERR_AUTH_FAILED"
            assert reason in body["description"]
            assert no_bsv_headers(answer["headers"])
        stats = a.http_auth.status()
        assert stats["refusals"] == {"replay": 1, "bad_signature": 1, "identity_mismatch": 1}
        assert stats["handshakes"] == 1
        assert stats["authenticated"] == 4
        assert stats["payment_required"] == 1

        # without authentication: the GASP routes and priced content need it (the reference's 401); free content,
        # /submit and /lookup are open; none of these answers carries an x-bsv-* header
        async with client(a, ca) as h:
            for path in ("/requestSyncResponse", "/requestForeignGASPNode"):
                r = await h.post(path, json={"version": 1, "since": 0}, headers={"X-BSV-Topic": "tm_ship"})
                assert r.status_code == 401
                assert r.json() == UNAUTHORIZED
                assert no_bsv_headers(r.headers)
            r = await h.get(f"/uhrp/{priced}")
            assert r.status_code == 401
            assert r.json() == UNAUTHORIZED
            assert no_bsv_headers(r.headers)
            r = await h.get(f"/uhrp/{free}")
            assert r.status_code == 200
            assert r.content == data
            assert no_bsv_headers(r.headers)
            r = await h.post("/lookup", json={"service": "ls_ship", "query": "findAll"})
            assert r.status_code == 200
            assert no_bsv_headers(r.headers)
            r = await h.post("/submit", content=b"x", headers={"X-Topics": '["tm_ship"]'})
            assert r.status_code == 400
            assert no_bsv_headers(r.headers)
            # a garbled handshake is refused and makes no session
            r = await h.post("/.well-known/auth", json={"version": "0.1", "messageType": "initialRequest"})
            assert r.status_code == 400
            assert r.json()["code"] == "ERR_AUTH_FAILED"
            metrics = (await h.get("/metrics")).text
        assert a.http_auth.status()["sessions"] == 1
        assert 'overlay_http_auth_handshakes_total{outcome="ok"} 1.0' in metrics
        assert 'overlay_http_auth_handshakes_total{outcome="refused"} 1.0' in metrics
        assert 'overlay_http_auth_refusals_total{reason="unauthenticated"} 3.0' in metrics
        assert 'overlay_http_auth_refusals_total{reason="replay"} 1.0' in metrics
        assert "overlay_http_auth_requests_total 4.0" in metrics
        assert 'overlay_http_payments_total{outcome="required"} 1.0' in metrics


async def test_official_auth_fetch_pays_a_402(
    start_node: NodeFactory, start_devnet: DevnetFactory, tmp_path: Path, ca: Any
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await tls_node(start_node, tmp_path, ca, "a", devnet.url)
        priced, data = await publish(a, tmp_path, "priced.bin", 2000, PRICE)
        payer = Spender()
        coin = await payer.fund(devnet.client, 5_000)
        await devnet.mine()
        beef = await proven_beef(devnet.client, coin)
        result = await run_auth_fetch(
            {
                "key": os.urandom(32).hex(),
                "coin": {"key": payer.identity.private_bytes.hex(), "beef": beef.hex(), "txid": coin.txid, "vout": 0},
                "calls": [{"url": f"{a.info.http}/uhrp/{priced}"}],
            },
            ca.cert,
        )
        (paid,) = result["calls"]
        assert paid["status"] == 200, paid
        assert bytes.fromhex(paid["bodyHex"]) == data
        assert paid["headers"]["x-bsv-payment-satoshis-paid"] == str(PRICE)
        assert a.wallet.balance().satoshis == PRICE
        (record,) = await a._store.payments.recent()  # type: ignore[union-attr]
        assert record.txid == result["paid"]["txid"]
        assert record.amount == PRICE
        assert a.http_auth.status()["payments_accepted"] == 1


async def _send_with(node: Node, url: str, header: str) -> AuthResponse:
    """A signed request for ``url`` carrying ``header`` as x-bsv-payment (no 402 handling)."""
    return await node.auth_fetch._exchange(httpx.URL(url), "GET", {"x-bsv-payment": header}, b"")


async def _prefix(node: Node, url: str) -> tuple[str, AuthResponse]:
    answer = await node.auth_fetch.fetch(url, pay=False)
    assert answer.status == 402
    return answer.headers["x-bsv-payment-derivation-prefix"], answer


def _code(answer: AuthResponse) -> tuple[int, str, str]:
    body = answer.json()
    return answer.status, body["code"], body["description"]


async def test_our_client_pays_once_per_payment_and_refusals_change_nothing(
    start_node: NodeFactory, start_devnet: DevnetFactory, tmp_path: Path, ca: Any
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await tls_node(start_node, tmp_path, ca, "a", devnet.url)
        b = await tls_node(start_node, tmp_path, ca, "b", devnet.url)
        await b.wallet.faucet(20_000)
        priced, data = await publish(a, tmp_path, "priced.bin", 2000, PRICE)
        url = f"{a.info.http}/uhrp/{priced}"
        payee = a.info.identity_key

        # unpaid: a signed 402 with the BRC-105 headers and the reference's body
        prefix, unpaid = await _prefix(b, url)
        assert unpaid.server_key == payee
        assert unpaid.headers["x-bsv-auth-identity-key"] == payee
        assert unpaid.headers["x-bsv-payment-version"] == "1.0"
        assert unpaid.headers["x-bsv-payment-satoshis-required"] == str(PRICE)
        assert len(prefix) == 64
        assert unpaid.json() == {
            "status": "error",
            "code": "ERR_PAYMENT_REQUIRED",
            "satoshisRequired": PRICE,
            "description": "A BSV payment is required to complete this request. Provide the X-BSV-Payment header.",
        }
        with pytest.raises(PaymentError, match="over the maximum 10"):
            await b.auth_fetch.fetch(url, max_price=10)
        assert a.wallet.balance().satoshis == 0
        assert b.wallet.balance().satoshis == 20_000

        # paid: the bytes, and each request pays again
        for n in (1, 2):
            paid = await b.auth_fetch.fetch(url, max_price=PRICE)
            assert paid.status == 200
            assert paid.body == data
            assert paid.paid_satoshis == PRICE
            assert paid.headers["x-bsv-payment-satoshis-paid"] == str(PRICE)
            assert a.wallet.balance().satoshis == n * PRICE
        payments = await a._store.payments.recent()  # type: ignore[union-attr]
        assert len(payments) == 2
        assert {p.payer for p in payments} == {b.info.identity_key}
        history = [h for h in await b.wallet.history() if h.kind == "payment"]
        assert len(history) == 2
        assert {h.counterparty for h in history} == {payee}

        # a payment made by hand (as pay_over_http does), kept to replay and double-spend below
        prefix, _ = await _prefix(b, url)
        suffix = create_nonce(b.wallet._identity)
        script = payer_locking_script(b.wallet._identity, payee, prefix, suffix)
        prepared = await b.wallet.prepare([(script, PRICE)], recipient=payee)
        await b.wallet.begin(
            prepared,
            HistoryRecord(
                txid=prepared.txid,
                direction="out",
                kind="payment",
                amount=PRICE,
                fee=prepared.fee,
                counterparty=payee,
                quote_id=payment_quote_id(prefix),
                resource=url,
            ),
        )
        accepted_header = payment_header(prefix, suffix, prepared.beef)
        answer = await _send_with(b, url, accepted_header)
        assert answer.status == 200
        assert answer.body == data
        b.wallet.sent(prepared, None)
        balances = (a.wallet.balance().satoshis, b.wallet.balance().satoshis)
        assert balances[0] == 3 * PRICE

        async def refused(header: str) -> tuple[int, str, str]:
            answer = await _send_with(b, url, header)
            assert answer.body != data
            assert "x-bsv-payment-satoshis-paid" not in answer.headers
            return _code(answer)

        async def made(prefix: str, suffix: str, amount: int, declared_suffix: str | None = None) -> str:
            script = payer_locking_script(b.wallet._identity, payee, prefix, suffix)
            prepared = await b.wallet.prepare([(script, amount)], recipient=payee)
            b.wallet.release(prepared)  # never committed: the coins stay ours whatever the answer
            return payment_header(prefix, declared_suffix or suffix, prepared.beef)

        # replayed: the accepted payment again, on a new signed request
        status, code, text = await refused(accepted_header)
        assert (status, code) == (400, "ERR_INVALID_DERIVATION_PREFIX")
        assert "paid for a request already" in text
        # underpaid
        prefix, _ = await _prefix(b, url)
        status, code, text = await refused(await made(prefix, create_nonce(b.wallet._identity), PRICE - 1))
        assert (status, code) == (400, "ERR_PAYMENT_FAILED")
        assert f"pays {PRICE - 1} satoshis" in text
        # to the wrong key: output 0 derived with another suffix than the one declared
        status, code, text = await refused(
            await made(prefix, create_nonce(b.wallet._identity), PRICE, create_nonce(b.wallet._identity))
        )
        assert (status, code) == (400, "ERR_PAYMENT_FAILED")
        assert "does not pay the key" in text
        # a prefix this node never issued (a nonce of the payer's own), and not JSON at all
        foreign = create_nonce(b.wallet._identity)
        status, code, _ = await refused(await made(foreign, create_nonce(b.wallet._identity), PRICE))
        assert (status, code) == (400, "ERR_INVALID_DERIVATION_PREFIX")
        assert (await refused("{not json"))[:2] == (400, "ERR_MALFORMED_PAYMENT")
        # double spent: another transaction spending the coin the accepted payment spent, to a fresh prefix
        prefix, _ = await _prefix(b, url)
        coin = prepared.spends[0]
        suffix = create_nonce(b.wallet._identity)
        script = payer_locking_script(b.wallet._identity, payee, prefix, suffix)
        fee = 200
        twin = build_transaction(
            [coin], [(script, PRICE), (coin.script, coin.satoshis - PRICE - fee)], b.wallet._private_key, fee=fee
        )
        ancestry = [e for e in merge_entries([parse_submission(prepared.beef)]) if e.txid != prepared.txid]
        twin_beef = atomic_beef(twin.txid, [*ancestry, BeefEntry(twin.txid, twin.raw)])
        status, code, text = await refused(payment_header(prefix, suffix, twin_beef))
        assert (status, code) == (400, "ERR_PAYMENT_FAILED")
        assert "double spend" in text

        # nothing changed hands, and the payee recorded nothing more
        assert (a.wallet.balance().satoshis, b.wallet.balance().satoshis) == balances
        assert len(await a._store.payments.recent()) == 3  # type: ignore[union-attr]
        stats = a.http_auth.status()
        assert stats["payments_accepted"] == 3
        assert stats["payments_refused"] == {
            "ERR_INVALID_DERIVATION_PREFIX": 2,
            "ERR_PAYMENT_FAILED": 3,
            "ERR_MALFORMED_PAYMENT": 1,
        }
        client_stats = b.status()["http_auth"]["client"]
        assert client_stats["paid"] == 2
        assert client_stats["satoshis_paid"] == 2 * PRICE

        # the payer's side of a refusal: pay_over_http releases the coins and raises the server's code
        prefix, _ = await _prefix(b, url)
        before = b.wallet.balance()

        async def lowball(header: str) -> AuthResponse:
            return await _send_with(b, url, header)

        with pytest.raises(PaymentError, match="ERR_PAYMENT_FAILED"):
            await b.payments.pay_over_http(payee, PaymentRequest(PRICE - 1, prefix), url, lowball)
        assert b.wallet.balance() == before
        assert a.wallet.balance().satoshis == 3 * PRICE


async def test_ctl_access_buys_over_http(
    start_node: NodeFactory, start_devnet: DevnetFactory, tmp_path: Path, ca: Any
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await tls_node(start_node, tmp_path, ca, "a", devnet.url, **{"content.repair_interval": 0})
        b = await tls_node(
            start_node,
            tmp_path,
            ca,
            "b",
            devnet.url,
            **{"dht.bootstrap": [a.info.dht], "content.repair_interval": 0},
        )
        await a.content._announce()
        await b.wallet.faucet(10_000)
        priced, data = await publish(a, tmp_path, "priced.bin", 4000, PRICE)
        url = f"{a.info.http}/uhrp/{priced}"
        data_dir = str(b.data_dir.path)

        # a gateway URL: fetched and paid over HTTP (no peer link is made)
        out = tmp_path / "got.bin"
        over = await cli("--data-dir", data_dir, "--json", "ctl", "access", url, "-o", str(out), "--max-price", "10")
        assert over.exit_code == 11, over.output
        assert a.wallet.balance().satoshis == 0
        done = await cli("--data-dir", data_dir, "--json", "ctl", "access", url, "-o", str(out), "--max-price", "60")
        assert done.exit_code == 0, done.output
        result = json.loads(done.stdout)
        assert result["via"] == "http"
        assert result["url"] == url
        assert result["paid"]["satoshis"] == PRICE
        assert out.read_bytes() == data
        assert a.wallet.balance().satoshis == PRICE
        assert b.peers.link(a.info.identity_key) is None

        # a UHRP URL whose producer cannot be linked: bought from the gateway its provider record names
        async def unreachable(identity_key: str, addresses: tuple[str, ...] = ()) -> Any:  # noqa: ARG001 -- replaces link_to: its signature
            raise DialError("no route to the producer (test)")

        b.content.link_to = unreachable  # type: ignore[method-assign]
        out2 = tmp_path / "got2.bin"
        uhrp = url_for_hash(bytes.fromhex(priced))
        done = await cli("--data-dir", data_dir, "--json", "ctl", "access", uhrp, "-o", str(out2))
        assert done.exit_code == 0, done.output
        result = json.loads(done.stdout)
        assert result["via"] == "http"
        assert result["url"] == url
        assert out2.read_bytes() == data
        assert hashlib.sha256(out2.read_bytes()).hexdigest() == priced
        assert a.wallet.balance().satoshis == 2 * PRICE

        # a gateway that does not speak BRC-104: free content is fetched plain (and checked against its hash)
        c = await tls_node(start_node, tmp_path, ca, "c", devnet.url, **{"auth.enabled": False})
        free, free_data = await publish(c, tmp_path, "free.bin", 1000)
        out3 = tmp_path / "got3.bin"
        done = await cli(
            "--data-dir", data_dir, "--json", "ctl", "access", f"{c.info.http}/uhrp/{free}", "-o", str(out3)
        )
        assert done.exit_code == 0, done.output
        assert out3.read_bytes() == free_data
        assert "paid" not in json.loads(done.stdout)

        # ctl status shows both sides
        status = await cli("--data-dir", data_dir, "ctl", "status")
        assert status.exit_code == 0, status.output
        assert "http payments" in status.stdout
        assert f"paid out 2 ({2 * PRICE} sat)" in status.stdout
        seller = await cli("--data-dir", str(a.data_dir.path), "--json", "ctl", "status")
        block = json.loads(seller.stdout)["http_auth"]
        assert block["payments_accepted"] == 2
        assert block["satoshis_received"] == 2 * PRICE


async def test_auth_transport_signs_only_where_asked(
    start_node: NodeFactory, start_devnet: DevnetFactory, tmp_path: Path, ca: Any
) -> None:
    """httpx over AuthTransport: plain to open routes, signed after a 401 (the GASP routes when ``auth.require`` lists
    them)."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await tls_node(start_node, tmp_path, ca, "a", devnet.url, **GASP_AUTH)
        b = await tls_node(start_node, tmp_path, ca, "b", devnet.url, **{"auth.require": []})
        async with client(b, ca) as plain:  # B leaves the GASP routes open, as the reference does
            r = await plain.post(
                "/requestSyncResponse", json={"version": 1, "since": 0}, headers={"X-BSV-Topic": "tm_ship"}
            )
            assert r.status_code == 200
            assert no_bsv_headers(r.headers)
        async with client(a, ca) as plain:  # A protects them (the default): a plain request is refused
            r = await plain.post(
                "/requestSyncResponse", json={"version": 1, "since": 0}, headers={"X-BSV-Topic": "tm_ship"}
            )
            assert r.status_code == 401
            assert no_bsv_headers(r.headers)
        async with httpx.AsyncClient(transport=AuthTransport(b.auth_fetch), base_url=a.info.http) as h:
            r = await h.post("/lookup", json={"service": "ls_ship", "query": "findAll"})
            assert r.status_code == 200
            assert no_bsv_headers(r.headers)
            assert a.http_auth.status()["handshakes"] == 0
            r = await h.post(
                "/requestSyncResponse", json={"version": 1, "since": 0}, headers={"X-BSV-Topic": "tm_ship"}
            )
            assert r.status_code == 200
            assert r.json() == {"UTXOList": [], "since": 0}
            assert r.headers["x-bsv-auth-identity-key"] == a.info.identity_key
            r = await h.post(
                "/requestSyncResponse", json={"version": 1, "since": 5}, headers={"X-BSV-Topic": "tm_ship"}
            )
            assert r.json()["since"] == 5
        stats = a.http_auth.status()
        assert stats["handshakes"] == 1
        assert stats["authenticated"] == 2
        assert stats["refusals"] == {"unauthenticated": 2}


async def test_lost_sessions_limits_and_head(start_node: NodeFactory, tmp_path: Path) -> None:
    """A client whose session the server dropped handshakes again by itself; HEAD answers are signed; a body over
    ``auth.max_body`` and an answer over ``auth.max_response`` are refused without reaching or leaving the route."""
    with trio.fail_after(LIMIT):
        a = await start_node("a", **{"auth.max_body": 1024, "auth.max_response": 2048, "auth.max_sessions": 2})
        b = await start_node("b")
        small, small_data = await publish(a, tmp_path, "small.bin", 1000)
        big, _ = await publish(a, tmp_path, "big.bin", 3000)
        base = a.info.http
        r = await b.auth_fetch.fetch(f"{base}/uhrp/{small}")
        assert r.status == 200
        assert r.body == small_data
        # the server forgets every session (a restart, an eviction): the next request is refused unsigned (401), the
        # client handshakes again and retries once
        for nonce in list(a.http_auth.server.sessions._fresh) + list(a.http_auth.server.sessions._proven):
            a.http_auth.server.sessions.remove(nonce)
        r = await b.auth_fetch.fetch(f"{base}/uhrp/{small}")
        assert r.status == 200
        assert r.body == small_data
        stats = a.http_auth.status()
        assert stats["handshakes"] == 2
        assert stats["refusals"] == {"no_session": 1}
        # HEAD: signed over the empty body, the entity's length kept
        r = await b.auth_fetch.fetch(f"{base}/uhrp/{small}", method="HEAD")
        assert r.status == 200
        assert r.body == b""
        assert r.headers["content-length"] == "1000"
        # limits
        with pytest.raises(RemoteProtocolError, match=r"HTTP 500 .*ERR_RESPONSE_SIGNING_FAILED"):
            await b.auth_fetch.fetch(f"{base}/uhrp/{big}")  # the reference does not sign that refusal either
        assert a.http_auth.status()["refusals"]["response_too_large"] == 1
        with pytest.raises(RemoteProtocolError, match=r"HTTP 413 .*ERR_BODY_TOO_LARGE"):
            await b.auth_fetch.fetch(
                f"{base}/lookup", method="POST", headers={"content-type": "application/json"}, body=b" " * 2000
            )
        assert a.http_auth.status()["refusals"]["body_too_large"] == 1
        # the session table stays within its bound whatever the number of clients
        for _ in range(4):
            c = await start_node(f"c{_}")
            r = await c.auth_fetch.fetch(f"{base}/uhrp/{small}")
            assert r.status == 200
        assert len(a.http_auth.server.sessions) <= 2


async def test_priced_lookups(start_node: NodeFactory, start_devnet: DevnetFactory) -> None:
    """``auth.lookup_price``: /lookup needs authentication and a BRC-105 payment per request; /submit stays open."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await start_node("a", **{"wallet.arc_url": devnet.url, "auth.lookup_price": 7})
        b = await start_node("b", **{"wallet.arc_url": devnet.url})
        await b.wallet.faucet(5_000)
        query = json.dumps({"service": "ls_ship", "query": "findAll"}).encode()
        async with httpx.AsyncClient(base_url=a.info.http) as h:
            r = await h.post("/lookup", content=query, headers={"content-type": "application/json"})
            assert r.status_code == 401
            assert r.json() == UNAUTHORIZED
            assert no_bsv_headers(r.headers)
            r = await h.post("/submit", content=b"x", headers={"X-Topics": '["tm_ship"]'})
            assert r.status_code == 400
            assert no_bsv_headers(r.headers)
        url = f"{a.info.http}/lookup"
        unpaid = await b.auth_fetch.fetch(
            url, method="POST", headers={"content-type": "application/json"}, body=query, pay=False
        )
        assert unpaid.status == 402
        assert unpaid.headers["x-bsv-payment-satoshis-required"] == "7"
        for n in (1, 2):
            paid = await b.auth_fetch.fetch(
                url, method="POST", headers={"content-type": "application/json"}, body=query
            )
            assert paid.status == 200
            assert paid.json()["type"] == "output-list"
            assert paid.paid_satoshis == 7
            assert a.wallet.balance().satoshis == 7 * n
        (latest, _) = await a._store.payments.recent()  # type: ignore[union-attr]
        assert latest.resource == "lookup"
        assert latest.price == 7


async def test_official_auth_fetch_handshakes_again_when_its_session_is_gone(
    start_node: NodeFactory, start_devnet: DevnetFactory, tmp_path: Path, ca: Any
) -> None:
    """With room for one session, a second client's handshake drops the first's; AuthFetch's next request gets the
    401 without auth headers, and AuthFetch handshakes again and gets its answer."""
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await tls_node(start_node, tmp_path, ca, "a", devnet.url, **{"auth.max_sessions": 1})
        free, data = await publish(a, tmp_path, "free.bin", 1500)
        url = f"{a.info.http}/uhrp/{free}"
        result = await run_auth_fetch(
            {"key": os.urandom(32).hex(), "calls": [{"url": url}, {"url": url, "as": "other"}, {"url": url}]}, ca.cert
        )
        assert [c.get("status") for c in result["calls"]] == [200, 200, 200], result["calls"]
        assert all(bytes.fromhex(c["bodyHex"]) == data for c in result["calls"])
        stats = a.http_auth.status()
        assert stats["handshakes"] == 3
        assert stats["refusals"] == {"no_session": 1}
        assert stats["sessions"] == 1
