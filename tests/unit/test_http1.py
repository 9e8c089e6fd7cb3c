"""The sans-IO HTTP/1.1 codec: request heads and bodies, limits, smuggling refusals, pipelining, response framing.

h11 (a dependency of httpx) serves as the independent other side: it writes requests our parser reads and reads the
responses our writer frames.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.errors import LocalProtocolError
from overlay_node.wire.http1 import (
    CONTINUE_RESPONSE,
    BodyTooLarge,
    HeadTooLarge,
    HttpError,
    Request,
    RequestLineTooLong,
    RequestParser,
    ResponseWriter,
    TooManyHeaders,
    UnsupportedTransferCoding,
    UnsupportedVersion,
    error_response,
)

GET = b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example\r\nUser-Agent:  test/1.0 \r\nAccept: */*\r\n\r\n"


def parse_one(data: bytes, **limits: int) -> tuple[Request, bytes]:
    """The first request of ``data`` and its whole body."""
    parser = RequestParser(**limits)
    parser.receive_data(data)
    request = parser.next_request()
    assert request is not None
    body, done = parser.read_body()
    assert done
    return request, body


def parse_all(data: bytes, step: int = 0, *, partial: bool = False, **limits: int) -> list[tuple[Request, bytes]]:
    """Every request of ``data`` (fed whole, or ``step`` bytes at a time) with its body; with ``partial``, an
    incomplete last request is fine."""
    parser = RequestParser(**limits)
    pieces = [data] if step <= 0 else [data[i : i + step] for i in range(0, len(data), step)]
    out: list[tuple[Request, bytes]] = []
    current: Request | None = None
    body = b""
    for piece in pieces:
        parser.receive_data(piece)
        while True:
            if current is None:
                current = parser.next_request()
                if current is None:
                    break
                body = b""
            data_piece, done = parser.read_body()
            body += data_piece
            if not done:
                break
            out.append((current, body))
            current = None
    assert partial or current is None, "a request was left incomplete"
    return out


def error_of(data: bytes, **limits: int) -> HttpError:
    with pytest.raises(HttpError) as info:
        parse_all(data, 0, partial=False, **limits)
    return info.value


# -- request heads ------------------------------------------------------------------------------------------------


def test_a_get_request_is_parsed() -> None:
    request, body = parse_one(GET)
    assert request.method == "GET"
    assert request.target == b"/a/b?x=1&y=2"
    assert (request.path, request.query) == (b"/a/b", b"x=1&y=2")
    assert request.version == "1.1"
    assert request.headers == [(b"host", b"example"), (b"user-agent", b"test/1.0"), (b"accept", b"*/*")]
    assert request.keep_alive
    assert not request.has_body
    assert not request.expect_continue
    assert request.content_length == 0
    assert not request.chunked
    assert body == b""


def test_header_names_are_lower_cased_and_order_kept() -> None:
    request, _ = parse_one(b"GET / HTTP/1.1\r\nHOST: h\r\nX-Two: 2\r\nx-one: 1\r\nX-Two: again\r\n\r\n")
    assert request.headers == [(b"host", b"h"), (b"x-two", b"2"), (b"x-one", b"1"), (b"x-two", b"again")]


def test_obs_text_and_empty_values_are_allowed() -> None:
    request, _ = parse_one(b"GET / HTTP/1.1\r\nHost: h\r\nX-Latin: caf\xe9\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n")
    assert request.headers[1:] == [(b"x-latin", b"caf\xe9"), (b"x-empty", b""), (b"x-tab", b"v")]


def test_absolute_form_and_asterisk_targets() -> None:
    request, _ = parse_one(b"GET http://example.com:80/p/q?z=9 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert (request.path, request.query) == (b"/p/q", b"z=9")
    request, _ = parse_one(b"GET https://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert request.path == b"/"
    request, _ = parse_one(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert request.path == b"*"


@pytest.mark.parametrize("target", [b"*", b"example.com:443", b"relative/path", b"mailto:x", b"/a\x7fb"])
def test_other_targets_are_refused(target: bytes) -> None:
    assert error_of(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n").http_status == 400


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, CLOSE\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive, close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", True),
    ],
)
def test_keep_alive_by_version_and_connection(head: bytes, keep_alive: bool) -> None:
    request, _ = parse_one(head)
    assert request.keep_alive is keep_alive


def test_http_1_0_needs_no_host_and_a_higher_minor_version_is_1_1() -> None:
    request, _ = parse_one(b"GET / HTTP/1.0\r\n\r\n")
    assert request.version == "1.0"
    assert request.headers == []
    request, _ = parse_one(b"GET / HTTP/1.7\r\nHost: h\r\n\r\n")
    assert request.version == "1.1"


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/3.1"])
def test_other_major_versions_are_505(version: bytes) -> None:
    error = error_of(b"GET / " + version + b"\r\nHost: h\r\n\r\n")
    assert isinstance(error, UnsupportedVersion)
    assert error.http_status == 505


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nX: y\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two Hosts
        b"GET /  HTTP/1.1\r\nHost: h\r\n\r\n",  # two spaces
        b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
        b" GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / http/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/11\r\nHost: h\r\n\r\n",
        b"GET /\r\nHost: h\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",  # not a token
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",  # whitespace before the colon (smuggling)
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nHost: h\r\n X-A: 1\r\n\r\n",  # a line starting with a blank
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nX-B: b\r\n\r\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",  # bare CR
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",  # NUL
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x1bb\r\n\r\n",  # a control character
        b"GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n: empty-name\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX\x80: v\r\n\r\n",  # non-token name
    ],
)
def test_malformed_heads_are_400(head: bytes) -> None:
    error = error_of(head)
    assert type(error) is HttpError
    assert error.http_status == 400
    assert error.code == "bad_request"


def test_empty_lines_before_a_request_are_ignored() -> None:
    [(request, _)] = parse_all(b"\r\n\r\n" + GET)
    assert request.method == "GET"
    # also when they arrive one byte at a time, and after a body (some clients add a CRLF after a POST body)
    post = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok\r\n"
    assert [r.method for r, _ in parse_all(b"\r\n" + post + GET, step=1)] == ["POST", "GET"]


# -- limits -------------------------------------------------------------------------------------------------------


def test_a_long_request_line_is_414_before_the_head_is_complete() -> None:
    parser = RequestParser(max_request_line=100, max_head=1000)
    parser.receive_data(b"GET /" + b"a" * 200)  # no line end yet
    with pytest.raises(RequestLineTooLong) as info:
        parser.next_request()
    assert info.value.http_status == 414


def test_a_long_request_line_in_a_complete_head_is_414() -> None:
    error = error_of(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n", max_request_line=100)
    assert isinstance(error, RequestLineTooLong)


def test_the_request_line_limit_is_inclusive() -> None:
    line = b"GET /" + b"a" * 86 + b" HTTP/1.1"
    assert len(line) == 100
    request, _ = parse_one(line + b"\r\nHost: h\r\n\r\n", max_request_line=100)
    assert request.path == b"/" + b"a" * 86


def test_a_large_head_is_431_complete_or_not() -> None:
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"v" * 2000
    parser = RequestParser(max_head=1024)
    parser.receive_data(big)
    with pytest.raises(HeadTooLarge) as info:
        parser.next_request()
    assert info.value.http_status == 431
    assert isinstance(error_of(big + b"\r\n\r\n", max_head=1024), HeadTooLarge)
    request, _ = parse_one(big + b"\r\n\r\n", max_head=4096)
    assert request.headers[-1] == (b"x-big", b"v" * 2000)


def test_too_many_headers_is_431() -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(20)) + b"\r\n"
    error = error_of(head, max_headers=20)
    assert isinstance(error, TooManyHeaders)
    assert error.http_status == 431
    assert len(parse_one(head, max_headers=21)[0].headers) == 21


def test_a_declared_body_over_the_limit_is_413_at_the_head() -> None:
    parser = RequestParser(max_body=1000)
    parser.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1001\r\n\r\n")
    with pytest.raises(BodyTooLarge) as info:
        parser.next_request()
    assert info.value.http_status == 413
    _, body = parse_one(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000, max_body=1000)
    assert len(body) == 1000


def test_a_chunked_body_over_the_limit_is_413_as_soon_as_a_chunk_says_so() -> None:
    parser = RequestParser(max_body=1000)
    parser.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert parser.next_request() is not None
    parser.receive_data(b"200\r\n" + b"x" * 0x200 + b"\r\n")
    assert parser.read_body() == (b"x" * 0x200, False)
    parser.receive_data(b"1F5\r\n")  # 512 + 501 > 1000: refused before the data arrives
    with pytest.raises(BodyTooLarge):
        parser.read_body()


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        RequestParser(max_head=0)


# -- framing and smuggling ------------------------------------------------------------------------------------------

POST = b"POST /submit HTTP/1.1\r\nHost: h\r\n"


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: 5\r\nContent-Length: 5\r\n",  # duplicate, even equal
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: 5, 5\r\n",
        b"Content-Length: +5\r\n",
        b"Content-Length: -5\r\n",
        b"Content-Length: 0x5\r\n",
        b"Content-Length: 5 5\r\n",
        b"Content-Length: \r\n",
        b"Content-Length: 1234567890123456789\r\n",  # more digits than any limit
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",  # CL.TE
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",  # TE.CL
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked, chunked\r\n",
        b"Transfer-Encoding: chunked, gzip\r\n",  # chunked not last: the length is unknowable
        b"Transfer-Encoding: xchunked\r\n",
        b"Transfer-Encoding: \r\n",
        b"Transfer-Encoding : chunked\r\n",
        b"Transfer-Encoding:\x0bchunked\r\n",
    ],
)
def test_ambiguous_framing_is_refused(headers: bytes) -> None:
    error = error_of(POST + headers + b"\r\nhello")
    assert error.http_status == 400


def test_transfer_encoding_in_http_1_0_is_refused() -> None:
    assert error_of(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").http_status == 400


def test_other_transfer_codings_are_501() -> None:
    error = error_of(POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
    assert isinstance(error, UnsupportedTransferCoding)
    assert error.http_status == 501


def test_transfer_encoding_is_case_insensitive() -> None:
    request, body = parse_one(POST + b"Transfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert request.chunked
    assert request.content_length is None
    assert body == b"abc"


@pytest.mark.parametrize(
    "chunks",
    [
        b"0x3\r\nabc\r\n0\r\n\r\n",
        b"-3\r\nabc\r\n0\r\n\r\n",
        b"+3\r\nabc\r\n0\r\n\r\n",
        b" 3\r\nabc\r\n0\r\n\r\n",
        b"\r\nabc\r\n0\r\n\r\n",
        b"3\nabc\r\n0\r\n\r\n",  # bare LF after the size
        b"3\r\nabcX\r\n0\r\n\r\n",  # data longer than the size
        b"3\r\nabc\n0\r\n\r\n",
        b"1000000000000000\r\n",  # 16 hex digits
        b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
        b"3\r\nabc\r\n0\r\nX: a\nb\r\n\r\n",
        b"3;ext\x00\r\nabc\r\n0\r\n\r\n",
        b"g\r\n",
    ],
)
def test_malformed_chunked_bodies_are_refused(chunks: bytes) -> None:
    error = error_of(POST + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert error.http_status in (400, 413)


def test_a_long_chunk_size_line_is_refused() -> None:
    assert error_of(POST + b"Transfer-Encoding: chunked\r\n\r\n3;" + b"e" * 2000).http_status == 400


def test_chunk_extensions_and_trailers_are_accepted_and_dropped() -> None:
    body = b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    request, got = parse_one(POST + b"Transfer-Encoding: chunked\r\n\r\n" + body)
    assert got == b"hello world"
    assert (b"x-checksum", b"abc") not in request.headers


def test_trailers_are_bounded() -> None:
    trailers = b"".join(b"X-%d: v\r\n" % i for i in range(50))
    data = POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\n" + trailers + b"\r\n"
    assert isinstance(error_of(data, max_headers=10), TooManyHeaders)
    assert isinstance(error_of(data, max_head=200), HeadTooLarge)


def test_a_chunked_body_is_decoded_whatever_the_byte_boundaries() -> None:
    body = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (b"a", b"bc" * 40, b"\r\n0\r\n", b"z" * 300))
    data = POST + b"Transfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"
    expected = b"a" + b"bc" * 40 + b"\r\n0\r\n" + b"z" * 300
    for step in (1, 2, 3, 7, 64, 0):
        [(_, got)] = parse_all(data, step=step)
        assert got == expected


def test_expect_100_continue() -> None:
    request, _ = parse_one(POST + b"Expect: 100-Continue\r\nContent-Length: 2\r\n\r\nok")
    assert request.expect_continue
    # only with a body, only in HTTP/1.1
    assert not parse_one(POST + b"Expect: 100-continue\r\n\r\n")[0].expect_continue
    assert not parse_one(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok")[0].expect_continue
    assert CONTINUE_RESPONSE == b"HTTP/1.1 100 Continue\r\n\r\n"


# -- bodies and pipelining ------------------------------------------------------------------------------------------


def test_a_content_length_body_is_handed_out_as_it_arrives() -> None:
    parser = RequestParser()
    parser.receive_data(POST + b"Content-Length: 10\r\n\r\n0123")
    request = parser.next_request()
    assert request is not None
    assert request.content_length == 10
    assert parser.body_remaining == 10
    assert not parser.body_complete
    assert parser.read_body() == (b"0123", False)
    assert parser.read_body() == (b"", False)
    assert parser.body_remaining == 6
    with pytest.raises(LocalProtocolError):
        parser.next_request()  # the body is not complete
    parser.receive_data(b"456789GET")
    assert parser.read_body() == (b"456789", True)
    assert (parser.body_complete, parser.buffered) == (True, 3)
    assert parser.next_request() is None  # the next head is incomplete


def test_pipelined_requests_come_out_in_order() -> None:
    data = (
        GET
        + POST
        + b"Content-Length: 5\r\n\r\nhello"
        + POST
        + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        + b"HEAD /h HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    for step in (0, 1, 5, 17):
        got = parse_all(data, step=step)
        assert [(r.method, r.path, b) for r, b in got] == [
            ("GET", b"/a/b", b""),
            ("POST", b"/submit", b"hello"),
            ("POST", b"/submit", b"abc"),
            ("HEAD", b"/h", b""),
        ]
        assert [r.keep_alive for r, _ in got] == [True, True, True, False]


def test_a_partial_head_waits_for_more() -> None:
    parser = RequestParser()
    for i in range(len(GET) - 1):
        parser.receive_data(GET[i : i + 1])
        assert parser.next_request() is None
    parser.receive_data(GET[-1:])
    assert parser.next_request() is not None


# -- hypothesis: round trips through h11, and garbage ------------------------------------------------------------------

tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
values = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c >= 0x21 and c != 0x7F))
paths = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~%/", max_size=40).map(lambda p: "/" + p)
queries = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789=&%", max_size=20)
reserved = {"host", "content-length", "transfer-encoding", "connection", "expect"}


@st.composite
def h11_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """One or more requests written by h11 (the client side), and what each should parse as."""
    wire = b""
    expected: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "X-CUSTOM"]))
        path = draw(paths)
        query = draw(queries)
        target = path + ("?" + query if query else "")
        extra = draw(st.lists(st.tuples(tokens.filter(lambda t: t not in reserved), values), max_size=6))
        body = draw(st.binary(max_size=300)) if method in ("POST", "PUT", "PATCH") else b""
        chunked = bool(body) and draw(st.booleans())
        headers: list[tuple[bytes, bytes]] = [(b"Host", b"example.org"), *[(n.encode(), v) for n, v in extra]]
        if chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        elif body:
            headers.append((b"Content-Length", str(len(body)).encode()))
        client = h11.Connection(h11.CLIENT)
        wire += client.send(h11.Request(method=method, target=target, headers=headers))
        if chunked:
            cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
            for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
                if b > a:
                    wire += client.send(h11.Data(data=body[a:b]))
        elif body:
            wire += client.send(h11.Data(data=body))
        wire += client.send(h11.EndOfMessage())
        expected.append(
            {
                "method": method,
                "path": path.encode(),
                "query": query.encode(),
                "headers": [(n.lower(), v) for n, v in headers],
                "body": body,
                "chunked": chunked,
            }
        )
    step = draw(st.integers(0, 50))
    return wire, {"requests": expected, "step": step}


@settings(max_examples=300, deadline=None)
@given(h11_requests())
def test_requests_written_by_h11_round_trip(case: tuple[bytes, dict[str, Any]]) -> None:
    wire, spec = case
    got = parse_all(wire, step=spec["step"])
    assert len(got) == len(spec["requests"])
    for (request, body), want in zip(got, spec["requests"], strict=True):
        assert request.method == want["method"]
        assert (request.path, request.query) == (want["path"], want["query"])
        assert request.headers == want["headers"]
        assert body == want["body"]
        assert request.chunked is want["chunked"]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 40))
def test_garbage_only_ever_raises_http_error(data: bytes, step: int) -> None:
    try:
        parse_all(data, step=step, partial=True, max_head=256, max_request_line=64, max_headers=8, max_body=128)
    except HttpError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_mutated_requests_only_ever_raise_http_error(data: st.DataObject) -> None:
    base = data.draw(
        st.sampled_from(
            [
                GET,
                POST + b"Content-Length: 5\r\n\r\nhello",
                POST + b"Transfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
            ]
        )
    )
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = data.draw(st.sampled_from([0, 9, 10, 13, 32, 44, 48, 58, 59, 65, 102, 127, 255]))
        if op == "flip":
            raw[i] = byte
        elif op == "insert":
            raw.insert(i, byte)
        elif len(raw) > 1:
            del raw[i]
    try:
        parse_all(bytes(raw), step=data.draw(st.integers(0, 9)), partial=True)
    except HttpError:
        pass


# -- responses -------------------------------------------------------------------------------------------------------


def h11_read(wire: bytes, *, method: str = "GET", http10: bool = False) -> tuple[h11.Response, bytes, bool]:
    """Read one response with h11's client side: the response, its body, whether h11 would keep the
    connection."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "h")]))
    client.send(h11.EndOfMessage())
    if http10:
        client.their_http_version = b"1.0"
    client.receive_data(wire)
    client.receive_data(b"")  # the end of the connection delimits an HTTP/1.0 body
    response = client.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"unexpected {event!r}")
    return response, body, client.our_state is h11.DONE and client.their_state is h11.DONE


