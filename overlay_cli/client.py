"""The control client: synchronous HTTP over the daemon's unix socket, found through ``api.json``.

Reads only the data dir's discovery file; imports nothing of the daemon's services. ``ctl`` commands get theirs
from :func:`control_client`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from overlay_cli.output import CliState
from overlay_node.errors import ApiError, DaemonNotRunning, OverlayError

#: exit codes for errors the daemon reports, by error code (mirrors overlay_node.errors families)
_EXIT_BY_CODE = {
    "config": 3,
    "data_dir": 4,
    "protocol": 6,
    "transport": 7,
    "dial_failed": 7,
    "connection_lost": 7,
    "peer_timeout": 7,
    "store": 8,
    "not_found": 9,
    "conflict": 10,
    "bad_request": 2,
    "payment_refused": 11,
    "payment_invalid": 11,
    "payment_insufficient": 11,
    "payment_replayed": 11,
    "quote_expired": 11,
    "insufficient_funds": 11,
    "payment_malformed": 11,
    "invalid_derivation_prefix": 11,
    "payment_required": 11,
    "no_peer_link": 9,
    "content_unavailable": 9,
}


class ControlClient:
    """Calls the control API of the daemon that owns ``data_dir``."""

    def __init__(self, data_dir: Path, *, timeout: float = 60.0) -> None:
        self.data_dir = data_dir
        self.timeout = timeout
        self._socket = self._find_socket()
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self._socket)), base_url="http://overlay-node", timeout=timeout
        )

    def _not_running(self) -> DaemonNotRunning:
        return DaemonNotRunning(f"no daemon is running for {self.data_dir}: start it with `overlay-node run`")

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
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request; returns the decoded JSON or raises ApiError / DaemonNotRunning."""
        try:
            response = self._http.request(method, path, json=body)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError):
            raise self._not_running() from None
        except httpx.TimeoutException as exc:
            raise ApiError(
                f"the daemon did not answer {path} in {self.timeout:.0f}s", code="timeout", status=0
            ) from exc
        except httpx.HTTPError as exc:
            raise ApiError(f"control request {path} failed: {exc}", code="transport", status=0) from exc
        return self._decode(response)

    def stream(self, method: str, path: str, body: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """A request whose answer is NDJSON; yields each object as it arrives."""
        try:
            with self._http.stream(method, path, json=body, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    self._decode(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError):
            raise self._not_running() from None

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            if isinstance(data, dict) and data.get("status") == "error":
                code = str(data.get("code", "error"))
                raise ApiError(
                    str(data.get("message", "")),
                    code=code,
                    status=response.status_code,
                    exit_code=_EXIT_BY_CODE.get(code, 1),
                )
            raise ApiError(f"HTTP {response.status_code}", code="http", status=response.status_code)
        return data


def control_client(state: CliState) -> ControlClient:
    """The client of the daemon that owns the command's data dir.

    Raises:
        DaemonNotRunning: no daemon runs there (its ``api.json`` is missing or names no control socket).
    """
    from overlay_cli.main import data_dir_of  # here, not at the top: main imports every command module

    return ControlClient(data_dir_of(state))


__all__ = ["ControlClient", "OverlayError", "control_client"]
