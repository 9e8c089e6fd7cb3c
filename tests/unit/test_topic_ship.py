"""BRC-88 SHIP/SLAP tokens, the tm_ship/tm_slap topic managers and the ls_ship/ls_slap lookup services
(``topics/ship.py``), against the reference rules and the official TypeScript SDK."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.chain.formats import Submission, parse_transaction
from overlay_node.crypto import pushdrop
from overlay_node.crypto.keys import Identity
from overlay_node.crypto.scripts import p2pkh_for_key
from overlay_node.crypto.sighash import Spend, outpoint_bytes, sign_transaction
from overlay_node.errors import BadRequest
from overlay_node.protocol.adverts import Endpoints, make_advert, signature_is_linked
from overlay_node.topics.plugins import (
    AdmittedOutput,
    FormulaItem,
    LookupService,
    Outpoint,
    PluginContext,
    TaggedTx,
    TopicManager,
)
from overlay_node.topics.ship import (
    FACTORIES,
    SHIP_PROTOCOL,
    SLAP_PROTOCOL,
    ShipLookupService,
    ShipTopicManager,
    admissible,
    decode_ship_token,
    is_advertisable_uri,
    is_valid_name,
    parse_url,
    ship_fields,
    ship_signature,
    ship_token,
    to_utf8,
)
from tests.unit.test_pushdrop import sdk_view

ALICE = Identity.from_private_bytes(bytes(31) + b"\x11")
BOB = Identity.from_private_bytes(bytes(31) + b"\x22")
URI = "https://overlay.example.com"


def tagged(*scripts: bytes) -> TaggedTx:
    """A transaction with these outputs (1 satoshi each), as a topic manager is given it."""
    secret = (5).to_bytes(32, "big")
    spend = Spend(outpoint_bytes("ab" * 32, 0), p2pkh_for_key(ALICE.public_key), 10, secret)
    raw = sign_transaction([spend], [(s, 1) for s in scripts])
    return TaggedTx(beef=raw, submission=Submission(format="raw", txs=(parse_transaction(raw),)))


def admitted(manager: TopicManager, *scripts: bytes) -> tuple[int, ...]:
    return manager.admissible_outputs(tagged(*scripts), []).outputs_to_admit


def unsigned(identity: Identity, fields: Sequence[bytes], protocol: tuple[int, str] = SHIP_PROTOCOL) -> bytes:
    """A token script signed over exactly ``fields`` (whatever they are)."""
    return pushdrop.lock(identity, fields, protocol)


SHIP = ShipTopicManager("SHIP")
SLAP = ShipTopicManager("SLAP")


# -- tokens --------------------------------------------------------------------------------------------------------


def test_token_round_trip_and_shared_advert_signature() -> None:
    script = ship_token(ALICE, "SHIP", URI, "tm_weather")
    token = decode_ship_token(script)
    assert (token.kind, token.identity_key, token.uri, token.name) == ("SHIP", ALICE.public_key, URI, "tm_weather")
    assert token.locking_key == pushdrop.token_locking_key(ALICE, SHIP_PROTOCOL)
    assert token.fields == tuple(ship_fields("SHIP", ALICE.public_key, URI, "tm_weather"))
    assert token.is_linked()
    # the DHT advert signs and links with the same code (RFC 6979: the same signature)
    advert = make_advert(ALICE, name="tm_weather", uri=URI, endpoints=Endpoints(), expires=1)
    assert advert.signature == token.signature == ship_signature(ALICE, "SHIP", URI, "tm_weather")
    assert advert.locking_key == token.locking_key
    assert signature_is_linked(advert)
    assert not signature_is_linked(replace(advert, uri=URI + "/x"))
    slap = decode_ship_token(ship_token(BOB, "SLAP", URI, "ls_weather"))
    assert slap.kind == "SLAP"
    assert slap.locking_key == pushdrop.token_locking_key(BOB, SLAP_PROTOCOL)


@pytest.mark.parametrize(
    ("kind", "name", "refusal"),
    [
        ("SHIP", "ls_weather", r"SHIP tokens advertise tm_\* names"),
        ("SLAP", "tm_weather", r"SLAP tokens advertise ls_\* names"),
        ("SHIP", "tm_2", r"SHIP tokens advertise tm_\* names"),
        ("SHOP", "tm_weather", "token kind 'SHOP' is neither SHIP nor SLAP"),
    ],
)
def test_token_builder_refuses_what_no_manager_admits(kind: str, name: str, refusal: str) -> None:
    with pytest.raises(ValueError, match=refusal):
        ship_token(ALICE, kind, URI, name)  # type: ignore[arg-type]


def test_decoder_refuses_what_is_not_a_five_field_ship_or_slap_token() -> None:
    with pytest.raises(ValueError, match="not a PushDrop script"):
        decode_ship_token(p2pkh_for_key(ALICE.public_key))
    with pytest.raises(ValueError, match="5 fields"):
        decode_ship_token(unsigned(ALICE, [b"SHIP", ALICE.public_key, URI.encode()]))
    with pytest.raises(ValueError, match="neither"):
        decode_ship_token(unsigned(ALICE, [b"SHOP", ALICE.public_key, URI.encode(), b"tm_weather"]))
    # text reads as @bsv/sdk's toUTF8 reads it: a leading BOM is dropped
    token = decode_ship_token(unsigned(ALICE, [b"\xef\xbb\xbfSHIP", ALICE.public_key, URI.encode(), b"tm_x"]))
    assert token.kind == "SHIP"
    assert token.fields[0] == b"\xef\xbb\xbfSHIP"


# -- admission -----------------------------------------------------------------------------------------------------


def test_admits_valid_tokens_of_its_kind_at_their_indices() -> None:
    ship = ship_token(ALICE, "SHIP", URI, "tm_weather")
    slap = ship_token(BOB, "SLAP", "wss://lookup.example.com/stream", "ls_weather")
    p2pkh = p2pkh_for_key(BOB.public_key)
    tx = tagged(p2pkh, ship, slap, b"\x6a\x04data", ship)
    assert SHIP.admissible_outputs(tx, [0, 3]).as_json() == {"outputsToAdmit": [1, 4], "coinsToRetain": []}
    assert SLAP.admissible_outputs(tx, [1]).as_json() == {"outputsToAdmit": [2], "coinsToRetain": []}
    assert SHIP.needed_inputs(tx) == ()


def _signed(identity: Identity, f0: bytes, f1: bytes, uri: str, name: str, protocol: tuple[int, str]) -> bytes:
    return unsigned(identity, [f0, f1, uri.encode(), name.encode()], protocol)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(unsigned(ALICE, [b"SHIP", ALICE.public_key, URI.encode()]), id="4 fields"),
        pytest.param(unsigned(ALICE, [b"SHIP", ALICE.public_key, URI.encode(), b"tm_weather", b"x"]), id="6 fields"),
        pytest.param(_signed(ALICE, b"SLAP", ALICE.public_key, URI, "tm_weather", SLAP_PROTOCOL), id="SLAP token"),
        pytest.param(_signed(ALICE, b"SHIP", ALICE.public_key, URI, "tm_weather", SLAP_PROTOCOL), id="SLAP protocol"),
        pytest.param(_signed(ALICE, b"ship", ALICE.public_key, URI, "tm_weather", SHIP_PROTOCOL), id="lower-case"),
        pytest.param(_signed(ALICE, b"SHIP", ALICE.public_key, "https://localhost", "tm_x", SHIP_PROTOCOL), id="lh"),
        pytest.param(_signed(ALICE, b"SHIP", ALICE.public_key, URI + "/submit", "tm_x", SHIP_PROTOCOL), id="path"),
        pytest.param(_signed(ALICE, b"SHIP", ALICE.public_key, "http://a.example", "tm_x", SHIP_PROTOCOL), id="http"),
        pytest.param(_signed(ALICE, b"SHIP", ALICE.public_key, URI, "tm_weather2", SHIP_PROTOCOL), id="digit"),
        pytest.param(_signed(ALICE, b"SHIP", ALICE.public_key, URI, "ls_weather", SHIP_PROTOCOL), id="ls_ name"),
        pytest.param(_signed(ALICE, b"SHIP", ALICE.public_key, URI, "tm__x", SHIP_PROTOCOL), id="double underscore"),
        pytest.param(_signed(ALICE, b"SHIP", BOB.public_key, URI, "tm_weather", SHIP_PROTOCOL), id="other identity"),
        pytest.param(_signed(ALICE, b"SHIP", b"\x02" + bytes(32), URI, "tm_x", SHIP_PROTOCOL), id="not a key"),
    ],
)
def test_admission_rules(script: bytes) -> None:
    valid = _signed(ALICE, b"SHIP", ALICE.public_key, URI, "tm_weather", SHIP_PROTOCOL)
    assert admitted(SHIP, valid) == (0,)
    assert admitted(SHIP, script) == ()
    assert admitted(SLAP, script) == ()


def test_tampered_signature_and_foreign_locking_key_are_refused() -> None:
    good = pushdrop.decode(ship_token(ALICE, "SHIP", URI, "tm_weather"))
    data, signature = list(good.fields[:4]), good.fields[4]
    tampered = signature[:-1] + bytes([signature[-1] ^ 1])
    assert admitted(SHIP, pushdrop.encode(good.locking_key, [*data, signature])) == (0,)
    assert admitted(SHIP, pushdrop.encode(good.locking_key, [*data, tampered])) == ()
    assert admitted(SHIP, pushdrop.encode(BOB.public_key, [*data, signature])) == ()
    # signed by the identity, but locked to its root key rather than the derived one
    assert admitted(SHIP, pushdrop.encode(ALICE.public_key, [*data, signature])) == ()
    # the signature of one token on another's fields
    other = pushdrop.decode(ship_token(ALICE, "SHIP", URI, "tm_other"))
    assert admitted(SHIP, pushdrop.encode(good.locking_key, [*data, other.fields[4]])) == ()


_field = st.one_of(st.sampled_from([b"SHIP", b"SLAP", b"tm_a", b"ls_a", URI.encode()]), st.binary(max_size=40))


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.lists(_field, max_size=7).map(lambda f: unsigned(ALICE, f))))
def test_garbage_is_refused_without_raising(script: bytes) -> None:
    for kind in ("SHIP", "SLAP"):
        assert admissible(script, kind) in (True, False)
        service = ShipLookupService(kind)
        fields = service.index(_output(script, "tm_ship" if kind == "SHIP" else "tm_slap", 0))
        assert fields is None or set(fields) == {"identityKey", "domain", "topic" if kind == "SHIP" else "service"}


def test_allow_http_admits_plain_http_with_the_same_host_and_path_rules() -> None:
    local = ShipTopicManager("SHIP", allow_http=True)
    ok = ship_token(ALICE, "SHIP", "http://127.0.0.1:8080", "tm_weather")
    assert admitted(SHIP, ok) == ()
    assert admitted(local, ok) == (0,)
    for uri in ("http://localhost:8080", "http://127.0.0.1:8080/api"):
        assert admitted(local, ship_token(ALICE, "SHIP", uri, "tm_weather")) == ()
    assert admitted(local, ship_token(ALICE, "SHIP", URI, "tm_weather")) == (0,)
    factory = FACTORIES["tm_ship"](PluginContext(name="tm_ship", identity_key=ALICE.public_key_hex, allow_http=True))
    assert isinstance(factory, ShipTopicManager)
    assert factory.allow_http


def test_factories_metadata_and_documentation() -> None:
    ctx = PluginContext(name="x", identity_key=ALICE.public_key_hex)
    plugins = {name: factory(ctx) for name, factory in FACTORIES.items()}
    assert isinstance(plugins["tm_ship"], TopicManager)
    assert isinstance(plugins["tm_slap"], TopicManager)
    assert isinstance(plugins["ls_ship"], LookupService)
    assert isinstance(plugins["ls_slap"], LookupService)
    names = {name: p.metadata().name for name, p in plugins.items()}
    assert names == {
        "tm_ship": "SHIP Topic Manager",
        "tm_slap": "SLAP Topic Manager",
        "ls_ship": "SHIP Lookup Service",
        "ls_slap": "SLAP Lookup Service",
    }
    for name, plugin in plugins.items():
        assert plugin.documentation().startswith(f"# {name}")
        assert plugin.metadata().as_json()["shortDescription"]
    assert plugins["ls_ship"].keeps_spent is False


# -- URIs ------------------------------------------------------------------------------------------------------------

#: the reference's own test vectors (overlay-discovery-services isAdvertisableURI.test.ts) and a few more
URI_CASES = {
    "https://example.com": True,
    "http://example.com": False,
    "https://localhost": False,
    "https://LOCALHOST:8080": False,
    "https+bsvauth://example.com": True,
    "https+bsvauth+smf://example.com": True,
    "https+bsvauth+scrypt-offchain://example.com": True,
    "https+rtt://example.com": True,
    "https+bsvauth+smf://localhost/lookup": False,
    "https+rtt://localhost": False,
    "https://example.com/path": False,
    "https+bsvauth://example.com/path": False,
    "wss://example.com": True,
    "wss://localhost": False,
    "js8c+bsvauth+smf:?lat=40&long=130&freq=40meters&radius=1000miles": True,
    "js8c+bsvauth+smf:": False,
    "js8c+bsvauth+smf:?lat=40&long=130&freq=40meters": False,
    "js8c+bsvauth+smf:?lat=abc&long=130&freq=40meters&radius=1000miles": False,
    "js8c+bsvauth+smf:?lat=40&long=130&freq=0&radius=1000miles": False,
    "js8c+bsvauth+smf:?lat=40&long=130&freq=7.0&radius=1000": True,
    "js8c+bsvauth+smf:?lat=100&long=130&freq=7&radius=1000": False,
    "ftp://example.com": False,
    "mailto:user@example.com": False,
    # what WHATWG parsing makes of them
    "https://example.com/": True,
    "https://example.com/a/..": True,
    "https://example.com/%2e": True,
    "https://example.com//": False,
    "https://example.com?q=1#f": True,
    "https://user:pw@example.com:8443": True,
    "https:///example.com": True,
    "https://%6cocalhost": False,
    "https://ｌｏｃａｌｈｏｓｔ": False,
    "https://localhost.": True,
    "https://0x7f.1": True,
    "https://1.2.3.999": False,
    "https://[::1]": True,
    "https://ex ample.com": False,
    "https://example.com:65536": False,
    "HTTPS://example.com": False,
    " https://example.com": False,
    "": False,
}


def test_reference_uri_vectors() -> None:
    assert {uri: is_advertisable_uri(uri) for uri in URI_CASES} == URI_CASES
    assert is_advertisable_uri("http://example.com", allow_http=True)
    assert not is_advertisable_uri("http://localhost", allow_http=True)
    assert not is_advertisable_uri("http://example.com/x", allow_http=True)
    assert not is_advertisable_uri("ws://example.com", allow_http=True)


def _uri_corpus() -> list[str]:
    rnd = random.Random(88)
    pieces = [*"aZ.:/\\?#@%[]0x12 \t\n_-^|<>~!$&*+,;=", "\x00", "\x7f", "ü", "ß", "İ", "Ａ", "ｌ", "。", "ﬀ", "\u200d"]
    pieces += ["\u0301", "\ufffd", "א", "ب", "١", "\u00ad", "💩", "क्", "xn--", "XN--tda", "xn--ls8h", "xn--abc-"]
    pieces += ["%00", "%ff", "%c3%bc", "%2e", "%41", "..", "localhost", "::", "::1", "1.2.3.4", "0x7f", "4294967296"]
    corpus = list(URI_CASES)
    for _ in range(2500):
        body = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))
        corpus.append(rnd.choice(["https://", "wss://", "https+rtt://", "http://", "HTTPS:", ""]) + body)
    return corpus


def test_uris_and_urls_are_read_as_node_reads_them() -> None:
    corpus = _uri_corpus()
    view = sdk_view({"uris": corpus, "urls": corpus})
    assert [is_advertisable_uri(u) for u in corpus] == view["uris"]
    for uri, theirs in zip(corpus, view["urls"], strict=True):
        parsed = parse_url(uri)
        if theirs is not None and theirs["protocol"] not in ("http:", "https:", "ws:", "wss:", "ftp:"):
            theirs = None  # only the special schemes are parsed here
        ours = None
        if parsed is not None:
            ours = {"protocol": parsed.scheme + ":", "hostname": parsed.hostname, "pathname": parsed.pathname}
        assert ours == theirs, uri


def test_text_fields_decode_as_typescript_sdk_decodes_them() -> None:
    samples = [b"SHIP", b"\xef\xbb\xbfSHIP", b"\xef\xbb\xbf\xef\xbb\xbfx", b"a\xffb", b"\xc3", b"\xe2\x82"]
    samples += [b"\xed\xa0\x80"]
    samples += [b"\xf0\x9f\x92\xa9", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf0\x9f\x92", b"\x80\x80"]
    assert [to_utf8(b) for b in samples] == sdk_view({"utf8": [b.hex() for b in samples]})["utf8"]


def test_names() -> None:
    for good in ("tm_a", "ls_weather_feed", "tm_" + "a" * 47):
        assert is_valid_name(good)
    for bad in ("tm_", "tm_a1", "TM_a", "tm_a_", "tm__a", "xx_a", "tm_" + "a" * 48, "tm_a\n", "tm_é"):
        assert not is_valid_name(bad)


# -- the official TypeScript SDK -----------------------------------------------------------------------------------


def test_typescript_sdk_reads_and_links_our_tokens() -> None:
    tokens = [
        ship_token(ALICE, "SHIP", URI, "tm_weather"),
        ship_token(BOB, "SLAP", "https+bsvauth+smf://lookup.example.com", "ls_weather_feed"),
        ship_token(BOB, "SHIP", "wss://ws.example.com/live", "tm_a"),
    ]
    view = sdk_view(
        {
            "decode": [t.hex() for t in tokens],
            "admin": [t.hex() for t in tokens],
            "linked": [{"script": t.hex(), "protocol": list(_protocol(t)), "identityField": 1} for t in tokens],
        }
    )
    for script, decoded, admin, linked in zip(tokens, view["decode"], view["admin"], view["linked"], strict=True):
        ours = pushdrop.decode(script)
        token = decode_ship_token(script)
        assert decoded == {"key": ours.locking_key.hex(), "fields": [f.hex() for f in ours.fields]}
        assert admin == {
            "protocol": token.kind,
            "identityKey": token.identity_key.hex(),
            "domain": token.uri,
            "topicOrService": token.name,
        }
        assert linked is True


def _protocol(script: bytes) -> tuple[int, str]:
    return SHIP_PROTOCOL if decode_ship_token(script).kind == "SHIP" else SLAP_PROTOCOL


def test_tokens_made_by_the_typescript_sdk_are_admitted() -> None:
    jobs = []
    for identity, kind, uri, name in [
        (ALICE, "SHIP", URI, "tm_weather"),
        (BOB, "SLAP", URI, "ls_weather"),
        (BOB, "SHIP", "https://localhost", "tm_weather"),  # made fine, refused for its URI
    ]:
        fields = [f.hex() for f in ship_fields(kind, identity.public_key, uri, name)]  # type: ignore[arg-type]
        protocol = list(SHIP_PROTOCOL if kind == "SHIP" else SLAP_PROTOCOL)
        jobs.append({"key": identity.private_bytes.hex(), "fields": fields, "protocol": protocol})
    scripts = [bytes.fromhex(s) for s in sdk_view({"lock": jobs})["lock"]]
    assert scripts[0] == ship_token(ALICE, "SHIP", URI, "tm_weather")  # the same bytes, RFC 6979 and all
    tx = tagged(*scripts)
    assert SHIP.admissible_outputs(tx, []).outputs_to_admit == (0,)
    assert SLAP.admissible_outputs(tx, []).outputs_to_admit == (1,)


# -- lookup ----------------------------------------------------------------------------------------------------------


class MemoryIndex:
    """A LookupIndex over a list, in admission order."""

    def __init__(self) -> None:
        self.rows: list[tuple[Outpoint, dict[str, list[str]]]] = []

    def add(self, service: LookupService, output: AdmittedOutput) -> bool:
        fields = service.index(output)
        if not fields:
            return False
        self.rows.append(((output.txid, output.vout), {k: list(v) for k, v in fields.items()}))
        return True

    async def find(
        self,
        where: Mapping[str, Sequence[str]],
        *,
        limit: int | None = None,
        skip: int = 0,
        newest_first: bool = True,
    ) -> list[Outpoint]:
        rows = [o for o, f in self.rows if all(set(f.get(k, ())) & set(v) for k, v in where.items())]
        if newest_first:
            rows.reverse()
        rows = rows[skip:]
        return rows if limit is None else rows[:limit]

    async def fields(self, outpoint: Outpoint) -> dict[str, list[str]] | None:
        return next((f for o, f in self.rows if o == outpoint), None)


def _output(script: bytes, topic: str, n: int) -> AdmittedOutput:
    return AdmittedOutput(txid=f"{n:064x}", vout=n % 3, topic=topic, satoshis=1, script=script)


@pytest.fixture
def ship_index() -> tuple[ShipLookupService, MemoryIndex]:
    service = ShipLookupService("SHIP")
    index = MemoryIndex()
    tokens = [
        (ALICE, "https://a.example", "tm_weather"),
        (ALICE, "https://a.example", "tm_news"),
        (BOB, "https://b.example", "tm_weather"),
        (BOB, "https://b.example", "tm_sport"),
    ]
    for n, (identity, uri, name) in enumerate(tokens):
        assert index.add(service, _output(ship_token(identity, "SHIP", uri, name), "tm_ship", n))
    return service, index


def _ns(items: Sequence[FormulaItem]) -> list[int]:
    return [int(i.txid, 16) for i in items]


async def test_ship_lookup_shapes(ship_index: tuple[ShipLookupService, MemoryIndex]) -> None:
    service, index = ship_index
    assert _ns(await service.lookup("findAll", index)) == [3, 2, 1, 0]
    assert _ns(await service.lookup([], index)) == [3, 2, 1, 0]
    assert _ns(await service.lookup({}, index)) == [3, 2, 1, 0]
    assert _ns(await service.lookup({"findAll": True, "limit": 2, "skip": 1}, index)) == [2, 1]
    assert _ns(await service.lookup({"findAll": True, "sortOrder": "asc", "limit": 0}, index)) == [0, 1, 2, 3]
    assert _ns(await service.lookup({"findAll": False, "topics": ["tm_news"]}, index)) == [1]
    assert _ns(await service.lookup({"topics": ["tm_weather", "tm_sport", 7]}, index)) == [3, 2, 0]
    assert _ns(await service.lookup({"topics": []}, index)) == []
    assert _ns(await service.lookup({"domain": "https://b.example", "sortOrder": "asc"}, index)) == [2, 3]
    alice = ALICE.public_key_hex
    assert _ns(await service.lookup({"identityKey": alice, "topics": ["tm_weather"]}, index)) == [0]
    assert _ns(await service.lookup({"identityKey": alice.upper()}, index)) == []
    assert _ns(await service.lookup({"domain": "https://a.example", "skip": 1.0}, index)) == [0]
    items = await service.lookup({"identityKey": alice}, index)
    assert items == [FormulaItem(txid=f"{1:064x}", vout=1), FormulaItem(txid=f"{0:064x}", vout=0)]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (None, "A valid query must be provided!"),
        ("all", 'Invalid query format. Query must be "findAll" string or an object with valid parameters.'),
        (42, "Invalid query format"),
        (True, "Invalid query format"),
        ({"findAll": True, "limit": -1}, "query.limit must be a positive number if provided"),
        ({"findAll": 1, "limit": "2"}, "query.limit must be a positive number if provided"),
        ({"findAll": "yes", "skip": -1}, "query.skip must be a non-negative number if provided"),
        ({"findAll": [], "sortOrder": "up"}, 'query.sortOrder must be "asc" or "desc" if provided'),
        ({"domain": 5}, "query.domain must be a string if provided"),
        ({"domain": None}, "query.domain must be a string if provided"),
        ({"topics": "tm_weather"}, "query.topics must be an array of strings if provided"),
        ({"identityKey": 1}, "query.identityKey must be a string if provided"),
        ({"topics": ["tm_a"], "limit": True}, "query.limit must be a positive number if provided"),
        ({"limit": 1.5}, "query.limit must be a positive number if provided"),
        ({"skip": None}, "query.skip must be a non-negative number if provided"),
        ({"sortOrder": "ASC"}, 'query.sortOrder must be "asc" or "desc" if provided'),
    ],
)
async def test_ship_lookup_errors(
    ship_index: tuple[ShipLookupService, MemoryIndex], query: object, message: str
) -> None:
    service, index = ship_index
    with pytest.raises(BadRequest) as caught:
        await service.lookup(query, index)
    assert str(caught.value).startswith(message)


async def test_slap_lookup_and_what_is_indexed() -> None:
    ship, slap = ShipLookupService("SHIP"), ShipLookupService("SLAP")
    index = MemoryIndex()
    slap_token = ship_token(BOB, "SLAP", URI, "ls_weather")
    ship_tok = ship_token(ALICE, "SHIP", URI, "tm_weather")
    assert slap.index(_output(slap_token, "tm_slap", 0)) == {
        "identityKey": [BOB.public_key_hex],
        "domain": [URI],
        "service": ["ls_weather"],
    }
    assert ship.index(_output(ship_tok, "tm_ship", 0)) == {
        "identityKey": [ALICE.public_key_hex],
        "domain": [URI],
        "topic": ["tm_weather"],
    }
    # only outputs its own topic admitted, and only tokens that decode as its kind
    assert slap.index(_output(slap_token, "tm_ship", 0)) is None
    assert slap.index(_output(ship_tok, "tm_slap", 0)) is None
    assert ship.index(_output(p2pkh_for_key(BOB.public_key), "tm_ship", 0)) is None
    assert ship.index(_output(b"", "tm_ship", 0)) is None
    index.add(slap, _output(slap_token, "tm_slap", 1))
    index.add(slap, _output(ship_token(ALICE, "SLAP", URI, "ls_news"), "tm_slap", 2))
    assert _ns(await slap.lookup({"service": "ls_news"}, index)) == [2]
    assert _ns(await slap.lookup({"domain": URI, "identityKey": BOB.public_key_hex}, index)) == [1]
    assert _ns(await slap.lookup({"topics": ["ignored by SLAP"]}, index)) == [2, 1]
    with pytest.raises(BadRequest, match=r"query\.service must be a string if provided"):
        await slap.lookup({"service": ["ls_news"]}, index)