def write(writer: ResponseWriter, status: int, headers: list[tuple[bytes, bytes]], pieces: list[bytes]) -> bytes:
    writer.start(status, headers)
    out = b""
    for i, piece in enumerate(pieces):
        out += b"".join(writer.body(piece, i < len(pieces) - 1))
    assert writer.complete
    return out


def test_a_one_piece_body_gets_a_content_length_and_is_one_write() -> None:
    writer = ResponseWriter(head_request=False, http11=True, keep_alive=True, date=b"Tue, 01 Jan 2030 00:00:00 GMT")
    writer.start(200, [(b"content-type", b"application/json")])
    out = writer.body(b'{"ok":true}', False)
    assert len(out) == 1
    assert out[0] == (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: Tue, 01 Jan 2030 00:00:00 GMT\r\n"
        b'content-length: 11\r\n\r\n{"ok":true}'
    )
    assert writer.keep_alive
    assert writer.started
    assert writer.complete


def test_a_streamed_body_is_chunked_piece_by_piece() -> None:
    writer = ResponseWriter(head_request=False, http11=True, keep_alive=True)
    writer.start(200, [(b"content-type", b"application/x-ndjson")])
    first = b"".join(writer.body(b'{"event":"a"}\n', True))
    assert first.endswith(b"transfer-encoding: chunked\r\n\r\ne\r\n" + b'{"event":"a"}\n' + b"\r\n")
    assert writer.body(b"", True) == []  # an empty piece sends nothing (a zero chunk would end the body)
    assert writer.body(b"b\n", True) == [b"2\r\nb\n\r\n"]
    assert writer.body(b"", False) == [b"0\r\n\r\n"]
    response, body, keep = h11_read(first + b"2\r\nb\n\r\n0\r\n\r\n")
    assert (response.status_code, body, keep) == (200, b'{"event":"a"}\nb\n', True)


