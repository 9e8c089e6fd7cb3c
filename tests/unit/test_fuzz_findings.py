"""Inputs the fuzzer (``make fuzz``, tests/fuzz) found that made a reader raise something other than its documented
error; each is refused now with the error its callers expect."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
import trio
from starlette.requests import Request

from overlay_node.api import control_overlay, overlay
from overlay_node.api.common import parse_json, read_body
from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest, RemoteProtocolError
from overlay_node.net.udp import parse_host_port
from overlay_node.protocol.adverts import AdvertError, Endpoints, decode_advert, encode_advert, make_advert
from overlay_node.protocol.http_payment import H_PREFIX, H_REQUIRED, H_VERSION, parse_payment_required
from overlay_node.services.adverts import record_from_wire


def _advert_value(identity: Identity, **changes: object) -> bytes:
    advert = make_advert(
        identity, name="tm_fuzz", uri="https://overlay.example.com", endpoints=Endpoints(), expires=2_000_000_000
    )
    fields = cbor2.loads(encode_advert(advert))
    fields.update(changes)
    return bytes(cbor2.dumps(fields, canonical=True))


@pytest.mark.parametrize("bad_key", [b"", b"\x02", b"\x05" + bytes(32), b"\x02" + b"\xff" * 32])
def test_an_advert_naming_a_malformed_key_is_an_advert_error(bad_key: bytes) -> None:
    # discovery skips a bad advert by catching AdvertError: a BadRequest from formatting the malformed key in the
    # publisher-mismatch message failed the whole discovery instead
    publisher = Identity.generate()
    value = _advert_value(publisher, k=bad_key)
    with pytest.raises(AdvertError) as refused:
        decode_advert(value, publisher=publisher.public_key)
    assert refused.value.reason == "publisher_mismatch"


@pytest.mark.parametrize(
    "text",
    [b"NaN", b"[Infinity]", b'{"since": -Infinity}', b'{"since": 1e999}', b"[-1.5e400]", b'{"ttl": 1E+309}'],
)
def test_json_numbers_that_are_not_finite_are_refused(text: bytes) -> None:
    # a handler turning such a number into an integer or a time failed with OverflowError or ValueError (a 500 on
    # the public port for GASP's "since" and "limit")
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_json(text)


@pytest.mark.parametrize(
    "text",
    [
        b'{"name": "\\ud800"}',
        b'{"a\\udfffb": 1}',
        b'["x", ["\\udc00y"]]',
        b'"\\ud83d"',
        '{"n": "\ud800"}'.encode("utf-8", "surrogatepass"),
    ],
)
def test_json_strings_with_a_lone_surrogate_are_refused(text: bytes) -> None:
    # the control API hashed such a name into a DHT key, or named it in its error answer: UnicodeEncodeError, a 500
    with pytest.raises(BadRequest, match="lone UTF-16 surrogate"):
        parse_json(text)


def test_a_surrogate_pair_is_one_character_and_reads() -> None:
    assert parse_json(b'{"e": "\\ud83d\\ude00"}') == {"e": "\U0001f600"}


def test_large_finite_numbers_still_read() -> None:
    assert parse_json(b'{"a": 1e308, "b": -2.5e-300, "c": 123456789012345678901234567890}') == {
        "a": 1e308,
        "b": -2.5e-300,
        "c": 123456789012345678901234567890,
    }


@pytest.mark.parametrize(
    "fields",
    [
        [bytes(31), b"v", b"\x02" + bytes(32), 1, 2, b"sig"],  # a key of 31 bytes
        [bytes(32), b"v", b"\x05" + bytes(32), 1, 2, b"sig"],  # not a compressed key
        [bytes(32), b"v", b"\x02" + bytes(32), -1, 2, b"sig"],  # a negative seq
        [bytes(32), b"v" * 2000, b"\x02" + bytes(32), 1, 2, b"sig"],  # a value over the wire limit
        [bytes(32), b"v", b"\x02" + bytes(32), 1, 2, b""],  # no signature
    ],
)
def test_a_malformed_pushed_record_is_the_peers_protocol_error(fields: list[object]) -> None:
    # the record's own checks raise LocalProtocolError (our misuse); from a peer's advert.push it is the peer's
    with pytest.raises(RemoteProtocolError, match="pushed record is malformed") as refused:
        record_from_wire(fields)
    assert refused.value.reason == "malformed_advert"


@pytest.mark.parametrize("value", [2**53 + 1, 10**20, 1e300, 2**64])
def test_gasp_counts_beyond_what_the_store_compares_are_refused(value: float) -> None:
    # "since" or "limit" of 10**20 reached SQLite as an integer it cannot hold: OverflowError, a 500
    with pytest.raises(BadRequest, match="since must be a non-negative whole number"):
        overlay._count(value, "since")
    assert overlay._count(2**53, "since") == 2**53
    assert overlay._count(1.7e12, "since") == 1_700_000_000_000


# str.isdigit() takes these, int() does not (or not as a 32-bit output index)
UNICODE_DIGITS = ["\u00b2", "1\u00b2", "\u0661\u0662", "99999999999999999999"]


@pytest.mark.parametrize("vout", UNICODE_DIGITS)
def test_an_outpoint_with_other_digits_is_refused(vout: str) -> None:
    with pytest.raises(BadRequest, match=r"expected TXID\.VOUT"):
        control_overlay._outpoint("ab" * 32 + "." + vout)


@pytest.mark.parametrize("port", UNICODE_DIGITS[:3])
def test_an_address_with_other_digits_is_refused(port: str) -> None:
    with pytest.raises(BadRequest, match="expected host:port"):
        parse_host_port(f"127.0.0.1:{port}")


@pytest.mark.parametrize("price", UNICODE_DIGITS[:3])
def test_a_payment_request_with_other_digits_is_the_servers_protocol_error(price: str) -> None:
    headers = {H_VERSION: "1.0", H_REQUIRED: price, H_PREFIX: "cHJlZml4"}
    with pytest.raises(RemoteProtocolError, match="satoshis-required"):
        parse_payment_required(headers)


@pytest.mark.parametrize("declared", [b"\xb2", b"1\xb9"])
def test_a_content_length_with_other_digits_is_refused(declared: bytes) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", declared)]}

    async def read() -> bytes:
        return await read_body(Request(scope, receive), 1024)

    with pytest.raises(BadRequest, match="too large"):
        trio.run(read)


@pytest.mark.parametrize("header", ['["tm_ship\\ud800"]', '["\\udd80tm_ship"]', '["tm_ship", "\\ud83d"]'])
def test_topics_with_half_a_surrogate_pair_are_refused(header: str) -> None:
    # a JSON escape in x-topics made a topic name that is no text: the 400 answer naming it could not be written,
    # and /submit answered 500 (found on a live node by tests/fuzz/live.py)
    with pytest.raises(BadRequest, match="not valid UTF-8 text"):
        overlay.parse_topics(header)


def test_topics_beyond_ascii_still_read() -> None:
    assert overlay.parse_topics('["tm_caf\\u00e9", "tm_\\ud83d\\ude00"]') == ["tm_café", "tm_\U0001f600"]
    assert overlay.parse_topics("tm_ship, tm_slap") == ["tm_ship", "tm_slap"]
