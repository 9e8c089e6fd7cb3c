"""Control routes for adverts and the DHT: ``/v1/advertise``, ``/v1/adverts``, ``/v1/discover``, ``/v1/dht/...``."""

from __future__ import annotations

import base64
from typing import Protocol, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overlay_node.api.common import Body, guarded, served
from overlay_node.errors import BadRequest
from overlay_node.protocol.adverts import Filter
from overlay_node.services.adverts import AdvertService
from overlay_node.services.dht import DhtService, dht_key

__all__ = ["AdvertsTarget", "adverts_routes"]

BODY_LIMIT = 64 * 1024
NAMESPACES = ("ship", "slap", "uhrp", "stream", "tag", "index", "node", "debug")


class AdvertsTarget(Protocol):
    @property
    def adverts(self) -> AdvertService: ...

    @property
    def dht(self) -> DhtService: ...


def _target(request: Request) -> AdvertsTarget:
    return cast(AdvertsTarget, served(request))


def _name(body: Body) -> str:
    topic, service = body.get("topic"), body.get("service")
    if (topic is None) == (service is None):
        raise BadRequest("give exactly one of 'topic' (tm_*) or 'service' (ls_*)")
    name = topic if topic is not None else service
    if not isinstance(name, str):
        raise BadRequest("topic or service must be a string")
    if topic is not None and not name.startswith("tm_"):
        raise BadRequest(f"a topic starts with tm_: {name!r}")
    if service is not None and not name.startswith("ls_"):
        raise BadRequest(f"a service starts with ls_: {name!r}")
    return name


def _optional_name(body: Body) -> str | None:
    """The topic or service named, or None when neither is (discovery by service type or capability)."""
    if body.get("topic") is None and body.get("service") is None:
        return None
    return _name(body)


def _key(body: Body) -> bytes:
    namespace = body.text("namespace", max_len=32)
    if namespace not in NAMESPACES:
        raise BadRequest(f"namespace must be one of {', '.join(NAMESPACES)}")
    return dht_key(namespace, body.text("name", max_len=256))


@guarded
async def advertise(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    name = _name(body)
    adverts = _target(request).adverts
    if body.get("revoke"):
        return JSONResponse(await adverts.withdraw(name))
    ttl = body.seconds("ttl", None)
    answer = await adverts.advertise(
        name,
        on_chain=body.boolean("on_chain", True),
        service_type=body.text("service_type", ""),
        pricing_model=body.text("pricing_model", "free"),
        price=body.integer("price", None) or 0,
        capabilities=tuple(body.strings("capabilities")),
        region=body.text("region", ""),
        ttl=ttl,
        uri=body.text("uri", ""),
    )
    return JSONResponse(answer)


@guarded
async def adverts(request: Request) -> Response:
    return JSONResponse({"adverts": [a.as_dict() for a in _target(request).adverts.own()]})


@guarded
async def discover(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    flt = Filter(
        capabilities=tuple(body.strings("capabilities")),
        max_price=body.integer("max_price", None),
        region=body.text("region", ""),
        service_type=body.text("service_type", ""),
    )
    found = await _target(request).adverts.discover(_optional_name(body), flt)
    return JSONResponse({"hosts": [f.as_dict() for f in found]})


@guarded
async def dht_get(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    records = await _target(request).dht.get(_key(body))
    return JSONResponse(
        {
            "records": [
                {
                    "publisher": r.publisher.hex(),
                    "seq": r.seq,
                    "expires": r.expires,
                    "value_b64": base64.b64encode(r.value).decode(),
                }
                for r in records
            ]
        }
    )


@guarded
async def dht_put(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    value = body.text("value", max_len=4096).encode()
    ttl = body.seconds("ttl", 3600)
    outcome = await _target(request).dht.put(_key(body), value, ttl=ttl)
    return JSONResponse({"seq": outcome.seq, "expires": outcome.expires, "stored": outcome.stored})


@guarded
async def dht_status(request: Request) -> Response:
    s = _target(request).dht.statistics()
    return JSONResponse(
        {
            "address": s.address,
            "node_id": s.node_id,
            "contacts": s.contacts,
            "records": s.records,
            "keys": s.keys,
            "own_records": s.own_records,
            "drops": s.drops,
            "refusals": s.refusals,
            "datagrams": {"in": s.datagrams_in, "out": s.datagrams_out, "macs_in": s.macs_in, "macs_out": s.macs_out},
            "mac_peers": s.mac_peers,
        }
    )


def adverts_routes() -> list[Route]:
    """The routes; they serve the app's node's ``adverts`` and ``dht`` (mounted on the control app)."""
    return [
        Route("/v1/advertise", advertise, methods=["POST"]),
        Route("/v1/adverts", adverts, methods=["GET"]),
        Route("/v1/discover", discover, methods=["POST"]),
        Route("/v1/dht/get", dht_get, methods=["POST"]),
        Route("/v1/dht/put", dht_put, methods=["POST"]),
        Route("/v1/dht", dht_status, methods=["GET"]),
    ]