def test_the_apps_content_length_is_kept_and_held_to() -> None:
    writer = ResponseWriter(head_request=False, http11=True, keep_alive=True)
    wire = write(writer, 206, [(b"content-length", b"6"), (b"content-range", b"bytes 0-5/10")], [b"abc", b"def"])
    response, body, _ = h11_read(wire)
    assert response.status_code == 206
    assert body == b"abcdef"
    assert (b"content-length", b"6") in response.headers
    assert b"chunked" not in wire
    too_much = ResponseWriter(head_request=False, http11=True, keep_alive=True)
    too_much.start(200, [(b"content-length", b"2")])
    with pytest.raises(LocalProtocolError):
        too_much.body(b"abc", False)
    too_little = ResponseWriter(head_request=False, http11=True, keep_alive=True)
    too_little.start(200, [(b"content-length", b"4")])
    too_little.body(b"ab", True)
    with pytest.raises(LocalProtocolError):
        too_little.body(b"", False)
    assert not too_little.keep_alive


def test_http_1_0_streams_are_delimited_by_the_close() -> None:
    writer = ResponseWriter(head_request=False, http11=False, keep_alive=True)
    wire = write(writer, 200, [], [b"one", b"two"])
    assert b"chunked" not in wire
    assert b"connection: close\r\n" in wire
    assert not writer.keep_alive
    _, body, _ = h11_read(wire, http10=True)
    assert body == b"onetwo"
    # a one-piece body keeps an HTTP/1.0 keep-alive connection, and says so
    writer = ResponseWriter(head_request=False, http11=False, keep_alive=True)
    wire = write(writer, 200, [], [b"one"])
    assert b"connection: keep-alive\r\n" in wire
    assert b"content-length: 3\r\n" in wire
    assert writer.keep_alive


