"""The surfaces of the fast fuzzer (:mod:`tests.fuzz.fast`): for each, how an input is made from the seeds of
:mod:`tests.fuzz.seeds`, and a check that calls the real decoder and then the invariants the hypothesis properties
of this directory hold (their helpers are reused). Every input is bytes, so that a crash's input can be saved and
replayed; a surface with several decoders or roles reads its first byte to pick one.

A check lets the decoder's documented refusal propagate (counted as refused); :class:`Refused` says the same for a
refusal a helper had already caught; anything else is a crash."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

import cbor2

from overlay_node.api import overlay
from overlay_node.api.common import parse_json
from overlay_node.chain import spv
from overlay_node.chain.formats import parse_stream, parse_transaction
from overlay_node.chain.refusals import Refusal
from overlay_node.chain.validation import check_transaction, fast_check
from overlay_node.crypto.bump import path_root
from overlay_node.crypto.sighash import txid_of_raw
from overlay_node.errors import OverlayError, RemoteProtocolError
from overlay_node.protocol.session import FrameSealer, SessionState
from overlay_node.wire import dht
from overlay_node.wire import frames as f

from . import seeds
from . import test_fuzz_chain as chain_props
from . import test_fuzz_dht as dht_props
from . import test_fuzz_http as http_props
from . import test_fuzz_json as json_props
from . import test_fuzz_messages as message_props
from . import test_fuzz_peer_link as link_props
from .fast import FastSurface, Mutator

#: what every surface counts as an expected refusal: the project's error hierarchy
OURS = (OverlayError,)


class Refused(Exception):
    """The input was refused by a reader whose refusal a reused helper had already caught."""


def _pick(m: Mutator, choices: Sequence[tuple[float, Callable[[], bytes]]]) -> bytes:
    r = m.rng.random()
    for weight, make in choices:
        if r < weight:
            return make()
        r -= weight
    return choices[-1][1]()


# -- peer links ------------------------------------------------------------------------------------------------------


def frame_input(m: Mutator) -> bytes:
    frames, maps = seeds.frame_bytes(), seeds.frame_maps()
    return _pick(
        m,
        (
            (0.5, lambda: m.bytes_(frames[m.rng.randrange(len(frames))], frames)),
            (0.4, lambda: m.cbor(maps[m.rng.randrange(len(maps))])),
            (0.1, lambda: m.rng.randbytes(m.rng.randrange(64))),
        ),
    )


def check_frame(data: bytes) -> None:
    frame = f.decode(data, max_size=link_props.MAX_FRAME)
    again = f.encode(frame)
    assert f.encode(f.decode(again, max_size=link_props.MAX_FRAME)) == again, "a frame does not encode back"
    if len(data) % 8 == 0:
        # one in eight through a real session behind the MAC (the property's own check)
        link_props.check_frame(data)


@functools.cache
def _handshake_texts() -> tuple[bytes, ...]:
    request, response = seeds.handshake_seeds()
    return request.encode(), response.encode()


@functools.cache
def _sealed() -> bytes:
    return FrameSealer(b"\x07" * 32).seal(seeds.frame_bytes()[1])


def handshake_input(m: Mutator) -> bytes:
    """First byte: the role (0 responder, 1 initiator, 2 a mangled Hello, 3 a mangled sealed message); second: text
    (even) or binary (odd)."""
    texts = _handshake_texts()
    # an initiator makes a nonce first, and roles 2 and 3 need a handshake per input (a refusal closes the
    # session): the cheap role most often
    r = m.rng.random()
    role = 0 if r < 0.6 else 1 if r < 0.9 else 2 if r < 0.95 else 3
    if role == 3:
        body = m.bytes_(_sealed(), [_sealed()])
    elif m.rng.random() < 0.5:
        body = m.bytes_(texts[m.rng.randrange(2)], texts)
    else:
        body = m.json(json.loads(texts[m.rng.randrange(2)]))
    return bytes([role, m.rng.randrange(256)]) + body


def check_handshake(data: bytes) -> None:
    if len(data) < 2:
        raise Refused
    role, mode, body = data[0] % 4, data[1], data[2:]
    message: str | bytes = body if mode % 2 else body.decode("utf-8", "replace")
    if role == 3:
        p = link_props.pair()
        try:
            p.responder.receive_message(message)
        except RemoteProtocolError:
            assert p.responder.state is SessionState.CLOSED, "a refused message left the session open"
            raise
        raise AssertionError("a made-up sealed message was accepted")
    session, message = link_props.handshake_session(role, message)
    try:
        session.receive_message(message)
    except RemoteProtocolError:
        assert session.state is SessionState.CLOSED, "a refused handshake message left the session open"
        raise


# -- HTTP/1.1 --------------------------------------------------------------------------------------------------------


@functools.cache
def _http_corpus() -> tuple[bytes, ...]:
    corpus = list(seeds.HTTP_REQUESTS)
    for body in seeds.JSON_BODIES[:6]:
        text = json.dumps(body).encode()
        corpus.append(b"POST /lookup HTTP/1.1\r\nHost: n\r\nContent-Length: %d\r\n\r\n%b" % (len(text), text))
    return tuple(corpus)


def http_input(m: Mutator) -> bytes:
    """First byte: how many places the input is cut at (0-7) and where (the bytes after it)."""
    corpus = _http_corpus()
    rng = m.rng

    def pipeline() -> bytes:
        return b"".join(corpus[rng.randrange(len(corpus))] for _ in range(rng.randint(2, 4)))

    data = _pick(
        m,
        (
            (0.4, lambda: m.bytes_(corpus[rng.randrange(len(corpus))], corpus)),
            (0.3, lambda: m.http_head(corpus[rng.randrange(len(corpus))])),
            (0.15, lambda: m.bytes_(pipeline(), corpus, rounds=8)),
            (0.15, pipeline),
        ),
    )
    cuts = rng.randrange(8)
    return bytes([cuts]) + rng.randbytes(cuts) + data


def check_http(data: bytes) -> None:
    n = data[0] % 8 if data else 0
    cuts = [b * 7 for b in data[1 : 1 + n]]
    body = data[1 + n :]
    whole, whole_error = http_props.drive([body])
    split, split_error = http_props.drive(http_props.split_at(body, cuts))
    if whole_error is None and split_error is None:
        assert split == whole, "the parser gives other requests for the same bytes in pieces"
    if not cuts and len(body) <= 300:
        http_props.drive([body[i : i + 1] for i in range(len(body))])
    if whole_error is not None:
        raise Refused


# -- JSON ------------------------------------------------------------------------------------------------------------


def json_input(m: Mutator) -> bytes:
    texts, bodies = seeds.json_texts(), seeds.JSON_BODIES
    rng = m.rng
    return _pick(
        m,
        (
            (0.45, lambda: m.bytes_(texts[rng.randrange(len(texts))], texts)),
            (0.45, lambda: m.json(bodies[rng.randrange(len(bodies))])),
            (0.05, lambda: rng.choice([b"[", b'{"a":', b"[{}, "]) * rng.randrange(1, 3000)),
            (0.05, lambda: rng.randbytes(rng.randrange(64))),
        ),
    )


def check_json(data: bytes) -> None:
    value = parse_json(data, limit=json_props.LIMIT * 4)
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    if isinstance(value, dict):
        json_props.read_fields(value)
        json_props.overlay_counts(value)


_HEADER_SEEDS = (
    b'["tm_ship","tm_uhrp"]',
    b"tm_ship, tm_slap",
    b"[" * 50,
    b"127.0.0.1:4760",
    b"[::1]:1",
    b"node.example.com:65535",
    b"100",
    b"1",
)


def header_input(m: Mutator) -> bytes:
    """First byte: the reader (0 x-topics, 1 a DHT endpoint, 2 the 402 satoshis header)."""
    return bytes([m.rng.randrange(3)]) + m.bytes_(_HEADER_SEEDS[m.rng.randrange(len(_HEADER_SEEDS))], _HEADER_SEEDS)


def check_header(data: bytes) -> None:
    if not data:
        raise Refused
    which, text = data[0] % 3, data[1:].decode("utf-8", "replace")
    if which == 0:
        overlay.parse_topics(text)
        json_props.check_topics(text)
    else:
        json_props.check_text_fields((which - 1, text))


# -- the DHT ---------------------------------------------------------------------------------------------------------


def dht_input(m: Mutator) -> bytes:
    datagrams, inner = seeds.dht_datagrams(), seeds.dht_inner_lists()
    rng = m.rng

    def resigned() -> bytes:
        value = m.value(inner[rng.randrange(len(inner))])
        try:
            return seeds.sign_datagram(bytes(cbor2.dumps(value, canonical=True)))
        except (cbor2.CBOREncodeError, ValueError, TypeError):
            return datagrams[0]

    return _pick(
        m,
        (
            (0.4, lambda: m.bytes_(datagrams[rng.randrange(len(datagrams))], datagrams)),
            (0.35, resigned),
            (0.15, lambda: resigned_store(m)),
            (0.1, lambda: rng.randbytes(rng.randrange(1500))),
        ),
    )


def resigned_store(m: Mutator) -> bytes:
    """A STORE of a record signed by its publisher, its value, sequence number, expiry or key fuzzed, signed again
    by the sender (so that it reaches the record store's own checks)."""
    rng = m.rng
    now = int(seeds.NOW)
    value = m.bytes_(b"v" * 40, [], rounds=2) if rng.random() < 0.8 else rng.randbytes(rng.randrange(1100))
    seq = rng.choice((0, 1, 2, 5, 2**63 - 1, rng.randrange(2**63)))
    expires = rng.choice((now - 10, now, now + 60, now + 4000, now + 90_000, 0, 2**63 - 1, now + rng.randrange(600)))
    record = seeds.dht_record(value=value[: dht.MAX_VALUE], seq=seq, expires=expires, key=rng.choice(_keys()))
    inner: list[Any] = [1, int(dht.MessageType.STORE), seeds.keys().alice.public_key, seeds.NOW, rng.randbytes(8)]
    inner.append([[record.key, record.value, record.publisher, record.seq, record.expires, record.sig]])
    if rng.random() < 0.3:
        inner = m.value(inner)
    try:
        return seeds.sign_datagram(bytes(cbor2.dumps(inner, canonical=True)))
    except (cbor2.CBOREncodeError, ValueError, TypeError):
        return seeds.dht_datagrams()[0]


@functools.cache
def _keys() -> tuple[bytes, ...]:
    return seeds.dht_record().key, bytes(32), b"\xff" * 32


def check_dht(data: bytes) -> None:
    sender, _ = seeds.signers()
    dht.decode(data, now=seeds.NOW, verify=sender.verify, max_skew=300.0)
    dht_props.check_datagram(data)


# -- chain -----------------------------------------------------------------------------------------------------------


def chain_input(m: Mutator) -> bytes:
    items = seeds.chain_seeds().all
    return m.bytes_(items[m.rng.randrange(len(items))], items, rounds=m.rng.choice((4, 12)))


def check_chain(data: bytes) -> None:
    try:
        parse_transaction(data)
    except Refusal:
        pass
    submissions = parse_stream(data, max_items=4)
    held = chain_props._held()
    sources = {(txid, vout): out for txid, outs in held.items() for vout, out in enumerate(outs)}
    for submission in submissions:
        claimed = {height: next(iter(roots)) for height, roots in spv.claims(submission).items()}
        for roots in (None, claimed):
            try:
                spv.verify_beef(submission, roots=roots, held=held, policy=chain_props.POLICY)
            except Refusal:
                pass
        for ptx in submission.txs:
            fast = fast_check(ptx.raw, sources, chain_props.POLICY)
            try:
                full = check_transaction(ptx, sources, chain_props.POLICY).fee
            except Refusal:
                full = None
            if fast is not None:
                assert full == fast, "the fast path accepted what the interpreter refuses"


@functools.cache
def _txids() -> tuple[str, ...]:
    chain = seeds.chain_seeds()
    return txid_of_raw(chain.funding), chain.other_txid, "00" * 32


def merkle_input(m: Mutator) -> bytes:
    bump = seeds.chain_seeds().funding_bump
    return bytes([m.rng.randrange(3)]) + m.bytes_(bump, [bump])


def check_merkle(data: bytes) -> None:
    if not data:
        raise Refused
    root = path_root(data[1:], _txids()[data[0] % 3])
    assert len(root) == 64


# -- CBOR messages, token scripts ------------------------------------------------------------------------------------


@functools.cache
def _targets() -> dict[str, message_props.Target]:
    return {t.name: t for t in message_props.targets.__wrapped__()}  # type: ignore[attr-defined]


RECORDS = ("provider record", "tag record", "children record", "advert", "advert index", "stored receipt")
BODIES = ("access grant", "quote", "payment", "receipt", "stream terms", "packet batch", "pushed record")
SCRIPTS = ("token scripts: admission", "token scripts: decoders", "advertised URIs")


@functools.cache
def _record_seeds() -> tuple[bytes, ...]:
    m = seeds.message_seeds()
    return (*m.values, bytes(cbor2.dumps(m.receipt, canonical=True)))


def records_input(m: Mutator) -> bytes:
    """First byte: the decoder (``RECORDS``); the rest a mutated record value."""
    which = m.rng.randrange(len(RECORDS))
    seed = _record_seeds()[which]
    data = m.bytes_(seed, [seed]) if m.rng.random() < 0.6 else m.cbor(cbor2.loads(seed))
    return bytes([which]) + data


def check_records(data: bytes) -> None:
    if not data:
        raise Refused
    target = _targets()[RECORDS[data[0] % len(RECORDS)]]
    try:
        target.call(data[1:])
    except target.errors as exc:
        raise Refused from exc


def bodies_input(m: Mutator) -> bytes:
    """A CBOR array: the decoder's index in ``BODIES`` and the mutated map a peer's frame carries."""
    which = m.rng.randrange(len(BODIES))
    seed = seeds.message_seeds().maps[which]
    return m.cbor([which, seed]) if m.rng.random() < 0.9 else m.bytes_(bytes(cbor2.dumps([which, seed])), [])


def check_bodies(data: bytes) -> None:
    try:
        which, value = cbor2.loads(data)
        name = BODIES[which % len(BODIES)]
    except Exception as exc:
        raise Refused from exc
    target = _targets()[name]
    try:
        target.call(value)
    except target.errors as exc:
        raise Refused from exc


_URIS = (
    b"https://overlay.example.com",
    b"wss://h.example.com:443/x",
    b"js8c+bsvauth+smf:?lat=1&long=2&freq=3&radius=4",
    b"https://xn--bcher-kva.example/",
    b"https://[::1]:8080/",
    b"https://0x7f.1/",
)


def scripts_input(m: Mutator) -> bytes:
    """First byte: 0 the admission checks, 1 the decoders, 2 the advertised-URI readers."""
    which = m.rng.randrange(3)
    pool = _URIS if which == 2 else seeds.message_seeds().scripts
    return bytes([which]) + m.bytes_(pool[m.rng.randrange(len(pool))], pool)


def check_scripts(data: bytes) -> None:
    if not data:
        raise Refused
    name = SCRIPTS[data[0] % 3]
    body: Any = data[1:].decode("utf-8", "replace") if name == "advertised URIs" else data[1:]
    _targets()[name].call(body)


def all_surfaces() -> list[FastSurface]:
    ours = (*OURS, Refused)
    return [
        FastSurface("peer link: frames", frame_input, check_frame, ours),
        FastSurface("peer link: handshake", handshake_input, check_handshake, ours),
        FastSurface("http/1.1 parser", http_input, check_http, ours),
        FastSurface("json: bodies and readers", json_input, check_json, ours),
        FastSurface("json: headers and addresses", header_input, check_header, ours),
        FastSurface("dht: datagrams and records", dht_input, check_dht, ours),
        FastSurface("chain: tx/BEEF and SPV", chain_input, check_chain, ours),
        FastSurface("chain: merkle paths", merkle_input, check_merkle, (*ours, ValueError)),
        FastSurface("messages: records", records_input, check_records, ours),
        FastSurface("messages: peer bodies", bodies_input, check_bodies, ours),
        FastSurface("messages: scripts and URIs", scripts_input, check_scripts, ours),
    ]
