"""What the control and public apps share: JSON error bodies, bounded request parsing, and :class:`Body`, the one
reader of request fields (each refusal a ``BadRequest`` naming the field and what it must be).

Routes are module-level handlers; what they serve (the node, or the objects a feature needs) is the app's
``state.node``, set where the app is built (:func:`serve`).
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar, overload

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from overlay_node.errors import BadRequest, OverlayError

Handler = Callable[[Request], Awaitable[Response]]
_App = TypeVar("_App", bound=Starlette)


def serve(app: _App, node: object) -> _App:
    """Make ``node`` what ``app``'s handlers serve (``app.state.node``, read back with :func:`served`)."""
    app.state.node = node
    return app


def served(request: Request) -> Any:
    """What the request's app serves (see :func:`serve`); each feature module types it with its own protocol."""
    return request.app.state.node


def error_response(exc: OverlayError) -> JSONResponse:
    """The one mapping of our errors to HTTP: ``{"status":"error","code":...,"message":...,"exit_code":...}``
    (``exit_code``: what the CLI ends with, from ``overlay_node.errors.EXIT_CODES``)."""
    body = {"status": "error", "code": exc.code, "message": str(exc), "exit_code": exc.exit_code}
    return JSONResponse(body, status_code=exc.http_status)


def guarded(handler: Handler) -> Handler:
    """Turn an OverlayError raised by ``handler`` into its JSON error response."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except OverlayError as exc:
            return error_response(exc)

    return run


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing bodies over ``limit`` bytes before reading them whole.

    Raises:
        BadRequest: too large (declared or sent), or the client went away before it was complete.
    """
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


async def receive_body(receive: Callable[[], Awaitable[Any]], declared: str | None, limit: int) -> bytes:
    """:func:`read_body` of a route that is an ASGI app itself: its ``receive`` and its ``Content-Length``.

    Raises:
        BadRequest: as :func:`read_body`.
    """
    # str.isdigit takes "²", which int() refuses (our HTTP parser lets only ASCII digits through, another may not)
    if declared is not None and (not (declared.isascii() and declared.isdigit()) or int(declared) > limit):
        raise BadRequest(f"request body too large (limit {limit} bytes)")
    # the ASGI messages read directly (``request.stream()`` is an async generator: one made, and registered with
    # trio's hooks, per request)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise BadRequest("client disconnected before the body was complete")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BadRequest(f"request body too large (limit {limit} bytes)")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)


#: the deepest nesting of arrays and objects :func:`parse_json` takes
JSON_MAX_DEPTH: Final = 64
#: the longest number :func:`parse_json` takes, in characters (Python refuses integers of more than 4,300 digits,
#: and converting long ones costs time quadratic in their length)
JSON_MAX_NUMBER: Final = 100


class _JsonLimit(Exception):
    """A bound of :func:`parse_json` was passed (raised from the decoder's hooks)."""


