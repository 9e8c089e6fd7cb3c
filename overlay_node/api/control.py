"""The control app: HTTP/JSON over the unix control socket, used by ``overlay-node ctl``.

Routes are versioned (``/v1/...``) and thin: each calls one method of the node and returns its JSON. Adding routes
and optional fields is fine; renaming or removing them breaks scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from overlay_node.api.common import HTTP_EXCEPTION_HANDLERS, guarded, read_json, require_str
from overlay_node.errors import BadRequest

CONTROL_BODY_LIMIT = 1024 * 1024


class ControlTarget(Protocol):
    """The node methods the control app exposes."""

    def status(self) -> dict[str, Any]: ...

    def peer_list(self) -> list[dict[str, Any]]: ...

    async def connect_peer(self, address: str) -> dict[str, Any]: ...

    async def wait_peers(self, identity_keys: list[str], timeout: float) -> dict[str, Any]: ...

    def request_shutdown(self) -> None: ...


def control_app(node: ControlTarget, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Build the control app over ``node``; feature modules (``control_<feature>.py``) add ``extra_routes``."""

    @guarded
    async def status(_: Request) -> Response:
        return JSONResponse(node.status())

    @guarded
    async def peers(_: Request) -> Response:
        return JSONResponse({"peers": node.peer_list()})

    @guarded
    async def connect(request: Request) -> Response:
        body = await read_json(request, CONTROL_BODY_LIMIT)
        return JSONResponse(await node.connect_peer(require_str(body, "address", max_len=512)))

    @guarded
    async def wait(request: Request) -> Response:
        body = await read_json(request, CONTROL_BODY_LIMIT)
        keys = body.get("identity_keys")
        timeout = body.get("timeout", 30)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(keys) > 10_000:
            raise BadRequest("field 'identity_keys' must be a list of hex identity keys")
        if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
            raise BadRequest("field 'timeout' must be a number of seconds in (0, 3600]")
        return JSONResponse(await node.wait_peers(keys, float(timeout)))

    @guarded
    async def shutdown(_: Request) -> Response:
        node.request_shutdown()
        return JSONResponse({"status": "stopping"}, status_code=202)

    return Starlette(
        exception_handlers=HTTP_EXCEPTION_HANDLERS,
        routes=[
            Route("/v1/status", status, methods=["GET"]),
            Route("/v1/peers", peers, methods=["GET"]),
            Route("/v1/peers/connect", connect, methods=["POST"]),
            Route("/v1/peers/wait", wait, methods=["POST"]),
            Route("/v1/shutdown", shutdown, methods=["POST"]),
            *extra_routes,
        ],
    )
