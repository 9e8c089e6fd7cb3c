"""The public HTTP app on the http port: liveness, readiness and Prometheus metrics; the node mounts the UHRP
gateway (``gateway.py``) and the overlay API (``overlay.py``) on it too.

The handlers are module-level; the node they serve is the app's ``state.node`` (``api/common.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from overlay_node.api.common import HTTP_EXCEPTION_HANDLERS, serve, served
from overlay_node.metrics import CONTENT_TYPE, Metrics


class PublicTarget(Protocol):
    """What the public app needs from the node."""

    @property
    def ready(self) -> bool: ...

    @property
    def metrics(self) -> Metrics: ...


def _node(request: Request) -> PublicTarget:
    return cast(PublicTarget, served(request))


async def live(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    if _node(request).ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "starting"}, status_code=503)


async def metrics(request: Request) -> Response:
    return Response(_node(request).metrics.render(), media_type=CONTENT_TYPE)


def public_app(node: PublicTarget, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Build the public app over ``node``; feature modules (the UHRP gateway, the overlay API) add ``extra_routes``
    (their handlers read what they need from the same ``node``)."""
    app = Starlette(
        exception_handlers=HTTP_EXCEPTION_HANDLERS,
        routes=[
            Route("/health/live", live, methods=["GET"]),
            Route("/health/ready", ready, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *extra_routes,
        ],
    )
    return serve(app, node)
