"""HTTP/1.1 for a server, sans-IO (RFC 9112): request bytes in, request heads and body pieces out; responses framed.

Invariants:

1. :class:`RequestParser` takes bytes (:meth:`~RequestParser.receive_data`) and returns, in turn, one
   :class:`Request` (:meth:`~RequestParser.next_request`) and then that request's body, piece by piece
   (:meth:`~RequestParser.read_body`), until the body is complete; only then does the next request of a pipeline
   start. It never looks at a clock and never touches a socket.
2. Any input bytes give either progress or :class:`HttpError` (a :class:`~overlay_node.errors.RemoteProtocolError`
   carrying the ``http_status`` to answer with, and a ``code``); nothing else escapes. After an :class:`HttpError`
   the parser is unusable: answer the status with ``Connection: close`` and close.
3. Limits are checked before the bytes they guard are kept or parsed: the request line (414), the whole head
   (431), the number of header lines (431), the body size, declared or chunked (413).
4. Framing is unambiguous or refused (request smuggling): a duplicate ``Content-Length``, a ``Content-Length``
   beside ``Transfer-Encoding``, a non-digit length, ``Transfer-Encoding`` whose last coding is not ``chunked``
   or that repeats, ``Transfer-Encoding`` on HTTP/1.0, whitespace before a header's colon, folded (obs-fold)
   lines, bare CR or LF, and control characters are all errors. An HTTP/1.1 request without exactly one ``Host``
   is an error. Codings other than ``chunked`` are 501.
5. Header names are lower-cased, values stripped of surrounding blanks; headers keep their order.
6. :class:`ResponseWriter` frames one response to one request: it holds the status line and headers back until
   the first body piece (or an explicit :meth:`~ResponseWriter.head`, for a streamed answer), so that a one-piece
   body goes out as one write; the app's ``Content-Length`` is kept (and held to), a one-piece body without one gets
   one, anything else is chunked (HTTP/1.1) or delimited by closing the connection (HTTP/1.0). HEAD, 204 and 304
   answers carry no body bytes. Header names and values are checked (no line break can be smuggled into the head).
   Misuse (an invalid status or header, more or fewer bytes than the declared length) raises
   :class:`~overlay_node.errors.LocalProtocolError`.

Theory of operation (the I/O shell in ``overlay_node/net/http_server.py``): feed what the socket gives; call
:meth:`RequestParser.next_request` until it returns a request (``None``: read more); hand the body out with
:meth:`RequestParser.read_body` as the application asks for it (``(b"", False)``: read more); when the response is
done and the body complete (or drained), call :meth:`RequestParser.next_request` again. Send
:data:`CONTINUE_RESPONSE` first when the request expects it and the application reads the body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from overlay_node.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CONTINUE_RESPONSE",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HEAD",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_REQUEST_LINE",
    "BodyTooLarge",
    "HeadTooLarge",
    "HttpError",
    "Request",
    "RequestLineTooLong",
    "RequestParser",
    "ResponseWriter",
    "TooManyHeaders",
    "UnsupportedTransferCoding",
    "UnsupportedVersion",
    "error_response",
]

#: longest request line (method, target, version), in bytes
DEFAULT_MAX_REQUEST_LINE: Final = 8 * 1024
#: largest request head (request line, headers, the blank line), in bytes; the same bound holds a chunked body's
#: trailers
DEFAULT_MAX_HEAD: Final = 16 * 1024
#: most header lines in one request head
DEFAULT_MAX_HEADERS: Final = 100
#: largest request body, in bytes (the applications enforce their own, smaller limits)
DEFAULT_MAX_BODY: Final = 1024 * 1024 * 1024
#: longest chunk-size line of a chunked body (size and extensions)
MAX_CHUNK_LINE: Final = 1024
#: the interim answer to ``Expect: 100-continue``
CONTINUE_RESPONSE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
#: header lines, each ending in CRLF: a token, a colon at once, a value of visible characters, blanks and obs-text
_HEADER_LINES: Final = re.compile(rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")
_EMPTY_LINES: Final = re.compile(rb"(?:\r\n)*")
_ABSOLUTE: Final = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")
_METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
_FRAMING: Final = frozenset((b"content-length", b"transfer-encoding", b"connection", b"expect", b"host"))
_NO_BODY_STATUS: Final = frozenset((204, 304))


class HttpError(RemoteProtocolError):
    """The client's bytes break HTTP/1.1 (or a limit): answer ``http_status`` with ``Connection: close``, then
    close. The subclasses name the limits; this class itself is a malformed request (400)."""

    code = "bad_request"
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=self.code)


class RequestLineTooLong(HttpError):
    """The request line (in practice the target) is longer than the parser's limit."""

    code = "uri_too_long"
    http_status = 414


