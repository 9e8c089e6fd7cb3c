"""The control app: HTTP/JSON over the unix control socket, used by ``overlay-node ctl``.

Routes are versioned (``/v1/...``) and thin: each reads its request, calls one method of the node or of one of its
services, and returns the JSON. The handlers are module-level; the node they serve is the app's ``state.node``
(``api/common.py``). Adding routes and optional fields is fine; renaming or removing them breaks scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from overlay_node.api.common import HTTP_EXCEPTION_HANDLERS, Body, guarded, serve, served
from overlay_node.api.control_adverts import AdvertsTarget
from overlay_node.api.control_content import ContentTarget
from overlay_node.api.control_overlay import OverlayControlTarget
from overlay_node.api.control_streams import StreamsTarget
from overlay_node.api.control_wallet import WalletTarget

CONTROL_BODY_LIMIT = 1024 * 1024


class ControlTarget(
    AdvertsTarget, ContentTarget, OverlayControlTarget, StreamsTarget, WalletTarget, Protocol
):  # fmt: skip
    """What the control app serves: the node's own methods, and the services the feature routes
    (``control_<feature>.py``) call."""

    def status(self) -> dict[str, Any]: ...

    def peer_list(self) -> list[dict[str, Any]]: ...

    async def connect_peer(self, address: str) -> dict[str, Any]: ...

    async def wait_peers(self, identity_keys: list[str], timeout: float) -> dict[str, Any]: ...

    def request_shutdown(self) -> None: ...


def _node(request: Request) -> ControlTarget:
    return cast(ControlTarget, served(request))


@guarded
async def status(request: Request) -> Response:
    return JSONResponse(_node(request).status())


@guarded
async def peers(request: Request) -> Response:
    return JSONResponse({"peers": _node(request).peer_list()})


@guarded
async def connect(request: Request) -> Response:
    body = await Body.read(request, CONTROL_BODY_LIMIT)
    return JSONResponse(await _node(request).connect_peer(body.text("address", max_len=512)))


@guarded
async def wait(request: Request) -> Response:
    body = await Body.read(request, CONTROL_BODY_LIMIT)
    keys = body.strings("identity_keys", required=True, max_items=10_000, expected="a list of hex identity keys")
    timeout = body.seconds("timeout", 30, maximum=3600)
    return JSONResponse(await _node(request).wait_peers(keys, timeout))


@guarded
async def shutdown(request: Request) -> Response:
    _node(request).request_shutdown()
    return JSONResponse({"status": "stopping"}, status_code=202)


def control_app(node: ControlTarget, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Build the control app over ``node``; feature modules (``control_<feature>.py``) add ``extra_routes``."""
    app = Starlette(
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
    return serve(app, node)
