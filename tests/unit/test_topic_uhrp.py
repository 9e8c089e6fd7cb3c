"""BRC-26 UHRP advertisement tokens, tm_uhrp and ls_uhrp (``topics/uhrp.py``), against the reference rules and
the official TypeScript SDK."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.crypto import pushdrop
from overlay_node.crypto.bump import varint_bytes
from overlay_node.crypto.keys import Identity
from overlay_node.crypto.scripts import p2pkh_for_key
from overlay_node.crypto.uhrp import url_for_hash
from overlay_node.errors import BadRequest
from overlay_node.topics.plugins import AdmittedOutput, FormulaItem, LookupService, PluginContext, TopicManager
from overlay_node.topics.uhrp import (
    FACTORIES,
    UHRP_PROTOCOL,
    UhrpLookupService,
    UhrpTopicManager,
    admissible,
    decode_uhrp_token,
    read_varint_num,
    uhrp_fields,
    uhrp_token,
)
from tests.unit.test_pushdrop import sdk_view
from tests.unit.test_topic_ship import MemoryIndex, tagged

HOST = Identity.from_private_bytes(bytes(31) + b"\x33")
OTHER = Identity.from_private_bytes(bytes(31) + b"\x44")
DIGEST = hashlib.sha256(b"hello world").digest()
URL = "https://cdn.example.com/files/hello.txt"
EXPIRY = 2_000_000_000
MANAGER = UhrpTopicManager()


def signed(fields: Sequence[bytes], identity: Identity = HOST) -> bytes:
    return pushdrop.lock(identity, fields, UHRP_PROTOCOL)


def fields(url: str = URL, expiry: bytes = varint_bytes(EXPIRY), size: bytes = b"\x0b") -> list[bytes]:
    return [HOST.public_key, DIGEST, url.encode(), expiry, size]


# -- tokens ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 15, 16, 17, 252, 253, 65536, 2**32, 2**53])
def test_token_round_trip(size: int) -> None:
    token = decode_uhrp_token(uhrp_token(HOST, DIGEST, URL, EXPIRY, size))
    assert (token.host_identity_key, token.content_hash, token.url) == (HOST.public_key, DIGEST, URL)
    assert (token.expiry, token.size) == (EXPIRY, size)
    assert token.uhrp_url == url_for_hash(DIGEST) == "XUUJPXCDnKd2iwUGSFTfTFyhQyxXjvg1ArF7byo58k7cyP5PYT6z"
    assert token.locking_key == pushdrop.token_locking_key(HOST, UHRP_PROTOCOL)
    assert token.is_linked()
    assert admissible(uhrp_token(HOST, DIGEST, URL, EXPIRY, size))


def test_builder_refuses_what_cannot_be_admitted() -> None:
    for digest, expiry, size, refusal in [
        (DIGEST[:31], EXPIRY, 1, "a UHRP content hash is 32 bytes, got 31"),
        (DIGEST, 0, 1, r"expiry must be 1\.\.2\*\*53, got 0"),
        (DIGEST, EXPIRY, 0, r"size must be 1\.\.2\*\*53, got 0"),
        (DIGEST, 1, 2**53 + 1, r"size must be 1\.\.2\*\*53, got 9007199254740993"),
    ]:
        with pytest.raises(ValueError, match=refusal):
            uhrp_token(HOST, digest, URL, expiry, size)


def test_varints_read_as_the_typescript_reader_reads_them() -> None:
    assert read_varint_num(b"\x05") == 5
    assert read_varint_num(b"\xfc\xff") == 252  # bytes after the VarInt are ignored
    assert read_varint_num(b"\xfd\x10\x00") == 16
    assert read_varint_num(b"\xfe\x00\x00\x00\x01") == 2**24
    assert read_varint_num(b"\xff" + (2**53).to_bytes(8, "little")) == 2**53
    assert read_varint_num(b"\xff" + b"\xff" * 8) == -1  # signed, as readVarIntNum() reads it
    for bad, refusal in [
        (b"", "no VarInt: empty field"),
        (b"\xfd\x01", "truncated VarInt"),
        (b"\xfe\x00\x00", "truncated VarInt"),
        (b"\xff" + (2**53 + 1).to_bytes(8, "little"), "VarInt too large"),
    ]:
        with pytest.raises(ValueError, match=refusal):
            read_varint_num(bad)


# -- admission -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(signed(fields()[:4]), id="4 fields + signature"),
        pytest.param(pushdrop.encode(pushdrop.token_locking_key(HOST, UHRP_PROTOCOL), fields()), id="no signature"),
        pytest.param(signed([*fields()[:1], DIGEST[:31], *fields()[2:]]), id="31-byte hash"),
        pytest.param(signed(fields(url="http://cdn.example.com/f")), id="http"),
        pytest.param(signed(fields(url="ftp://cdn.example.com/f")), id="ftp"),
        pytest.param(signed(fields(url="https://")), id="no host"),
        pytest.param(signed(fields(url="cdn.example.com/f")), id="no scheme"),
        pytest.param(signed(fields(expiry=b"\x00")), id="expiry 0"),
        pytest.param(signed(fields(size=b"\x00")), id="size 0"),
        pytest.param(signed(fields(size=b"\xff" + b"\xff" * 8)), id="negative size"),
        pytest.param(signed(fields(expiry=b"\xfe\x01")), id="truncated expiry"),
        pytest.param(signed([OTHER.public_key, *fields()[1:]]), id="another host's key"),
        pytest.param(signed(fields(), identity=OTHER), id="signed by another"),
        pytest.param(pushdrop.lock(HOST, fields(), (2, "service host interconnect")), id="SHIP protocol"),
        pytest.param(p2pkh_for_key(HOST.public_key), id="p2pkh"),
    ],
)
def test_admission_rules(script: bytes) -> None:
    assert not admissible(script)
    assert MANAGER.admissible_outputs(tagged(script), [0, 1]).as_json() == {"outputsToAdmit": [], "coinsToRetain": []}


_field = st.one_of(
    st.sampled_from([HOST.public_key, DIGEST, URL.encode(), b"\xff" * 9, b"\xfd", b"\x01"]), st.binary(max_size=40)
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.lists(_field, max_size=8).map(signed)))
def test_garbage_is_refused_without_raising(script: bytes) -> None:
    assert admissible(script) in (True, False)
    fields = SERVICE.index(_output(script, 0))
    assert fields is None or set(fields) == {"uhrpUrl", "hostIdentityKey", "expiryTime"}


def test_admits_and_retains_what_it_spends() -> None:
    good = uhrp_token(HOST, DIGEST, URL, EXPIRY, 11)
    assert admissible(signed(fields()))
    assert admissible(signed([*fields(), b"extra"]))  # more fields: the signature is still the last
    assert admissible(signed(fields(url=" HTTPS:cdn.example.com")))  # what new URL() makes of it
    tx = tagged(p2pkh_for_key(HOST.public_key), good, signed(fields(size=b"\x00")), good)
    assert MANAGER.admissible_outputs(tx, [1, 0]).as_json() == {"outputsToAdmit": [1, 3], "coinsToRetain": [1, 0]}
    assert MANAGER.needed_inputs(tx) == ()


def test_tampered_signature_and_foreign_locking_key_are_refused() -> None:
    decoded = pushdrop.decode(uhrp_token(HOST, DIGEST, URL, EXPIRY, 11))
    data, signature = list(decoded.fields[:5]), decoded.fields[5]
    assert admissible(pushdrop.encode(decoded.locking_key, [*data, signature]))
    assert not admissible(pushdrop.encode(decoded.locking_key, [*data, signature[:-1] + b"\x00"]))
    assert not admissible(pushdrop.encode(OTHER.public_key, [*data, signature]))
    assert not admissible(pushdrop.encode(HOST.public_key, [*data, signature]))
    assert not admissible(pushdrop.encode(decoded.locking_key, [*data[:4], b"\x0c", signature]))


def test_allow_http() -> None:
    script = uhrp_token(HOST, DIGEST, "http://127.0.0.1:8080/f", EXPIRY, 11)
    assert not admissible(script)
    assert admissible(script, allow_http=True)
    local = FACTORIES["tm_uhrp"](PluginContext(name="tm_uhrp", identity_key=HOST.public_key_hex, allow_http=True))
    assert isinstance(local, TopicManager)
    assert local.admissible_outputs(tagged(script), []).outputs_to_admit == (0,)


def test_factories_metadata_and_documentation() -> None:
    ctx = PluginContext(name="x", identity_key=HOST.public_key_hex)
    tm, ls = FACTORIES["tm_uhrp"](ctx), FACTORIES["ls_uhrp"](ctx)
    assert isinstance(tm, TopicManager)
    assert isinstance(ls, LookupService)
    assert tm.metadata().name == "Universal Hash Resolution Protocol"
    assert ls.metadata().name == "UHRP Lookup Service"
    assert tm.documentation().startswith("# tm_uhrp")
    assert ls.documentation().startswith("# ls_uhrp")
    assert ls.keeps_spent is False


# -- the official TypeScript SDK -----------------------------------------------------------------------------------


def test_typescript_sdk_reads_and_links_our_tokens() -> None:
    tokens = [uhrp_token(HOST, DIGEST, URL, EXPIRY, size) for size in (11, 16, 70_000)]
    linked = [{"script": t.hex(), "protocol": list(UHRP_PROTOCOL), "identityField": 0} for t in tokens]
    view = sdk_view({"decode": [t.hex() for t in tokens], "linked": linked})
    for script, theirs in zip(tokens, view["decode"], strict=True):
        ours = pushdrop.decode(script)
        assert theirs == {"key": ours.locking_key.hex(), "fields": [f.hex() for f in ours.fields]}
    assert view["linked"] == [True, True, True]


def test_tokens_made_by_the_typescript_sdk_are_admitted() -> None:
    cases = [(URL, EXPIRY, 11), (URL, EXPIRY, 5_000_000), ("http://cdn.example.com/f", EXPIRY, 11)]
    jobs = [
        {
            "key": HOST.private_bytes.hex(),
            "fields": [f.hex() for f in uhrp_fields(HOST.public_key, DIGEST, url, expiry, size)],
            "protocol": list(UHRP_PROTOCOL),
        }
        for url, expiry, size in cases
    ]
    scripts = [bytes.fromhex(s) for s in sdk_view({"lock": jobs})["lock"]]
    assert scripts[0] == uhrp_token(HOST, DIGEST, URL, EXPIRY, 11)
    assert MANAGER.admissible_outputs(tagged(*scripts), [2]).as_json() == {
        "outputsToAdmit": [0, 1],
        "coinsToRetain": [2],
    }


# -- lookup ----------------------------------------------------------------------------------------------------------

SERVICE = UhrpLookupService()


def _output(script: bytes, n: int, topic: str = "tm_uhrp") -> AdmittedOutput:
    return AdmittedOutput(txid=f"{n:064x}", vout=n, topic=topic, satoshis=1, script=script)


@pytest.fixture
def index() -> MemoryIndex:
    index = MemoryIndex()
    other = hashlib.sha256(b"other").digest()
    for n, (identity, digest, expiry) in enumerate(
        [(HOST, DIGEST, EXPIRY), (OTHER, DIGEST, EXPIRY + 1), (HOST, other, EXPIRY + 1)]
    ):
        assert index.add(SERVICE, _output(uhrp_token(identity, digest, URL, expiry, 11), n))
    return index


def test_what_is_indexed() -> None:
    script = uhrp_token(HOST, DIGEST, URL, EXPIRY, 11)
    assert SERVICE.index(_output(script, 0)) == {
        "uhrpUrl": [url_for_hash(DIGEST)],
        "hostIdentityKey": [HOST.public_key_hex],
        "expiryTime": [str(EXPIRY)],
    }
    assert SERVICE.index(_output(script, 0, topic="tm_ship")) is None
    assert SERVICE.index(_output(p2pkh_for_key(HOST.public_key), 0)) is None


def _ns(items: Sequence[FormulaItem]) -> list[int]:
    return [int(i.txid, 16) for i in items]


async def test_lookup_shapes(index: MemoryIndex) -> None:
    url = url_for_hash(DIGEST)
    for form in (url, f"uhrp:{url}", f"uhrp://{url}", f"UHRP://{url}", f"web+uhrp://{url}"):
        assert _ns(await SERVICE.lookup({"uhrpUrl": form}, index)) == [0, 1]
    assert _ns(await SERVICE.lookup({"uhrpUrl": url, "hostIdentityKey": OTHER.public_key_hex}, index)) == [1]
    assert _ns(await SERVICE.lookup({"hostIdentityKey": HOST.public_key_hex}, index)) == [0, 2]
    assert _ns(await SERVICE.lookup({"expiryTime": EXPIRY + 1}, index)) == [1, 2]
    assert _ns(await SERVICE.lookup({"expiryTime": float(EXPIRY), "uhrpUrl": url}, index)) == [0]
    assert _ns(await SERVICE.lookup({"uhrpUrl": "not a uhrp url"}, index)) == []
    assert _ns(await SERVICE.lookup({"uhrpUrl": url, "expiryTime": 0}, index)) == []
    assert _ns(await SERVICE.lookup({"uhrpUrl": url, "fileSize": 11}, index)) == [0, 1]  # other keys: ignored
    # outpoints
    assert await SERVICE.lookup({"outpoint": f"{1:064x}.1"}, index) == [FormulaItem(txid=f"{1:064x}", vout=1)]
    assert await SERVICE.lookup({"outpoint": f"{1:064x}.1.9", "uhrpUrl": "x"}, index) == [
        FormulaItem(txid=f"{1:064x}", vout=1)
    ]
    assert await SERVICE.lookup({"outpoint": f"{0:064x}."}, index) == [FormulaItem(txid=f"{0:064x}", vout=0)]
    for missing in (f"{1:064x}.2", f"{1:064x}", "x.1", f"{1:064x}.one", f"{1:064x}.{'9' * 40}"):
        assert await SERVICE.lookup({"outpoint": missing}, index) == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (None, "Lookup must include a valid query!"),
        ("findAll", "Lookup must include a valid query!"),
        (7, "Lookup must include a valid query!"),
        ({}, "Lookup must specify either outpoint, or at least one of (uhrpUrl, expiryTime, hostIdentityKey)"),
        ([], "Lookup must specify either outpoint"),
        ({"outpoint": ""}, "Lookup must specify either outpoint"),
        ({"uhrpUrl": "", "expiryTime": 0, "hostIdentityKey": None}, "Lookup must specify either outpoint"),
        ({"fileSize": 11}, "Lookup must specify either outpoint"),
        ({"outpoint": 5}, 'query.outpoint must be a string "txid.vout"'),
        ({"expiryTime": "2000000000"}, "query.expiryTime must be a number if provided"),
        ({"uhrpUrl": ["x"]}, "query.uhrpUrl must be a string if provided"),
        ({"hostIdentityKey": 1}, "query.hostIdentityKey must be a string if provided"),
    ],
)
async def test_lookup_errors(index: MemoryIndex, query: object, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        await SERVICE.lookup(query, index)
    assert str(caught.value).startswith(message)