def test_head_answers_carry_no_body() -> None:
    writer = ResponseWriter(head_request=True, http11=True, keep_alive=True)
    wire = write(writer, 200, [(b"content-type", b"text/plain")], [b"hello"])
    assert wire.endswith(b"content-length: 5\r\n\r\n")
    writer = ResponseWriter(head_request=True, http11=True, keep_alive=True)
    wire = write(writer, 200, [(b"content-length", b"123")], [b""])
    assert wire.endswith(b"content-length: 123\r\n\r\n")
    writer = ResponseWriter(head_request=True, http11=True, keep_alive=True)
    wire = write(writer, 200, [], [b"a", b"b", b""])
    assert wire.endswith(b"transfer-encoding: chunked\r\n\r\n")
    _, body, keep = h11_read(wire, method="HEAD")
    assert body == b""
    assert keep


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_carry_no_body_and_no_length(status: int) -> None:
    writer = ResponseWriter(head_request=False, http11=True, keep_alive=True)
    wire = write(writer, status, [(b"etag", b'"x"')], [b""])
    assert wire == b'HTTP/1.1 %d %b\r\netag: "x"\r\n\r\n' % (
        status,
        b"No Content" if status == 204 else b"Not Modified",
    )
    response, body, keep = h11_read(wire)
    assert response.status_code == status
    assert body == b""
    assert keep


