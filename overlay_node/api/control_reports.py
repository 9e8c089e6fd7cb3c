"""Control routes for reports and lineage.

``POST /v1/reports/consumer`` (``{"time_range", "include_payments"}``): what this node bought and consumed, per
provider, stream and content (``ctl report``). ``POST /v1/reports/analytics`` (``{"report_type", "time_range"}``):
what it sold (``ctl analytics``). ``POST /v1/content/lineage`` (``{"hash", "depth"}``): the ancestors and
descendants of a content, found through the DHT (``ctl lineage``).
"""

from __future__ import annotations

from typing import Protocol, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overlay_node.api.common import Body, guarded, served
from overlay_node.services.content import ContentService
from overlay_node.services.reports import ReportsService

__all__ = ["ReportsTarget", "reports_routes"]

BODY_LIMIT = 16 * 1024


class ReportsTarget(Protocol):
    @property
    def reports(self) -> ReportsService: ...

    @property
    def content(self) -> ContentService: ...


def _target(request: Request) -> ReportsTarget:
    return cast(ReportsTarget, served(request))


@guarded
async def consumer(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    report = await _target(request).reports.consumer_report(
        body.text("time_range", "all", max_len=128), include_payments=body.boolean("include_payments", False)
    )
    return JSONResponse(report)


@guarded
async def analytics(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    report = await _target(request).reports.analytics(
        body.text("report_type", "revenue", max_len=32), body.text("time_range", "all", max_len=128)
    )
    return JSONResponse(report)


@guarded
async def lineage(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    found = await _target(request).content.lineage(body.text("hash", max_len=2048), body.integer("depth", 3))
    return JSONResponse(found)


def reports_routes() -> list[Route]:
    return [
        Route("/v1/reports/consumer", consumer, methods=["POST"]),
        Route("/v1/reports/analytics", analytics, methods=["POST"]),
        Route("/v1/content/lineage", lineage, methods=["POST"]),
    ]
