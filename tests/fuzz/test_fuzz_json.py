"""Control-socket and overlay JSON bodies: ``api/common.py``'s bounded JSON reader (``parse_json``, ``read_body`` and
``read_json`` on a real Starlette request fed in pieces) and the ``Body`` field readers; the overlay routes' own
readers (``parse_topics``, the GASP counts).

Properties: nothing but ``BadRequest`` escapes; what ``parse_json`` accepts is standard JSON (it writes back with
``allow_nan=False``: no NaN or infinity reaches a handler; and as UTF-8: no lone surrogate) nested at most
``JSON_MAX_DEPTH`` deep; each ``Body`` reader returns the type it promises; the address and 402-header readers
raise only their documented errors."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import strategies as st
from starlette.requests import Request

from overlay_node.api import overlay
from overlay_node.api.common import Body, parse_json, read_json
from overlay_node.errors import BadRequest, RemoteProtocolError
from overlay_node.net.udp import parse_host_port
from overlay_node.protocol.http_payment import H_PREFIX, H_REQUIRED, H_VERSION, parse_payment_required

from . import seeds
from .mutate import fuzz_bytes, mutated_values, plain_values
from .runner import FuzzReport, fuzz_seconds, run_property

pytestmark = pytest.mark.fuzz

LIMIT = 2048
#: the surface's budget is shared by its five properties
SHARE = 5


def texts() -> st.SearchStrategy[bytes]:
    structured = mutated_values(seeds.JSON_BODIES, finite=True, json=True).map(lambda v: json.dumps(v).encode())
    nested = st.tuples(st.sampled_from(["[", '{"a":', "[{}, "]), st.integers(1, 3000)).map(
        lambda t: (t[0] * t[1]).encode()
    )
    return st.one_of(fuzz_bytes(seeds.json_texts()), structured, nested, st.text(max_size=64).map(str.encode))


def check_parse(data: bytes) -> None:
    try:
        value = parse_json(data, limit=LIMIT * 4)
    except BadRequest:
        return
    # what reaches a handler is standard JSON, and its text can be written as UTF-8 (a key hashed, an error naming it)
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    if isinstance(value, dict):
        read_fields(value)
        overlay_counts(value)


#: every reader, as the control routes call them
READERS: tuple[Callable[[Body, str], object], ...] = (
    lambda b, k: b.text(k),
    lambda b, k: b.text(k, None, max_len=8),
    lambda b, k: b.text(k, "dflt"),
    lambda b, k: b.integer(k),
    lambda b, k: b.integer(k, None, minimum=1, maximum=10, digits=True),
    lambda b, k: b.seconds(k, None),
    lambda b, k: b.seconds(k, 30, maximum=3600),
    lambda b, k: b.positive(k),
    lambda b, k: b.boolean(k, False),
    lambda b, k: b.strings(k, max_items=3, blank=False),
    lambda b, k: b.strings(k, required=True, min_items=1),
    lambda b, k: b.abs_path(k),
)


def read_fields(fields: dict[str, Any]) -> None:
    body = Body(fields)
    for key in [*list(fields)[:4], "missing"]:
        for read in READERS:
            try:
                got = read(body, key)
            except BadRequest:
                continue
            if isinstance(got, float):
                assert math.isfinite(got)


def overlay_counts(fields: dict[str, Any]) -> None:
    for key in list(fields)[:4]:
        try:
            overlay._count(fields[key], key)
        except BadRequest:
            pass


def test_json_reader_and_fields(fuzz_report: FuzzReport) -> None:
    run_property(fuzz_report, "json: parse_json and Body readers", texts(), check_parse, seconds=fuzz_seconds() / SHARE)


def check_fields(fields: dict[str, Any]) -> None:
    read_fields(fields)
    overlay_counts(fields)


def test_body_field_readers(fuzz_report: FuzzReport) -> None:
    values = st.one_of(
        mutated_values(seeds.JSON_BODIES[:10], finite=True, json=True).filter(lambda v: isinstance(v, dict)),
        st.dictionaries(st.text(max_size=6), plain_values(finite=True, json=True), max_size=5),
    )
    run_property(fuzz_report, "json: Body field readers", values, check_fields, seconds=fuzz_seconds() / SHARE)


async def _read(headers: list[tuple[bytes, bytes]], pieces: list[bytes], disconnect: bool) -> Any:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": p, "more_body": i + 1 < len(pieces)} for i, p in enumerate(pieces)
    ]
    if disconnect:
        messages[-1]["more_body"] = True
        messages.append({"type": "http.disconnect"})

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": headers, "query_string": b""}
    return await read_json(Request(scope, receive), LIMIT)


def request_inputs() -> st.SearchStrategy[tuple[list[tuple[bytes, bytes]], list[bytes], bool]]:
    length = st.one_of(
        st.none(),
        st.integers(0, 3 * LIMIT).map(lambda n: str(n).encode()),
        st.text(alphabet=st.characters(max_codepoint=255), max_size=6).map(lambda t: t.encode("latin-1")),
    )
    headers = length.map(lambda v: [] if v is None else [(b"content-length", v)])
    bodies = st.one_of(fuzz_bytes(seeds.json_texts()), st.binary(min_size=LIMIT - 8, max_size=LIMIT + 8))
    pieces = st.tuples(bodies, st.lists(st.integers(0, LIMIT + 8), max_size=4)).map(
        lambda t: [t[0][a:b] for a, b in zip([0, *sorted(t[1])], [*sorted(t[1]), len(t[0]) + 1], strict=True)]
    )
    return st.tuples(headers, pieces, st.booleans())


def check_request(case: tuple[list[tuple[bytes, bytes]], list[bytes], bool]) -> None:
    headers, pieces, disconnect = case
    try:
        value = trio.run(_read, headers, pieces, disconnect)
    except BadRequest:
        return
    assert isinstance(value, dict)
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode()


def test_request_body_reader(fuzz_report: FuzzReport) -> None:
    run_property(
        fuzz_report, "json: read_json on a request", request_inputs(), check_request, seconds=fuzz_seconds() / SHARE
    )


def check_topics(header: str) -> None:
    try:
        topics = overlay.parse_topics(header)
    except BadRequest:
        return
    assert topics
    assert all(isinstance(t, str) and t for t in topics)
    # a topic name ends up in answers (an error naming it) and in the database: it is text UTF-8 can carry
    for topic in topics:
        topic.encode()


def test_overlay_topics_header(fuzz_report: FuzzReport) -> None:
    headers = st.one_of(
        fuzz_bytes([b'["tm_ship","tm_uhrp"]', b"tm_ship, tm_slap", b"[" * 50]).map(lambda b: b.decode("latin-1")),
        st.text(max_size=40),
    )
    run_property(fuzz_report, "json: overlay x-topics header", headers, check_topics, seconds=fuzz_seconds() / SHARE)


def check_text_fields(case: tuple[int, str]) -> None:
    which, text = case
    if which == 0:
        # a peer's advertised DHT endpoint
        try:
            _host, port = parse_host_port(text)
        except BadRequest:
            return
        assert 1 <= port <= 65535
    else:
        # the headers of a 402 answer from a server we pay
        headers = {H_VERSION: "1.0", H_REQUIRED: text, H_PREFIX: "cHJlZml4"}
        try:
            asked = parse_payment_required(headers)
        except RemoteProtocolError:
            return
        assert asked.satoshis > 0


def test_addresses_and_payment_headers(fuzz_report: FuzzReport) -> None:
    texts = fuzz_bytes([b"127.0.0.1:4760", b"[::1]:1", b"node.example.com:65535", b"100", b"1"], max_size=40).map(
        lambda b: b.decode("latin-1") if b[:1] == b"L" else b.decode("utf-8", "replace")
    )
    cases = st.tuples(st.integers(0, 1), st.one_of(texts, st.text(max_size=24)))
    run_property(
        fuzz_report, "json: addresses and payment headers", cases, check_text_fields, seconds=fuzz_seconds() / SHARE
    )