def test_connection_close_from_the_app_or_the_server() -> None:
    writer = ResponseWriter(head_request=False, http11=True, keep_alive=True)
    wire = write(writer, 200, [(b"connection", b"Close")], [b"x"])
    assert not writer.keep_alive
    assert wire.count(b"connection") == 1
    assert b"connection: close\r\n" in wire
    writer = ResponseWriter(head_request=False, http11=True, keep_alive=True)
    writer.keep_alive = False  # decided by the server before the head goes out
    wire = write(writer, 200, [(b"transfer-encoding", b"chunked")], [b"x"])
    assert b"connection: close\r\n" in wire
    assert b"transfer-encoding" not in wire
    _, body, keep = h11_read(wire)
    assert body == b"x"
    assert not keep


def test_a_streamed_answer_can_send_its_head_first() -> None:
    writer = ResponseWriter(head_request=False, http11=True, keep_alive=True)
    writer.start(200, [(b"content-type", b"application/x-ndjson")])
    assert writer.declared_length is None
    head = writer.head()
    assert head.endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert writer.started
    with pytest.raises(LocalProtocolError):
        writer.head()
    assert writer.body(b"a\n", True) == [b"2\r\na\n\r\n"]
    assert writer.body(b"", False) == [b"0\r\n\r\n"]
    with_length = ResponseWriter(head_request=False, http11=True, keep_alive=True)
    with_length.start(200, [(b"Content-Length", b"7")])
    assert with_length.declared_length == 7
    with pytest.raises(LocalProtocolError):
        ResponseWriter(head_request=False, http11=True, keep_alive=True).head()