def _number(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if len(text) > JSON_MAX_NUMBER:
            raise _JsonLimit(f"a number longer than {JSON_MAX_NUMBER} characters")
        value = convert(text)
        if isinstance(value, float) and math.isinf(value):
            raise _JsonLimit(f"the number {text} is out of range")
        return value

    return parse


def _no_constant(name: str) -> Any:
    raise _JsonLimit(f"{name} is not a JSON value (numbers are finite)")


# Python's reader takes NaN, Infinity and -Infinity, and 1e999 reads as infinity: none is JSON, and a handler that
# turns such a number into an int or a time fails, so they are refused here
_DECODER: Final = json.JSONDecoder(parse_int=_number(int), parse_float=_number(float), parse_constant=_no_constant)


#: a UTF-16 surrogate left alone in a decoded string (a pair decodes to one character outside this range)
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _refusal(value: Any) -> str | None:
    """Why ``value`` is refused, or None: arrays and objects nested more than :data:`JSON_MAX_DEPTH` deep, or a
    string (or key) holding a lone surrogate: JSON's ``"\\ud800"`` escape decodes to one, which no UTF-8 text can
    hold, so writing it anywhere later (a key hashed, an error message naming it) would fail. Without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if not node.isascii() and _LONE_SURROGATE.search(node):
                return "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)"
        elif isinstance(node, dict | list):
            if depth > JSON_MAX_DEPTH:
                return f"nested deeper than {JSON_MAX_DEPTH} levels"
            if isinstance(node, dict):
                stack.extend((key, depth) for key in node)
                stack.extend((child, depth + 1) for child in node.values())
            else:
                stack.extend((child, depth + 1) for child in node)
    return None


def parse_json(data: bytes | str, *, what: str = "request body", limit: int | None = None) -> Any:
    """``data`` as JSON, bounded: at most ``limit`` bytes (None: the caller bounded it already), arrays and objects
    at most :data:`JSON_MAX_DEPTH` deep, numbers of at most :data:`JSON_MAX_NUMBER` characters and finite (no NaN or
    Infinity, nor a number too large for a float), strings without lone surrogates. The one JSON reader of outside
    input in the apps (request bodies, JSON headers).

    Raises:
        BadRequest: ``"<what> is not valid JSON: <reason>"`` (the reason cut short), or too large.
    """
    if limit is not None and len(data) > limit:
        raise BadRequest(f"{what} too large (limit {limit} bytes)")
    try:
        text = data.decode(json.detect_encoding(data), "surrogatepass") if isinstance(data, bytes) else data
        value = _DECODER.decode(text)
    except _JsonLimit as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"{what} is not valid JSON: nested deeper than {JSON_MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest(f"{what} is not valid JSON: {str(exc)[:200]}") from None
    # the walk is needed only when the text could hold a lone surrogate (an escape, or text that is not ASCII) or
    # could nest deeper than the bound (that many brackets): a small ASCII question is answered without it
    if text.isascii() and "\\u" not in text and text.count("[") + text.count("{") <= JSON_MAX_DEPTH:
        return value
    refusal = _refusal(value)
    if refusal is not None:
        raise BadRequest(f"{what} is not valid JSON: {refusal}")
    return value


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, refusing bodies over ``limit`` bytes before reading them whole."""
    body = await read_body(request, limit)
    if not body:
        return {}
    value = parse_json(body)
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


class _Required(enum.Enum):
    REQUIRED = enum.auto()


#: the ``default`` of a field that must be given
REQUIRED: Final = _Required.REQUIRED
#: the longest string a required text field takes unless told otherwise
TEXT_LIMIT: Final = 4096


class Body:
    """The fields of a JSON request body (or of a query string), read and checked one at a time.

    Every reader takes the field's ``default``: :data:`REQUIRED` (missing or null is refused), ``None`` (missing or
    null reads as None), or a value (used when the field is missing; an explicit null is refused). A bad field
    raises ``BadRequest("field 'key' must be <expected>")``, ``expected`` saying what the field must be (each
    reader has its own wording; ``expected=`` replaces it where a route says it better).
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields

    @classmethod
    async def read(cls, request: Request, limit: int) -> Body:
        """The request's JSON object body (see :func:`read_json`)."""
        return cls(await read_json(request, limit))

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def get(self, key: str, default: Any = None) -> Any:
        """A field as it came, unchecked."""
        return self._fields.get(key, default)

    @staticmethod
    def refuse(key: str, expected: str) -> BadRequest:
        return BadRequest(f"field {key!r} must be {expected}")

    @overload
    def text(
        self, key: str, default: str | _Required = ..., *, max_len: int | None = ..., expected: str | None = ...
    ) -> str: ...

    @overload
    def text(self, key: str, default: None, *, max_len: int | None = ..., expected: str | None = ...) -> str | None: ...

    def text(
        self,
        key: str,
        default: str | _Required | None = REQUIRED,
        *,
        max_len: int | None = None,
        expected: str | None = None,
    ) -> str | None:
        """A string of at most ``max_len`` characters (no limit: None); a required one must not be empty and is at
        most :data:`TEXT_LIMIT` characters unless ``max_len`` says otherwise."""
        value = self._fields.get(key, default)
        if value is None and default is None:
            return None
        required = default is REQUIRED
        limit = TEXT_LIMIT if required and max_len is None else max_len
        if not isinstance(value, str) or (limit is not None and len(value) > limit) or (required and not value):
            if required:
                raise self.refuse(key, expected or f"a non-empty string of at most {limit} characters")
            raise self.refuse(
                key, expected or ("a string" if limit is None else f"a string of at most {limit} characters")
            )
        return value

    def abs_path(self, key: str) -> Path:
        """A required absolute path (the CLI resolves relative ones before sending them)."""
        path = Path(self.text(key))
        if not path.is_absolute():
            raise self.refuse(key, "an absolute path (the CLI resolves it)")
        return path

    @overload
    def integer(
        self,
        key: str,
        default: int | _Required = ...,
        *,
        minimum: int = ...,
        maximum: int | None = ...,
        digits: bool = ...,
        expected: str | None = ...,
    ) -> int: ...

    @overload
    def integer(
        self,
        key: str,
        default: None,
        *,
        minimum: int = ...,
        maximum: int | None = ...,
        digits: bool = ...,
        expected: str | None = ...,
    ) -> int | None: ...

    def integer(
        self,
        key: str,
        default: int | _Required | None = REQUIRED,
        *,
        minimum: int = 0,
        maximum: int | None = None,
        digits: bool = False,
        expected: str | None = None,
    ) -> int | None:
        """An integer (not a boolean) from ``minimum`` to ``maximum``; with ``digits`` a string of up to 18 decimal
        digits counts too (query strings, and the wallet's amounts)."""
        value = self._fields.get(key, default)
        if value is None and default is None:
            return None
        if digits and isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
            value = int(value)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            if expected is None:
                if maximum is not None:
                    expected = f"an integer in [{minimum}, {maximum}]"
                else:
                    expected = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
            raise self.refuse(key, expected)
        return value

    @overload
    def seconds(self, key: str, default: float | _Required = ..., *, maximum: float | None = ...) -> float: ...

    @overload
    def seconds(self, key: str, default: None, *, maximum: float | None = ...) -> float | None: ...

    def seconds(
        self, key: str, default: float | _Required | None = REQUIRED, *, maximum: float | None = None
    ) -> float | None:
        """A number of seconds (not a boolean); with ``maximum``, above 0 and at most ``maximum``."""
        value = self._fields.get(key, default)
        if value is None and default is None:
            return None
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or (maximum is not None and not 0 < value <= maximum)
        ):
            raise self.refuse(
                key, "a number of seconds" if maximum is None else f"a number of seconds in (0, {maximum}]"
            )
        return float(value)

    def positive(self, key: str) -> float | None:
        """An optional finite number above 0 (missing or null: None)."""
        value = self._fields.get(key)
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise self.refuse(key, "a positive number")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        """``true`` or ``false``."""
        value = self._fields.get(key, default)
        if not isinstance(value, bool):
            raise self.refuse(key, "true or false")
        return value

    def strings(
        self,
        key: str,
        *,
        required: bool = False,
        min_items: int = 0,
        max_items: int | None = None,
        blank: bool = True,
        expected: str | None = None,
    ) -> list[str]:
        """A list of strings (an empty one when an optional field is missing), with ``min_items`` to ``max_items``
        items; ``blank=False`` refuses empty strings in it."""
        value = self._fields.get(key) if required else self._fields.get(key, [])
        if (
            not isinstance(value, list)
            or len(value) < min_items
            or (max_items is not None and len(value) > max_items)
            or not all(isinstance(v, str) and (blank or v) for v in value)
        ):
            if expected is None:
                expected = "a list of strings" if max_items is None else f"a list of at most {max_items} strings"
            raise self.refuse(key, expected)
        return list(value)


async def _http_exception(_request: Request, exc: Exception) -> Response:
    from starlette.exceptions import HTTPException

    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return JSONResponse({"status": "error", "code": code, "message": str(detail)}, status_code=status)


#: pass as ``exception_handlers`` to Starlette so that routing errors are JSON too
HTTP_EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    404: _http_exception,
    405: _http_exception,
}
