"""The control client: HTTP/1.1 over the daemon's unix socket (``http.client`` from the standard library, so that a
CLI call starts quickly), found through ``api.json``.

Reads only the data dir's discovery file; imports nothing of the daemon's services. ``ctl`` commands get theirs
from :func:`control_client`. Every failure is an OverlayError with the exit code of its family
(``overlay_node.errors.EXIT_CODES``): the daemon's error bodies carry ``exit_code``; the table is the fallback.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from overlay_cli.output import CliState
from overlay_node.errors import ApiError, DaemonClosed, DaemonNotRunning, OverlayError, exit_code_for

#: the connection ended in the middle of an answer: the daemon died, was killed or stopped during the call
_CLOSED = (http.client.HTTPException, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class _UnixConnection(http.client.HTTPConnection):
    """An HTTP connection to a unix socket path."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("overlay-node", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """Calls the control API of the daemon that owns ``data_dir``; ``what`` names the operation in errors (the
    command, e.g. ``overlay-node ctl publish``)."""

    def __init__(self, data_dir: Path, *, timeout: float = 60.0, what: str = "") -> None:
        self.data_dir = data_dir
        self.timeout = timeout
        self.what = what
        self._socket = self._find_socket()
        self._open: list[_UnixConnection] = []

    def _not_running(self) -> DaemonNotRunning:
        return DaemonNotRunning(
            f"no daemon is running for {self.data_dir}: start it with `overlay-node --data-dir {self.data_dir} run`"
        )

    def _closed(self, method: str, path: str) -> DaemonClosed:
        during = self.what or f"{method} {path}"
        return DaemonClosed(f"the daemon closed the connection during `{during}`; see its log")

    def _find_socket(self) -> Path:
        api = self.data_dir / "api.json"
        try:
            info = json.loads(api.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise self._not_running() from None
        except (OSError, ValueError) as exc:
            raise DaemonNotRunning(f"cannot read {api}: {exc}") from exc
        control = info.get("control") if isinstance(info, dict) else None
        if not isinstance(control, str) or not control:
            raise DaemonNotRunning(f"{api} names no control socket")
        return Path(control)

    def close(self) -> None:
        while self._open:
            self._open.pop().close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self, timeout: float | None) -> _UnixConnection:
        """A fresh connection to the control socket."""
        conn = _UnixConnection(self._socket, timeout)
        self._open.append(conn)
        try:
            conn.connect()
        except (FileNotFoundError, ConnectionRefusedError):
            raise self._not_running() from None
        except OSError as exc:
            raise DaemonNotRunning(f"cannot reach the daemon of {self.data_dir}: {exc.strerror or exc}") from None
        return conn

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None
    ) -> http.client.HTTPResponse:
        """Connect, send one request, read the answer's head (a fresh connection per request)."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn = self._connect(timeout)
        try:
            conn.request(method, path, body=payload, headers=headers)
            return conn.getresponse()
        except TimeoutError:
            raise self._timed_out(path) from None
        except _CLOSED:
            raise self._closed(method, path) from None

    def _timed_out(self, path: str) -> ApiError:
        return ApiError(
            f"the daemon did not answer {path} in {self.timeout:.0f}s", code="timeout", status=0, exit_code=1
        )

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request; returns the decoded JSON or raises ApiError / DaemonNotRunning / DaemonClosed."""
        response = self._send(method, path, body, self.timeout)
        try:
            raw = response.read()
        except TimeoutError:
            raise self._timed_out(path) from None
        except _CLOSED:
            raise self._closed(method, path) from None
        return self._decode(response.status, raw)

    def stream(self, method: str, path: str, body: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """A request whose answer is NDJSON; yields each object as it arrives (no time limit)."""
        response = self._send(method, path, body, None)
        try:
            if response.status >= 400:
                self._decode(response.status, response.read())
            for line in _lines(response):
                if line.strip():
                    yield json.loads(line)
        except _CLOSED:
            raise self._closed(method, path) from None
        except ValueError:
            raise ApiError(f"the daemon sent a malformed line for {path}", code="truncated", status=0) from None

    def feed(self, path: str, chunks: Iterable[bytes]) -> Any:
        """POST a body sent as ``chunks`` come (chunked transfer encoding, no time limit: a live feed) and return
        the decoded JSON answer. An answer that arrives before the body ends (the daemon refused the feed) stops
        the sending at the next chunk, and its error is raised."""
        conn = self._connect(None)
        sock = conn.sock

        def body() -> Iterator[bytes]:
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0]:
                    return  # the daemon answered already: an error; stop sending and read it
                yield chunk

        try:
            conn.request("POST", path, body=body(), headers={"Accept": "application/json"})
        except _CLOSED:
            pass  # the daemon stopped reading: it answered early (read below) or it is gone
        try:
            response = conn.getresponse()
            raw = response.read()
        except _CLOSED:
            raise self._closed("POST", path) from None
        return self._decode(response.status, raw)

    @staticmethod
    def _decode(status: int, raw: bytes) -> Any:
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status >= 400:
            if isinstance(data, dict) and data.get("status") == "error":
                code = str(data.get("code", "error"))
                exit_code = data.get("exit_code")
                raise ApiError(
                    str(data.get("message", "")),
                    code=code,
                    status=status,
                    exit_code=exit_code if isinstance(exit_code, int) else exit_code_for(code),
                )
            raise ApiError(f"HTTP {status}", code="http", status=status, exit_code=exit_code_for("http"))
        return data


def _lines(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The lines of an answer as they arrive, until its body ends as its framing says it ends.

    A body cut short raises IncompleteRead (an ``HTTPException``): a chunked body that stops before its last
    (empty) chunk, or one shorter than its ``Content-Length``. ``HTTPResponse.readline`` would return ``b""`` there
    instead, as for a body that is complete, when the daemon's end of the socket closes quietly (a daemon killed
    with nothing unread on its side of the connection), so a caller would take a dead daemon's answer for a
    finished one. ``read1`` raises instead.
    """
    pending = b""
    while True:
        data = response.read1()
        if not data:
            if response.length:  # a Content-Length body that ended early (read1 reports it as the end)
                raise http.client.IncompleteRead(pending, response.length)
            if pending:
                yield pending
            return
        pending += data
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"


def control_client(state: CliState) -> ControlClient:
    """The client of the daemon that owns the command's data dir.

    Raises:
        DaemonNotRunning: no daemon runs there (its ``api.json`` is missing or names no control socket).
    """
    from overlay_cli.main import data_dir_of  # here, not at the top: main imports every command module

    return ControlClient(data_dir_of(state), what=state.command)


__all__ = ["ControlClient", "OverlayError", "control_client"]