def test_an_unknown_status_has_an_empty_reason() -> None:
    writer = ResponseWriter(head_request=False, http11=True, keep_alive=True)
    assert write(writer, 599, [], [b""]).startswith(b"HTTP/1.1 599 \r\n")


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-a", b"v\r\nSet-Cookie: injected")],
        [(b"x-a", b"v\nx")],
        [(b"x-a", b"v\rx")],
        [(b"x-a", b"v\x00")],
        [(b"x a", b"v")],
        [(b"", b"v")],
        [(b"content-length", b"-1")],
        [(b"content-length", b"1"), (b"content-length", b"1")],
        [("x-str", "not bytes")],
    ],
)
def test_invalid_response_headers_are_our_error(headers: list[tuple[Any, Any]]) -> None:
    writer = ResponseWriter(head_request=False, http11=True, keep_alive=True)
    with pytest.raises(LocalProtocolError):
        writer.start(200, headers)


def test_response_misuse_is_our_error() -> None:
    writer = ResponseWriter(head_request=False, http11=True, keep_alive=True)
    with pytest.raises(LocalProtocolError):
        writer.body(b"x", False)  # before start
    for status in (100, 101, 199, 1000, -1):
        with pytest.raises(LocalProtocolError):
            ResponseWriter(head_request=False, http11=True, keep_alive=True).start(status, [])
    writer.start(200, [])
    with pytest.raises(LocalProtocolError):
        writer.start(200, [])
    writer.body(b"", False)
    with pytest.raises(LocalProtocolError):
        writer.body(b"", False)


