"""``ctl stream create | push | list | close | status`` (producer) and ``ctl subscribe`` (consumer)."""

from __future__ import annotations

import json
import os
import select
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from overlay_cli.client import ControlClient, control_client
from overlay_cli.output import (
    CliState,
    JsonOption,
    cli_errors,
    comma_list,
    emit,
    print_error,
    print_fields,
    print_note,
    print_rows,
    table,
)
from overlay_node.errors import BadRequest, Conflict, exit_code_for

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(help="Produce paid live streams.", no_args_is_help=True)

#: lines sent per push request
PUSH_BATCH = 2000
#: seconds a live feed (``push --follow``) may be silent before a blank line keeps its request alive (the control
#: server ends a request body that stalls for a minute)
FEED_KEEPALIVE = 20.0
#: bytes read from a live feed's input at once
READ_SIZE = 64 * 1024


@app.command("create")
def create(
    ctx: typer.Context,
    stream_id: Annotated[str, typer.Option("--stream-id", help="The stream's id (letters, digits, . _ : -).")],
    pricing_model: Annotated[str, typer.Option("--pricing-model", help="per-packet or per-second.")] = "per-packet",
    rate: Annotated[int, typer.Option("--rate", min=1, help="Satoshis per packet (or per second).")] = 1,
    title: Annotated[str, typer.Option("--title", help="A title for listings.")] = "",
    tags: Annotated[str, typer.Option("--tags", help="Comma-separated tags.")] = "",
    max_consumers: Annotated[int | None, typer.Option("--max-consumers", min=1, help="Subscriber limit.")] = None,
    _json: JsonOption = False,
) -> None:
    """Create a stream and advertise it through the DHT."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        body: dict[str, Any] = {
            "stream_id": stream_id,
            "pricing_model": pricing_model,
            "rate": rate,
            "title": title,
            "tags": comma_list(tags),
        }
        if max_consumers is not None:
            body["max_consumers"] = max_consumers
        data = client.call("POST", "/v1/streams", body)
        emit(state, data, lambda out: out.print(f"stream {data['stream_id']} created ({pricing_model}, {rate} sat)"))


@app.command("push")
def push(
    ctx: typer.Context,
    stream_id: Annotated[str, typer.Argument(help="The stream.")],
    file: Annotated[Path | None, typer.Option("--file", help="Read packets from this file (default: stdin).")] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="A live feed: send each line as soon as it is read, in one continuous request, until the input "
            "ends or Ctrl-C (e.g. `tail -f feed.log | overlay-node ctl stream push S --follow`).",
        ),
    ] = False,
    _json: JsonOption = False,
) -> None:
    """Push packets: one per line (NDJSON or raw text) from --file or stdin; --follow for a live feed."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        if follow:
            data = _follow(client, stream_id, file)
            emit(
                state,
                data,
                lambda out: out.print(f"pushed {data['pushed']} packets to {stream_id} (head {data['head']})"),
            )
            return
        pushed, head = 0, 0
        source: IO[str]
        try:
            source = open(file, encoding="utf-8") if file is not None else sys.stdin  # noqa: SIM115
        except OSError as exc:
            raise BadRequest(f"cannot read {file}: {exc.strerror}") from None
        try:
            batch: list[str] = []
            for line in source:
                text = line.rstrip("\r\n")
                if text:
                    batch.append(text)
                if len(batch) >= PUSH_BATCH:
                    head = client.call("POST", f"/v1/streams/{stream_id}/push", {"packets": batch})["head"]
                    pushed += len(batch)
                    batch = []
            if batch or not pushed:
                head = client.call("POST", f"/v1/streams/{stream_id}/push", {"packets": batch})["head"]
                pushed += len(batch)
        except UnicodeDecodeError:
            raise BadRequest("packets must be UTF-8 text") from None
        finally:
            if file is not None:
                source.close()
        data = {"stream_id": stream_id, "pushed": pushed, "head": head}
        emit(state, data, lambda out: out.print(f"pushed {pushed} packets to {stream_id} (head {head})"))


def _follow(client: ControlClient, stream_id: str, file: Path | None) -> dict[str, Any]:
    """Feed the lines of ``file`` (stdin without it) to the stream as they are read (``/v1/streams/S/feed``)."""
    if client.call("GET", f"/v1/streams/{stream_id}")["closed"]:  # an unknown stream: its error, before any input
        raise Conflict(f"stream {stream_id!r} is closed: create another with `overlay-node ctl stream create`")
    try:
        fd = os.open(file, os.O_RDONLY) if file is not None else sys.stdin.fileno()
    except OSError as exc:
        raise BadRequest(f"cannot read {file}: {exc.strerror}") from None
    try:
        answer: dict[str, Any] = client.feed(f"/v1/streams/{stream_id}/feed", _live_chunks(fd))
    finally:
        if file is not None:
            os.close(fd)
    return {"stream_id": stream_id, **answer}


def _live_chunks(fd: int) -> Iterator[bytes]:
    """The input's bytes as they come (a read returns what a pipe holds now, so each line leaves at once). After
    :data:`FEED_KEEPALIVE` seconds of silence between lines a blank line, which the daemon skips, keeps the request
    alive. Ctrl-C ends the feed; what was sent stays pushed."""
    line_open = False
    try:
        while True:
            if not line_open and not select.select([fd], [], [], FEED_KEEPALIVE)[0]:
                yield b"\n"
                continue
            data = os.read(fd, READ_SIZE)
            if not data:
                return
            line_open = not data.endswith(b"\n")
            yield data
    except KeyboardInterrupt:
        return