class HeadTooLarge(HttpError):
    """The request head (or a chunked body's trailers) is larger than the parser's limit."""

    code = "headers_too_large"
    http_status = 431


class TooManyHeaders(HttpError):
    """The request head has more header lines than the parser's limit."""

    code = "headers_too_large"
    http_status = 431


class BodyTooLarge(HttpError):
    """The request body (declared by ``Content-Length`` or counted while de-chunking) is over the limit."""

    code = "body_too_large"
    http_status = 413


class UnsupportedVersion(HttpError):
    """A well-formed HTTP version other than 1.x."""

    code = "http_version"
    http_status = 505


class UnsupportedTransferCoding(HttpError):
    """``Transfer-Encoding`` names a coding other than ``chunked`` (compressed request bodies are not decoded)."""

    code = "not_implemented"
    http_status = 501


@dataclass(slots=True, kw_only=True)
class Request:
    """One request head. Not frozen: one is built per request on the hot path (a frozen dataclass pays one
    ``object.__setattr__`` per field); treat it as read-only."""

    #: the method, as sent (a token; case-sensitive)
    method: str
    #: the request-target, as sent
    target: bytes
    #: the target's path, still percent-encoded (``*`` for ``OPTIONS *``; absolute-form targets give their path)
    path: bytes
    #: what follows ``?`` in the target, without it
    query: bytes
    #: ``"1.1"`` or ``"1.0"``
    version: str
    #: ``(lower-cased name, stripped value)`` in order
    headers: list[tuple[bytes, bytes]]
    #: whether the client allows the connection to stay open after this exchange
    keep_alive: bool
    #: the declared body length; ``None`` for a chunked body (and 0 when the request has no body)
    content_length: int | None
    #: whether the body is chunked
    chunked: bool
    #: whether the client waits for ``100 Continue`` before sending the body (HTTP/1.1, with a body)
    expect_continue: bool

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


# parser states
_HEAD: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
# chunked sub-states
_SIZE: Final = 0
_DATA: Final = 1
_DATA_END: Final = 2
_TRAILERS: Final = 3


def _request_line(buf: bytes, line_end: int) -> tuple[str, bytes, bytes, bytes, bool]:
    """``(method, target, path, query, http11)`` of the request line ``buf[:line_end]``."""
    m = _REQUEST_LINE.fullmatch(buf, 0, line_end)
    if m is None:
        raise HttpError("malformed request line")
    raw_method, target, major, minor = m.groups()
    if major != b"1":
        raise UnsupportedVersion(f"HTTP/{major.decode()}.{minor.decode()} is not supported: use HTTP/1.1")
    http11 = minor != b"0"  # a higher minor version is treated as 1.1 (RFC 9110 section 2.5)
    method = _METHODS.get(raw_method) or raw_method.decode("ascii")
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
    elif target == b"*" and method == "OPTIONS":
        path, query = target, b""
    else:
        a = _ABSOLUTE.match(target)
        if a is None:
            raise HttpError("the request target must be a path or an absolute URL")
        path, _, query = target[a.end() :].partition(b"?")
        path = path or b"/"
    return method, target, path, query, http11


