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
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Protocol, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from overlay_node.api.common import Body, guarded, served
from overlay_node.errors import BadRequest
from overlay_node.services.streams import StreamProducer
from overlay_node.services.streams_consumer import StreamConsumer, Subscription
from overlay_node.services.streams_node import Streams

__all__ = ["StreamsTarget", "streams_routes"]

BODY_LIMIT = 64 * 1024
#: a push body carries many packets (each at most streams.max_packet)
PUSH_LIMIT = 64 * 1024 * 1024
#: lines of a feed pushed together (one wake-up of the subscribers)
FEED_BATCH = 1024
#: packets sent to a subscriber's reader in one write, at most
SUBSCRIBE_BATCH = 64


class StreamsTarget(Protocol):
    @property
    def streams(self) -> Streams: ...


def _producer(request: Request) -> StreamProducer:
    return cast(StreamsTarget, served(request)).streams.producer


def _consumer(request: Request) -> StreamConsumer:
    return cast(StreamsTarget, served(request)).streams.consumer


@guarded
async def create(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    tags = body.strings("tags")
    title = body.text("title", "")
    data = await _producer(request).create(
        body.text("stream_id", max_len=128),
        pricing_model=str(body.get("pricing_model", "per-packet")),
        rate=body.integer("rate", None, minimum=1) or 1,
        title=title,
        tags=tuple(tags),
        max_consumers=body.integer("max_consumers", None, minimum=1),
    )
    return JSONResponse(data)


@guarded
async def listing(request: Request) -> Response:
    return JSONResponse({"streams": _producer(request).list()})


@guarded
async def status(request: Request) -> Response:
    return JSONResponse(await _producer(request).status(request.path_params["stream_id"]))


@guarded
async def push(request: Request) -> Response:
    body = await Body.read(request, PUSH_LIMIT)
    packets = body.strings("packets", required=True, expected="a list of strings (one per packet)")
    return JSONResponse(_producer(request).push(request.path_params["stream_id"], packets))


@guarded
async def feed(request: Request) -> Response:
    producer = _producer(request)
    stream_id = request.path_params["stream_id"]
    producer.push(stream_id, [])  # the stream exists and is open, before reading anything
    pushed, head = 0, 0
    async with aclosing(_feed_batches(request, producer.max_packet)) as batches:
        async for lines in batches:
            head = producer.push(stream_id, lines)["head"]
            pushed += len(lines)
    return JSONResponse({"pushed": pushed, "head": head})


@guarded
async def close(request: Request) -> Response:
    return JSONResponse(await _producer(request).close(request.path_params["stream_id"]))


@guarded
async def subscribe(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    duration = body.seconds("duration", None)
    producer_key = body.text("producer", None, expected="an identity key")
    sub = await _consumer(request).subscribe(
        body.text("stream_id", max_len=128),
        window=body.integer("window", None, minimum=1) or 10,
        max_price=body.integer("max_price", None, expected="an integer >= 0"),
        duration=duration,
        producer=producer_key,
        prepay=body.integer("prepay", None, minimum=1),
    )
    return StreamingResponse(_packet_lines(sub), media_type="application/x-ndjson")


@guarded
async def subscriptions(request: Request) -> Response:
    return JSONResponse({"subscriptions": _consumer(request).subscriptions()})


@guarded
async def stop(request: Request) -> Response:
    body = await Body.read(request, BODY_LIMIT)
    return JSONResponse(await _consumer(request).stop(body.text("stream_id", max_len=128)))


def streams_routes() -> list[Route]:
    """The routes; they serve the app's node's ``streams`` (mounted by ``node.py`` through ``control_app``)."""
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


async def _feed_batches(request: Request, max_packet: int) -> AsyncGenerator[list[str], None]:
    """The lines of a feed body as packets, in batches of up to :data:`FEED_BATCH` (a batch ends early when the
    body has no more complete lines for now, so that live feeds are pushed as they come)."""
    limit = max_packet + 2
    pending = b""
    lines: list[str] = []
    async for chunk in request.stream():
        pending += chunk
        *complete, pending = pending.split(b"\n")
        if len(pending) > limit:
            raise BadRequest(f"a line of the feed is over the packet limit of {max_packet} bytes")
        lines.extend(_text(line) for line in complete if line.strip())
        if len(lines) >= FEED_BATCH or (lines and not pending):
            yield lines
            lines = []
    if pending.strip():
        lines.append(_text(pending))
    if lines:
        yield lines


async def _packet_lines(sub: Subscription) -> AsyncIterator[bytes]:
    """A subscription as NDJSON: ``{"seq", "payload"}`` per packet, then ``{"summary": ...}``; the subscription
    ends when the reader goes away."""
    try:
        out: list[bytes] = []
        async for packet in sub.packets():
            out.append(json.dumps({"seq": packet.seq, "payload": packet.payload}).encode() + b"\n")
            if len(out) >= SUBSCRIBE_BATCH or sub.queued() == 0:
                yield b"".join(out)
                out = []
        if out:
            yield b"".join(out)
        await sub.wait_finished()
        yield json.dumps({"summary": sub.summary()}).encode() + b"\n"
    finally:
        sub.stop("reader_gone")


def _text(line: bytes) -> str:
    try:
        return line.rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("feed lines must be UTF-8 text") from None