@app.command("list")
def listing(ctx: typer.Context, _json: JsonOption = False) -> None:
    """The streams this node produces."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", "/v1/streams")

        def human(out: Console) -> None:
            rows = [
                (
                    s["stream_id"],
                    s["pricing_model"],
                    s["rate"],
                    s["head"],
                    s["subscribers"],
                    "closed" if s["closed"] else "open",
                )
                for s in data["streams"]
            ]
            print_rows(out, ["stream", "pricing", "rate", "head", "subscribers", "state"], rows, empty="no streams")

        emit(state, data, human)


@app.command("close")
def close(
    ctx: typer.Context, stream_id: Annotated[str, typer.Argument(help="The stream.")], _json: JsonOption = False
) -> None:
    """Close a stream: subscribers get what is buffered, then the end; the advert is revoked."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", f"/v1/streams/{stream_id}/close")
        emit(state, data, lambda out: out.print(f"stream {stream_id} closed at seq {data['head']}"))


@app.command("status")
def status(
    ctx: typer.Context, stream_id: Annotated[str, typer.Argument(help="The stream.")], _json: JsonOption = False
) -> None:
    """A stream's subscribers: packets, paid and unsettled satoshis."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", f"/v1/streams/{stream_id}")

        def human(out: Console) -> None:
            print_fields(
                out,
                [
                    ("stream", data["stream_id"]),
                    ("pricing", f"{data['pricing_model']} at {data['rate']} sat"),
                    ("head", data["head"]),
                    ("revenue", f"{data['revenue_satoshis']} sat ({data['unsettled_satoshis']} unsettled)"),
                ],
            )
            rows = [
                (s["identity_key"], s["packets"], s["paid_satoshis"], s["payments"], s["state"])
                for s in data["subscribers"]
            ]
            if rows:
                out.print(table(None, ["subscriber", "packets", "paid", "payments", "state"], rows))

        emit(state, data, human)


def subscribe(
    ctx: typer.Context,
    stream_id: Annotated[str, typer.Argument(help="The stream to subscribe to.")],
    max_price: Annotated[int | None, typer.Option("--max-price", min=0, help="Highest satoshis per unit.")] = None,
    auto_pay_interval: Annotated[
        int, typer.Option("--auto-pay-interval", min=1, help="W: units paid per payment.")
    ] = 10,
    prepay: Annotated[
        int | None,
        typer.Option(
            "--prepay",
            min=1,
            help="Units that may be paid ahead, payments in flight at once included (default: the daemon's "
            "streams.pay_ahead; at least 2W).",
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", min=0.001, help="Stop after this many seconds.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write packets (NDJSON) here (default: stdout).")
    ] = None,
    producer: Annotated[str | None, typer.Option("--producer", help="The producer's identity key.")] = None,
    payload: Annotated[
        str,
        typer.Option(
            "--payload",
            help="auto: a packet that is a JSON object or array is written as JSON, others as a string; "
            "text: every packet as a string.",
        ),
    ] = "auto",
    _json: JsonOption = False,
) -> None:
    """Subscribe to a paid stream, paying as packets arrive; writes one {"seq", "payload"} line per packet."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        body: dict[str, Any] = {"stream_id": stream_id, "window": auto_pay_interval}
        if max_price is not None:
            body["max_price"] = max_price
        if duration is not None:
            body["duration"] = duration
        if producer is not None:
            body["producer"] = producer
        if prepay is not None:
            body["prepay"] = prepay
        if payload not in ("auto", "text"):
            raise BadRequest(f"--payload {payload!r}: expected auto or text")
        try:
            sink: IO[str] = open(output, "w", encoding="utf-8") if output is not None else sys.stdout  # noqa: SIM115
        except OSError as exc:
            raise BadRequest(f"cannot write {output}: {exc.strerror}") from None
        summary: dict[str, Any] | None = None
        try:
            try:
                for item in client.stream("POST", "/v1/subscribe", body):
                    if "summary" in item:
                        summary = item["summary"]
                        break
                    sink.write(_packet_line(item, as_json=payload == "auto"))
                    if output is None or state.json:
                        sink.flush()
            except KeyboardInterrupt:
                summary = client.call("POST", "/v1/subscriptions/stop", {"stream_id": stream_id})
        finally:
            if output is not None:
                sink.close()
            else:
                sink.flush()
        if summary is None:
            summary = client.call("POST", "/v1/subscriptions/stop", {"stream_id": stream_id})
        _end(state, summary)


def _packet_line(item: dict[str, Any], *, as_json: bool) -> str:
    """One NDJSON line for a packet: ``{"seq", "payload"}``; with ``as_json`` a payload that is a JSON object or
    array (a JSON stream's packets) is embedded as JSON rather than as a string."""
    value = item["payload"]
    if as_json and isinstance(value, str) and value[:1] in ("{", "["):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return json.dumps({"seq": item["seq"], "payload": value}) + "\n"


def _end(state: CliState, final: dict[str, Any]) -> None:
    """Print the subscription's summary and end with the exit code of the error that ended it, if any."""

    def human(_out: Console) -> None:
        print_note(
            f"{final['packets']} packets, {final['paid_satoshis']} satoshis in {final['payments']} payments "
            f"(fees {final['fees']}); ended: {final['reason']}"
        )
        if final.get("error"):
            print_error(str(final["error"].get("message", "")))

    emit(state, final, human)
    if final.get("error") and final["reason"] not in ("duration", "closed", "stopped", "reader_gone"):
        code = str(final["error"].get("code", "error"))
        raise typer.Exit(exit_code_for("price_exceeded" if final["reason"] == "price_exceeded" else code))
