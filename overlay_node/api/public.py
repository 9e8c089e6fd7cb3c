"""The public HTTP app on the http port: liveness, readiness and Prometheus metrics.

Later issues add the UHRP gateway and the overlay API (``/submit``, ``/lookup``) here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from overlay_node.api.common import HTTP_EXCEPTION_HANDLERS
from overlay_node.metrics import CONTENT_TYPE, Metrics


class PublicTarget(Protocol):
    """What the public app needs from the node."""

    @property
    def ready(self) -> bool: ...

    @property
    def metrics(self) -> Metrics: ...


def public_app(node: PublicTarget, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Build the public app over ``node``; feature modules (the UHRP gateway) add ``extra_routes``."""

    async def live(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        if node.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "starting"}, status_code=503)

    async def metrics(_: Request) -> Response:
        return Response(node.metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(
        exception_handlers=HTTP_EXCEPTION_HANDLERS,
        routes=[
            Route("/health/live", live, methods=["GET"]),
            Route("/health/ready", ready, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *extra_routes,
        ],
    )
