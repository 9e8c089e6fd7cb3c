"""Control routes for paid streams.

Producer: ``POST /v1/streams`` (create), ``GET /v1/streams`` (list), ``GET /v1/streams/{id}`` (status with
subscribers), ``POST /v1/streams/{id}/push`` (``{"packets": [text, ...]}``), ``POST /v1/streams/{id}/feed``
(a continuous NDJSON/raw-lines body: each line becomes a packet as it arrives; answers the counts at the end),
``POST /v1/streams/{id}/close``.

Consumer: ``POST /v1/subscribe`` streams NDJSON back: one ``{"seq", "payload"}`` object per packet, then one
``{"summary": {...}}`` line (packets, paid_satoshis, payments, fees, reason); ``GET /v1/subscriptions``;
``POST /v1/subscriptions/stop`` (``{"stream_id"}``) ends one and returns its summary.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from overlay_node.api.common import guarded, read_json, require_str
from overlay_node.errors import BadRequest
from overlay_node.services.streams_node import Streams

__all__ = ["streams_routes"]

BODY_LIMIT = 64 * 1024
#: a push body carries many packets (each at most streams.max_packet)
PUSH_LIMIT = 64 * 1024 * 1024
#: lines of a feed pushed together (one wake-up of the subscribers)
FEED_BATCH = 1024


def _opt_int(body: dict[str, Any], key: str, *, minimum: int = 0) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadRequest(f"field {key!r} must be an integer >= {minimum}")
    return value


def streams_routes(streams: Streams) -> list[Route]:
    """The routes; mounted by ``node.py`` through ``control_app``."""
    producer, consumer = streams.producer, streams.consumer

    @guarded
    async def create(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BadRequest("field 'tags' must be a list of strings")
        title = body.get("title", "")
        if not isinstance(title, str):
            raise BadRequest("field 'title' must be a string")
        data = await producer.create(
            require_str(body, "stream_id", max_len=128),
            pricing_model=str(body.get("pricing_model", "per-packet")),
            rate=_opt_int(body, "rate", minimum=1) or 1,
            title=title,
            tags=tuple(tags),
            max_consumers=_opt_int(body, "max_consumers", minimum=1),
        )
        return JSONResponse(data)

    @guarded
    async def listing(_: Request) -> Response:
        return JSONResponse({"streams": producer.list()})

    @guarded
    async def status(request: Request) -> Response:
        return JSONResponse(await producer.status(request.path_params["stream_id"]))

    @guarded
    async def push(request: Request) -> Response:
        body = await read_json(request, PUSH_LIMIT)
        packets = body.get("packets")
        if not isinstance(packets, list) or not all(isinstance(p, str) for p in packets):
            raise BadRequest("field 'packets' must be a list of strings (one per packet)")
        return JSONResponse(producer.push(request.path_params["stream_id"], packets))

    @guarded
    async def feed(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        producer.push(stream_id, [])  # the stream exists and is open, before reading anything
        limit = producer.max_packet + 2
        pending, pushed, head = b"", 0, 0
        lines: list[str] = []
        async for chunk in request.stream():
            pending += chunk
            *complete, pending = pending.split(b"\n")
            if len(pending) > limit:
                raise BadRequest(f"a line of the feed is over the packet limit of {producer.max_packet} bytes")
            lines.extend(_text(line) for line in complete if line.strip())
            if len(lines) >= FEED_BATCH or (lines and not pending):
                head = producer.push(stream_id, lines)["head"]
                pushed += len(lines)
                lines = []
        if pending.strip():
            lines.append(_text(pending))
        if lines:
            head = producer.push(stream_id, lines)["head"]
            pushed += len(lines)
        return JSONResponse({"pushed": pushed, "head": head})

    @guarded
    async def close(request: Request) -> Response:
        return JSONResponse(await producer.close(request.path_params["stream_id"]))

    @guarded
    async def subscribe(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        duration = body.get("duration")
        if duration is not None and (not isinstance(duration, int | float) or isinstance(duration, bool)):
            raise BadRequest("field 'duration' must be a number of seconds")
        producer_key = body.get("producer")
        if producer_key is not None and not isinstance(producer_key, str):
            raise BadRequest("field 'producer' must be an identity key")
        sub = await consumer.subscribe(
            require_str(body, "stream_id", max_len=128),
            window=_opt_int(body, "window", minimum=1) or 10,
            max_price=_opt_int(body, "max_price"),
            duration=None if duration is None else float(duration),
            producer=producer_key,
            withhold_after=_opt_int(body, "withhold_after"),
            prepay=_opt_int(body, "prepay", minimum=1),
        )

        async def lines() -> AsyncIterator[bytes]:
            try:
                out: list[bytes] = []
                async for packet in sub.packets():
                    out.append(json.dumps({"seq": packet.seq, "payload": packet.payload}).encode() + b"\n")
                    if len(out) >= 64 or sub.queued() == 0:
                        yield b"".join(out)
                        out = []
                if out:
                    yield b"".join(out)
                await sub.wait_finished()
                yield json.dumps({"summary": sub.summary()}).encode() + b"\n"
            finally:
                sub.stop("reader_gone")

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @guarded
    async def subscriptions(_: Request) -> Response:
        return JSONResponse({"subscriptions": consumer.subscriptions()})

    @guarded
    async def stop(request: Request) -> Response:
        body = await read_json(request, BODY_LIMIT)
        return JSONResponse(await consumer.stop(require_str(body, "stream_id", max_len=128)))

    return [
        Route("/v1/streams", create, methods=["POST"]),
        Route("/v1/streams", listing, methods=["GET"]),
        Route("/v1/streams/{stream_id}", status, methods=["GET"]),
        Route("/v1/streams/{stream_id}/push", push, methods=["POST"]),
        Route("/v1/streams/{stream_id}/feed", feed, methods=["POST"]),
        Route("/v1/streams/{stream_id}/close", close, methods=["POST"]),
        Route("/v1/subscribe", subscribe, methods=["POST"]),
        Route("/v1/subscriptions", subscriptions, methods=["GET"]),
        Route("/v1/subscriptions/stop", stop, methods=["POST"]),
    ]


def _text(line: bytes) -> str:
    try:
        return line.rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("feed lines must be UTF-8 text") from None
