"""The HTTP/1.1 request parser (``wire/http1.py``): random and mutated heads, chunked bodies, pipelines, fed whole
and split at random points.

Properties: any bytes give requests and body pieces or ``HttpError`` (nothing else escapes, invariant 2); fed in
pieces, the parser gives exactly what it gives for the same bytes at once (the I/O shell reads whatever the socket
hands it); a body never exceeds its declared length or the limit; a request head is well formed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st

from overlay_node.wire.http1 import HttpError, Request, RequestParser

from . import seeds
from .mutate import fuzz_bytes
from .runner import FuzzReport, run_property

pytestmark = pytest.mark.fuzz

LIMITS = {"max_request_line": 256, "max_head": 1024, "max_headers": 16, "max_body": 4096}

Event = tuple[str, Any]


def drive(pieces: list[bytes]) -> tuple[list[Event], type[HttpError] | None]:
    """Feed ``pieces`` one by one, taking every request and body byte the parser hands out after each."""
    parser = RequestParser(**LIMITS)
    events: list[Event] = []
    body = b""
    current: Request | None = None
    try:
        for piece in pieces:
            parser.receive_data(piece)
            while True:
                if parser.body_complete:
                    if current is not None:
                        events.append(("body", body))
                        current, body = None, b""
                    request = parser.next_request()
                    if request is None:
                        break
                    check_head(request)
                    current = request
                    events.append(("head", (request.method, request.target, request.headers, request.chunked)))
                    continue
                data, done = parser.read_body()
                body += data
                assert current is not None
                if current.content_length is not None:
                    assert len(body) <= current.content_length
                assert len(body) <= LIMITS["max_body"]
                if not data and not done:
                    break
    except HttpError as exc:
        return events, type(exc)
    return events, None


def check_head(request: Request) -> None:
    assert request.version in ("1.0", "1.1")
    assert request.method
    assert request.method.isascii()
    assert request.target
    assert b" " not in request.target
    assert request.chunked == (request.content_length is None)
    if request.content_length is not None:
        assert 0 <= request.content_length <= LIMITS["max_body"]
    for name, value in request.headers:
        assert name == name.lower()
        assert value == value.strip(b" \t")
        assert b"\r" not in value
        assert b"\n" not in value


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


def inputs() -> st.SearchStrategy[tuple[bytes, list[int]]]:
    pipelines = st.lists(st.sampled_from(seeds.HTTP_REQUESTS), min_size=2, max_size=4).map(b"".join)
    data = st.one_of(fuzz_bytes(seeds.HTTP_REQUESTS, max_size=600), fuzz_bytes([b"".join(seeds.HTTP_REQUESTS)]))
    return st.tuples(st.one_of(data, pipelines), st.lists(st.integers(0, 4096), max_size=12))


def check_request_bytes(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    whole, whole_error = drive([data])
    split, split_error = drive(split_at(data, cuts))
    if whole_error is None and split_error is None:
        assert split == whole
    # byte by byte, now and then: the slowest client there is
    if not cuts and len(data) <= 300:
        drive([data[i : i + 1] for i in range(len(data))])


def test_http_request_parser(fuzz_report: FuzzReport) -> None:
    run_property(fuzz_report, "http/1.1 request parser", inputs(), check_request_bytes)