def _message_framing(
    fields: list[tuple[bytes, bytes]], http11: bool, max_body: int
) -> tuple[int | None, bool, bool, bool]:
    """``(content_length, chunked, keep_alive, expect_continue)`` from the framing header fields, in order
    (invariant 4; ``content_length`` is None for a chunked body)."""
    content_length: int | None = 0
    seen_length = chunked = expect_continue = False
    keep_alive = http11
    hosts = 0
    for name, value in fields:
        if name == b"content-length":
            if seen_length:
                raise HttpError("duplicate Content-Length")
            seen_length = True
            content_length = _content_length(value, max_body)
        elif name == b"transfer-encoding":
            if chunked:
                raise HttpError("duplicate Transfer-Encoding")
            _check_transfer_coding(value)
            chunked = True
        elif name == b"connection":
            keep_alive = _keep_alive(value, keep_alive, http11)
        elif name == b"expect":
            expect_continue = value.lower() == b"100-continue"
        else:  # host
            hosts += 1
    if chunked:
        if seen_length:
            raise HttpError("Content-Length beside Transfer-Encoding")
        if not http11:
            raise HttpError("Transfer-Encoding in an HTTP/1.0 request")
        content_length = None
    if http11 and hosts != 1:
        raise HttpError("an HTTP/1.1 request needs exactly one Host header")
    return content_length, chunked, keep_alive, expect_continue and http11 and (chunked or bool(content_length))


def _content_length(value: bytes, max_body: int) -> int:
    if not value.isdigit() or len(value) > 18:
        raise HttpError("Content-Length must be a decimal number")
    length = int(value)
    if length > max_body:
        raise BodyTooLarge(f"request body over {max_body} bytes")
    return length


def _check_transfer_coding(value: bytes) -> None:
    """``Transfer-Encoding`` must be ``chunked`` alone: other codings are refused."""
    codings = [c.strip(b" \t") for c in value.lower().split(b",")]
    if codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
        raise HttpError("Transfer-Encoding must end with chunked, once")
    if len(codings) > 1:
        raise UnsupportedTransferCoding("only the chunked transfer coding is supported")


def _keep_alive(value: bytes, keep_alive: bool, http11: bool) -> bool:
    """Whether the connection stays open after a ``Connection`` header with ``value`` (``keep_alive``: so far)."""
    for option in value.lower().split(b","):
        option = option.strip(b" \t")
        if option == b"close":
            return False
        if option == b"keep-alive" and not http11:
            keep_alive = True
    return keep_alive