def test_error_responses_are_json_and_close() -> None:
    wire = error_response(413, "body_too_large", "too big", date=b"D")
    response, body, keep = h11_read(wire)
    assert response.status_code == 413
    assert not keep
    assert body == b'{"status": "error", "code": "body_too_large", "message": "too big"}'
    assert (b"content-type", b"application/json") in response.headers


@settings(max_examples=200, deadline=None)
@given(
    status=st.sampled_from([200, 201, 202, 204, 206, 304, 400, 404, 500, 503]),
    pieces=st.lists(st.binary(max_size=100), min_size=1, max_size=5),
    declare=st.booleans(),
    head=st.booleans(),
    http10=st.booleans(),
    extra=st.lists(st.tuples(tokens.filter(lambda t: t not in reserved), values), max_size=4),
)
def test_responses_round_trip_through_h11(
    status: int, pieces: list[bytes], declare: bool, head: bool, http10: bool, extra: list[tuple[str, bytes]]
) -> None:
    total = b"".join(pieces)
    headers = [(n.encode(), v) for n, v in extra]
    if declare:
        headers.append((b"content-length", str(len(total)).encode()))
    writer = ResponseWriter(head_request=head, http11=not http10, keep_alive=True)
    wire = write(writer, status, headers, pieces)
    response, body, _ = h11_read(wire, method="HEAD" if head else "GET", http10=http10)
    assert response.status_code == status
    assert body == (b"" if head or status in (204, 304) else total)
    got = [(n, v) for n, v in response.headers if n not in (b"content-length", b"transfer-encoding", b"connection")]
    assert got == [(n.lower(), v.strip(b" \t")) for n, v in headers if n != b"content-length"]
