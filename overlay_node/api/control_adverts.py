"""Control routes for adverts and the DHT: ``/v1/advertise``, ``/v1/adverts``, ``/v1/discover``, ``/v1/dht/...``."""

from __future__ import annotations

import base64
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overlay_node.api.common import guarded, read_json, require_str
from overlay_node.errors import BadRequest
from overlay_node.protocol.adverts import Filter
from overlay_node.services.adverts import AdvertService
from overlay_node.services.dht import DhtService, dht_key

BODY_LIMIT = 64 * 1024


class AdvertsTarget(Protocol):
    @property
    def adverts(self) -> AdvertService: ...

    @property
    def dht(self) -> DhtService: ...


def _opt_str(body: dict[str, Any], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise BadRequest(f"field {key!r} must be a string")
    return value


def _opt_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"field {key!r} must be a non-negative integer")
    return value


def _opt_list(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"field {key!r} must be a list of strings")
    return tuple(value)


def _name(body: dict[str, Any]) -> str:
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


def adverts_routes(node: AdvertsTarget) -> list[Route]:
    """The routes; mounted by ``api/control.py``."""

    @guarded
    async def advertise(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        name = _name(body)
        if body.get("revoke"):
            return JSONResponse(await node.adverts.withdraw(name))
        ttl = body.get("ttl")
        if ttl is not None and (not isinstance(ttl, int | float) or isinstance(ttl, bool)):
            raise BadRequest("field 'ttl' must be a number of seconds")
        on_chain = body.get("on_chain", True)
        if not isinstance(on_chain, bool):
            raise BadRequest("field 'on_chain' must be true or false")
        answer = await node.adverts.advertise(
            name,
            on_chain=on_chain,
            service_type=_opt_str(body, "service_type"),
            pricing_model=_opt_str(body, "pricing_model", "free"),
            price=_opt_int(body, "price") or 0,
            capabilities=_opt_list(body, "capabilities"),
            region=_opt_str(body, "region"),
            ttl=None if ttl is None else float(ttl),
            uri=_opt_str(body, "uri"),
        )
        return JSONResponse(answer)

    @guarded
    async def adverts(_: Request) -> Response:
        return JSONResponse({"adverts": [a.as_dict() for a in node.adverts.own()]})

    @guarded
    async def discover(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        flt = Filter(
            capabilities=_opt_list(body, "capabilities"),
            max_price=_opt_int(body, "max_price"),
            region=_opt_str(body, "region"),
            service_type=_opt_str(body, "service_type"),
        )
        found = await node.adverts.discover(_name(body), flt)
        return JSONResponse({"hosts": [f.as_dict() for f in found]})

    def _key(body: dict[str, Any]) -> bytes:
        namespace = require_str(body, "namespace", max_len=32)
        if namespace not in ("ship", "slap", "uhrp", "stream", "tag", "debug"):
            raise BadRequest("namespace must be one of ship, slap, uhrp, stream, tag, debug")
        return dht_key(namespace, require_str(body, "name", max_len=256))

    @guarded
    async def dht_get(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        records = await node.dht.get(_key(body))
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
        body = await read_json(request, BODY_LIMIT)
        value = require_str(body, "value", max_len=4096).encode()
        ttl = body.get("ttl", 3600)
        if not isinstance(ttl, int | float) or isinstance(ttl, bool):
            raise BadRequest("field 'ttl' must be a number of seconds")
        outcome = await node.dht.put(_key(body), value, ttl=float(ttl))
        return JSONResponse({"seq": outcome.seq, "expires": outcome.expires, "stored": outcome.stored})

    @guarded
    async def dht_status(_: Request) -> Response:
        s = node.dht.statistics()
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
            }
        )

    return [
        Route("/v1/advertise", advertise, methods=["POST"]),
        Route("/v1/adverts", adverts, methods=["GET"]),
        Route("/v1/discover", discover, methods=["POST"]),
        Route("/v1/dht/get", dht_get, methods=["POST"]),
        Route("/v1/dht/put", dht_put, methods=["POST"]),
        Route("/v1/dht", dht_status, methods=["GET"]),
    ]