class RequestParser:
    """Requests of one connection, in order (see the module's invariants).

    Args:
        max_request_line: longest request line (414 beyond it).
        max_head: largest head, and largest trailer section of a chunked body (431 beyond it).
        max_headers: most header lines (431 beyond it).
        max_body: largest body (413 beyond it).
    """

    __slots__ = (
        "_body_seen",
        "_buf",
        "_chunk_state",
        "_remaining",
        "_scanned",
        "_state",
        "_trailer_bytes",
        "_trailer_lines",
        "max_body",
        "max_head",
        "max_headers",
        "max_request_line",
    )

    def __init__(
        self,
        *,
        max_request_line: int = DEFAULT_MAX_REQUEST_LINE,
        max_head: int = DEFAULT_MAX_HEAD,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        if min(max_request_line, max_head, max_headers) < 1 or max_body < 0:
            raise LocalProtocolError("http limits must be positive")
        self.max_request_line = max_request_line
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_body = max_body
        self._buf = b""
        #: how far the current head was searched for its end without finding it
        self._scanned = 0
        self._state = _HEAD
        #: body bytes left: of the declared length, or of the current chunk
        self._remaining = 0
        self._body_seen = 0
        self._chunk_state = _SIZE
        self._trailer_bytes = 0
        self._trailer_lines = 0

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the connection."""
        self._buf = self._buf + data if self._buf else data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out."""
        return len(self._buf)

    @property
    def body_complete(self) -> bool:
        """Whether the current request's body has been handed out whole (true between requests)."""
        return self._state == _HEAD

    @property
    def body_remaining(self) -> int | None:
        """Body bytes still to come for a ``Content-Length`` body, ``None`` for a chunked one, 0 when complete."""
        if self._state == _LENGTH:
            return self._remaining
        return None if self._state == _CHUNKED else 0

    def next_request(self) -> Request | None:
        """The next request head, or ``None`` when more bytes are needed.

        Raises:
            HttpError: malformed, over a limit, or with ambiguous framing (see the module's invariants).
            LocalProtocolError: the previous request's body is not complete yet (our misuse).
        """
        if self._state != _HEAD:
            raise LocalProtocolError("the previous request's body is not complete")
        buf = self._buf
        if buf[:2] == b"\r\n":
            # a server should ignore empty lines before a request line (RFC 9112 section 2.2): clients send one
            # after a POST body now and then
            empty = _EMPTY_LINES.match(buf)
            buf = self._buf = buf[empty.end() :] if empty else buf
            self._scanned = 0
        end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            size = len(buf)
            if size > self.max_head:
                raise HeadTooLarge(f"request head over {self.max_head} bytes")
            if size > self.max_request_line and buf.find(b"\r\n", 0, self.max_request_line + 2) < 0:
                raise RequestLineTooLong(f"request line over {self.max_request_line} bytes")
            self._scanned = size
            return None
        if end + 4 > self.max_head:
            raise HeadTooLarge(f"request head over {self.max_head} bytes")
        self._scanned = 0
        line_end = buf.find(b"\r\n")
        if line_end > self.max_request_line:
            raise RequestLineTooLong(f"request line over {self.max_request_line} bytes")
        request = self._parse_head(buf, line_end, end)
        self._buf = buf[end + 4 :]
        if request.chunked:
            self._state = _CHUNKED
            self._chunk_state = _SIZE
            self._body_seen = 0
            self._trailer_bytes = 0
            self._trailer_lines = 0
        elif request.content_length:
            self._state = _LENGTH
            self._remaining = request.content_length
        return request

    def _parse_head(self, buf: bytes, line_end: int, end: int) -> Request:
        method, target, path, query, http11 = _request_line(buf, line_end)
        # the header lines as (name, value) pairs (invariant 5): all of them, and the ones that frame the message
        headers: list[tuple[bytes, bytes]] = []
        framing: list[tuple[bytes, bytes]] = []
        if line_end < end:
            if _HEADER_LINES.fullmatch(buf, line_end + 2, end + 2) is None:
                raise HttpError("malformed header line")
            lines = buf[line_end + 2 : end].split(b"\r\n")
            if len(lines) > self.max_headers:
                raise TooManyHeaders(f"more than {self.max_headers} header lines")
            for line in lines:
                raw_name, _, value = line.partition(b":")
                name = raw_name.lower()
                field = (name, value.strip(b" \t"))
                headers.append(field)
                if name in _FRAMING:
                    framing.append(field)
        content_length, chunked, keep_alive, expect_continue = _message_framing(framing, http11, self.max_body)
        return Request(
            method=method,
            target=target,
            path=path,
            query=query,
            version="1.1" if http11 else "1.0",
            headers=headers,
            keep_alive=keep_alive,
            content_length=content_length,
            chunked=chunked,
            expect_continue=expect_continue,
        )

    def read_body(self) -> tuple[bytes, bool]:
        """The body bytes received so far and not yet handed out, and whether the body is now complete.

        ``(b"", False)`` means: read more. Between requests (or for a request without a body) it is
        ``(b"", True)``.

        Raises:
            HttpError: a malformed chunked body; BodyTooLarge: the chunks add up to more than ``max_body``.
        """
        state = self._state
        if state == _LENGTH:
            buf = self._buf
            if not buf:
                return b"", False
            n = self._remaining
            if len(buf) <= n:
                self._buf = b""
                n -= len(buf)
                self._remaining = n
                if n == 0:
                    self._state = _HEAD
                return buf, n == 0
            self._buf = buf[n:]
            self._remaining = 0
            self._state = _HEAD
            return buf[:n], True
        if state == _CHUNKED:
            return self._read_chunked()
        return b"", True

    def _read_chunked(self) -> tuple[bytes, bool]:
        buf = self._buf
        pos = 0
        pieces: list[bytes] = []
        done = False
        cs = self._chunk_state
        while True:
            if cs == _SIZE:
                line_end = self._chunk_size_line(buf, pos)
                if line_end < 0:
                    break
                pos = line_end + 2
                cs = _DATA if self._remaining else _TRAILERS
            elif cs == _DATA:
                avail = len(buf) - pos
                if avail == 0:
                    break
                take = min(avail, self._remaining)
                pieces.append(buf[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    cs = _DATA_END
            elif cs == _DATA_END:
                if len(buf) - pos < 2:
                    if buf[pos:] not in (b"", b"\r"):
                        raise HttpError("chunk data not followed by CRLF")
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise HttpError("chunk data not followed by CRLF")
                pos += 2
                cs = _SIZE
            else:  # trailers
                line_end = self._trailer_line(buf, pos)
                if line_end < 0:
                    break
                done = line_end == pos  # the empty line that ends them
                pos = line_end + 2
                if done:
                    break
        self._chunk_state = cs
        self._buf = buf[pos:] if pos else buf
        if done:
            self._state = _HEAD
        if not pieces:
            return b"", done
        return (pieces[0] if len(pieces) == 1 else b"".join(pieces)), done

    def _chunk_size_line(self, buf: bytes, pos: int) -> int:
        """Where the chunk-size line at ``pos`` ends (-1: not all there yet); the size goes to ``_remaining``."""
        i = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE + 2)
        if i < 0:
            if len(buf) - pos > MAX_CHUNK_LINE:
                raise HttpError("chunk size line too long")
            return -1
        m = _CHUNK_SIZE.fullmatch(buf, pos, i)
        if m is None:
            raise HttpError("malformed chunk size line")
        size = int(m.group(1), 16)
        self._body_seen += size
        if self._body_seen > self.max_body:
            raise BodyTooLarge(f"request body over {self.max_body} bytes")
        self._remaining = size
        return i

    def _trailer_line(self, buf: bytes, pos: int) -> int:
        """Where the trailer line at ``pos`` ends (-1: not all there yet). Trailers are header lines, then an
        empty line; they are checked like headers (against the head's limits) and dropped."""
        i = buf.find(b"\r\n", pos, pos + self.max_head - self._trailer_bytes + 2)
        if i < 0:
            if self._trailer_bytes + len(buf) - pos > self.max_head:
                raise HeadTooLarge(f"chunked trailers over {self.max_head} bytes")
            return -1
        if i > pos:
            if _HEADER_LINES.fullmatch(buf, pos, i + 2) is None:
                raise HttpError("malformed trailer line")
            self._trailer_bytes += i + 2 - pos
            self._trailer_lines += 1
            if self._trailer_lines > self.max_headers:
                raise TooManyHeaders(f"more than {self.max_headers} trailer lines")
        return i


# -- responses ------------------------------------------------------------------------------------------------------


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")


_STATUS_LINES: Final = {s.value: _status_line(s.value) for s in HTTPStatus}


class ResponseWriter:
    """Frames one response (see the module's invariant 6).

    Args:
        head_request: the request was HEAD (no body bytes are written).
        http11: the request was HTTP/1.1 (else 1.0: no chunked body).
        keep_alive: whether the connection may stay open afterwards; :attr:`keep_alive` may be set to False by the
            server until the head is produced, and the app's ``Connection: close`` clears it too.
        date: the ``Date`` header's value (the server's clock; empty: none).
    """

    __slots__ = (
        "_block",
        "_chunked",
        "_date",
        "_head_request",
        "_http11",
        "_length",
        "_no_body",
        "_sent",
        "_status",
        "complete",
        "declared_length",
        "keep_alive",
        "started",
    )

    def __init__(self, *, head_request: bool, http11: bool, keep_alive: bool, date: bytes = b"") -> None:
        self._head_request = head_request
        self._http11 = http11
        self.keep_alive = keep_alive
        self._date = date
        self._status = 0
        #: the app's header lines, checked and joined
        self._block = b""
        #: the app's ``Content-Length``, if it gave one (known once started)
        self.declared_length: int | None = None
        #: the head was produced
        self.started = False
        #: the last body piece was produced
        self.complete = False
        #: the body length held to (``None``: chunked or close-delimited, or no body)
        self._length: int | None = None
        self._sent = 0
        self._chunked = False
        self._no_body = head_request

    def start(self, status: int, headers: Iterable[Iterable[bytes]]) -> None:
        """Take the status and the app's headers (checked now); nothing is produced until :meth:`head` or the first
        :meth:`body`.

        Raises:
            LocalProtocolError: started twice, a status that is not a final one, an invalid header name or value (a
                line break in one, say), an invalid or repeated ``Content-Length``.
        """
        if self._status:
            raise LocalProtocolError("the response was already started")
        if not isinstance(status, int) or not 200 <= status <= 999:
            raise LocalProtocolError(f"invalid final status {status!r}")
        lines: list[bytes] = []
        length: bytes | None = None
        try:
            for name, value in headers:
                lname = name.lower()
                if lname == b"content-length":
                    if length is not None or not value.isdigit() or len(value) > 18:
                        raise LocalProtocolError("invalid or duplicate Content-Length in the response")
                    length = value
                    continue
                if lname == b"transfer-encoding":
                    continue  # the framing is ours
                if lname == b"connection":
                    if b"close" in value.lower():
                        self.keep_alive = False
                    continue
                if lname == b"date":
                    self._date = b""
                lines += (name, b": ", value, b"\r\n")
            block = b"".join(lines)
        except (TypeError, ValueError, AttributeError):
            raise LocalProtocolError("response headers must be pairs of bytes") from None
        # one CRLF per header line and nothing but header lines: no value can smuggle a line break
        if block.count(b"\r\n") * 4 != len(lines) or _HEADER_LINES.fullmatch(block) is None:
            raise LocalProtocolError("invalid response header name or value")
        self._status = status
        self._block = block
        if length is not None:
            self.declared_length = int(length)
        if status in _NO_BODY_STATUS:
            self._no_body = True

    def head(self) -> bytes:
        """The status line and headers now, for a body that will come in pieces of unknown total length (a
        streamed answer: the client sees the status at once). Then :meth:`body` for every piece."""
        if self.started:
            raise LocalProtocolError("the head was already produced")
        if not self._status:
            raise LocalProtocolError("a response head before the response start")
        return self._head(0, True)

    def body(self, data: bytes, more: bool) -> list[bytes]:
        """The bytes to send for one body piece (the head first, with the first piece).

        Raises:
            LocalProtocolError: not started, already complete, or more (or, at the end, fewer) bytes than the app's
                ``Content-Length``.
        """
        if self.complete:
            raise LocalProtocolError("the response is already complete")
        if not self.started:
            if not self._status:
                raise LocalProtocolError("a response body before the response start")
            head = self._head(len(data), more)
        else:
            head = b""
        n = len(data)
        if not more:
            self.complete = True
        if self._no_body:
            return [head] if head else []
        if self._length is not None:
            self._sent += n
            if self._sent > self._length or (not more and self._sent < self._length):
                self.keep_alive = False
                raise LocalProtocolError(f"the body does not match Content-Length {self._length}")
        elif self._chunked:
            framed = b"%x\r\n%b\r\n" % (n, data) if n else b""
            data = framed + b"0\r\n\r\n" if not more else framed
            n = len(data)
        if not n:
            return [head] if head else []
        if not head:
            return [data]
        if n <= 65536:
            return [head + data]
        return [head, data]

    def _head(self, first_size: int, more: bool) -> bytes:
        self.started = True
        status = self._status
        out = [_STATUS_LINES.get(status) or _status_line(status), self._block]
        if self._date:
            out += (b"date: ", self._date, b"\r\n")
        length = self.declared_length
        if length is not None:
            if not self._no_body or self._head_request:
                self._length = length
                out.append(b"content-length: %d\r\n" % length)
        elif status in _NO_BODY_STATUS:
            pass
        elif not more:
            out.append(b"content-length: %d\r\n" % first_size)
        elif self._http11:
            self._chunked = True
            out.append(b"transfer-encoding: chunked\r\n")
        else:
            self.keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
        if self._no_body:
            self._chunked = False
            self._length = None
        if not self.keep_alive:
            out.append(b"connection: close\r\n\r\n")
        elif not self._http11:
            out.append(b"connection: keep-alive\r\n\r\n")
        else:
            out.append(b"\r\n")
        return b"".join(out)


def error_response(status: int, code: str, message: str, *, date: bytes = b"", close: bool = True) -> bytes:
    """A whole JSON error answer, ``{"status":"error","code":...,"message":...}``, from the server itself."""
    body = json.dumps({"status": "error", "code": code, "message": message}).encode()
    writer = ResponseWriter(head_request=False, http11=True, keep_alive=not close, date=date)
    writer.start(status, ((b"content-type", b"application/json"),))
    return b"".join(writer.body(body, False))
