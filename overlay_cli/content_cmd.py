"""``ctl publish | distribute | access | get | search`` and ``ctl content status | list | repair``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from overlay_cli.client import control_client
from overlay_cli.output import (
    CliState,
    JsonOption,
    cli_errors,
    comma_list,
    console,
    emit,
    emit_fields,
    print_error,
    print_fields,
    print_rows,
    table,
    when,
)
from overlay_node.errors import ApiError, exit_code_for

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(help="UHRP content held and published by this node.", no_args_is_help=True)


def _run_stream(state: CliState, events: Iterator[dict[str, Any]], label: str) -> dict[str, Any]:
    """Follow an NDJSON operation with a progress bar on a terminal (not with --json; elsewhere each replica's state
    as a line); return its result or raise its error."""
    if state.json:
        return _result_of(events, None)
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    err = console(stderr=True)
    if not err.is_terminal:  # a bar on a pipe or a file is only a stray blank line left where it was
        return _result_of(events, lambda event: _replica_line(err, event))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def task(name: str, total: int | None) -> Any:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            return tasks[name]

        def show(event: dict[str, Any]) -> None:
            kind = event.get("event")
            if kind == "import":
                bar.update(task(f"{label}: import", event.get("total")), completed=event.get("done", 0))
            elif kind == "transfer":
                name = f"replica {event.get('identity_key', '')}"
                bar.update(task(name, event.get("total")), completed=event.get("done", 0))
            elif kind == "start":
                task(f"{label}: download", event.get("size"))
            elif kind == "chunk" and f"{label}: download" in tasks:
                bar.update(tasks[f"{label}: download"], completed=event.get("done", 0))
            else:
                _replica_line(err, event)

        return _result_of(events, show)


def _replica_line(err: Console, event: dict[str, Any]) -> None:
    """A ``replica`` event's line: its holder and state."""
    if event.get("event") == "replica":
        detail = f" ({event['detail']})" if event.get("detail") else ""
        err.print(f"replica {event.get('identity_key', '')}: {event.get('state')}{detail}")


def _result_of(events: Iterator[dict[str, Any]], show: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """The ``result`` event of an NDJSON operation (the others go to ``show``), or its ``error`` event raised."""
    for event in events:
        kind = event.get("event")
        if kind == "result":
            return event
        if kind == "error":
            code = str(event.get("code", "error"))
            exit_code = event.get("exit_code")
            raise ApiError(
                str(event.get("message", "")),
                code=code,
                status=0,
                exit_code=exit_code if isinstance(exit_code, int) else exit_code_for(code),
            )
        if show is not None:
            show(event)
    raise ApiError("the daemon ended the operation without a result", code="truncated", status=0)


#: types the platform's mime.types may lack (mimetypes reads it), added to what the standard library knows
_EXTRA_TYPES = {
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".json": "application/json",
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
    ".md": "text/markdown",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".toml": "application/toml",
    ".parquet": "application/vnd.apache.parquet",
    ".wasm": "application/wasm",
    ".webp": "image/webp",
}


def guess_content_type(name: str) -> str:
    """The MIME type of a file by its name (``application/octet-stream`` when unknown)."""
    import mimetypes

    suffix = Path(name).suffix.lower()
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    guessed, _encoding = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def _replica_rows(out: Console, data: dict[str, Any]) -> None:
    rows = [
        (r["identity_key"], r["state"], when(r.get("last_confirmed")), r.get("detail", ""))
        for r in data.get("replicas", [])
    ]
    if rows:
        out.print(table(None, ["replica", "state", "last confirmed", "detail"], rows))


def publish(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The file to publish.", exists=True, dir_okay=False, readable=True)],
    title: Annotated[str, typer.Option("--title", help="A title.")] = "",
    tags: Annotated[str, typer.Option("--tags", help="Comma-separated tags (searchable in the DHT).")] = "",
    content_type: Annotated[
        str, typer.Option("--content-type", help="MIME type (default: guessed from the file name).")
    ] = "",
    price: Annotated[int, typer.Option("--price", min=0, help="Price in satoshis (0: free).")] = 0,
    replication: Annotated[int | None, typer.Option("--replication", min=0, max=64, help="Replicas to place.")] = None,
    ttl: Annotated[float | None, typer.Option("--ttl", min=1, help="Seconds until the content expires.")] = None,
    parent: Annotated[list[str] | None, typer.Option("--parent", help="UHRP URL or hash of a parent.")] = None,
    relationship: Annotated[
        str, typer.Option("--relationship", help="derived, processed or enriched (with --parent).")
    ] = "",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the replicas are placed.")] = False,
    _json: JsonOption = False,
) -> None:
    """Publish a file: store it, announce it in the DHT, place replicas; prints its hash and UHRP URL."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        body: dict[str, Any] = {
            "path": str(file.resolve()),
            "title": title,
            "tags": comma_list(tags),
            "content_type": content_type or guess_content_type(file.name),
            "price": price,
            "parents": parent or [],
            "relationship": relationship,
            "wait": wait,
        }
        if replication is not None:
            body["replication"] = replication
        if ttl is not None:
            body["ttl"] = ttl
        data = _run_stream(state, client.stream("POST", "/v1/content/publish", body), "publish")
        data.pop("event", None)

        def human(out: Console) -> None:
            print_fields(
                out,
                [
                    ("hash", data["hash"]),
                    ("uhrp url", data["uhrp_url"]),
                    ("size", data["size"]),
                    ("replication", data["replication"]),
                    ("on chain", data.get("token") or f"no ({data.get('token_error') or 'no token'})"),
                ],
            )
            _replica_rows(out, data)

        emit(state, data, human)
        _fail_if_short(data)


def _fail_if_short(data: dict[str, Any]) -> None:
    """End with an error (exit 1) when fewer replicas were placed than wanted: the answer is printed first and the
    content stays published (the repair pass, or ``ctl distribute``, places the rest later)."""
    placed, wanted = data.get("replicas_placed"), data.get("replicas_wanted")
    if not isinstance(placed, int) or not isinstance(wanted, int) or placed >= wanted:
        return
    if placed == 0:
        why = "no peer took them: check `overlay-node ctl peers`"
    else:
        why = f"see each replica's state: `overlay-node ctl content status {data['hash']}`"
    print_error(f"placed {placed} of {wanted} replicas ({why})")
    raise typer.Exit(exit_code_for("error"))


def distribute(
    ctx: typer.Context,
    content: Annotated[str, typer.Argument(help="Hash or UHRP URL of content held here.")],
    replication: Annotated[int | None, typer.Option("--replication", min=0, max=64, help="Replicas wanted.")] = None,
    nodes: Annotated[str, typer.Option("--nodes", help="Comma-separated identity keys to place on.")] = "",
    _json: JsonOption = False,
) -> None:
    """Place replicas of content on the closest nodes (or the given ones) and show each replica's state."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        body: dict[str, Any] = {"hash": content, "nodes": comma_list(nodes)}
        if replication is not None:
            body["replication"] = replication
        data = _run_stream(state, client.stream("POST", "/v1/content/distribute", body), "distribute")
        data.pop("event", None)

        def human(out: Console) -> None:
            # the target asked for (--replication), else the content's own
            target = data.get("replicas_wanted", data["replication"])
            out.print(f"{data['available']} replicas available (target {target})")
            _replica_rows(out, data)

        emit(state, data, human)
        _fail_if_short(data)


def access(
    ctx: typer.Context,
    content: Annotated[str, typer.Argument(help="UHRP URL or hex SHA-256.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write (default: ./<hash>).")] = None,
    max_price: Annotated[int | None, typer.Option("--max-price", min=0, help="Pay at most this (satoshis).")] = None,
    _json: JsonOption = False,
) -> None:
    """Download content from its holders with integrity checks (paying the producer for priced content)."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        target = output if output is not None else Path(content.split("/")[-1].split(":")[-1])
        body: dict[str, Any] = {"content": content, "output": str(target.resolve())}
        if max_price is not None:
            body["max_price"] = max_price
        data = _run_stream(state, client.stream("POST", "/v1/content/access", body), "access")
        data.pop("event", None)
        emit(state, data, lambda out: out.print(f"wrote {data['size']} bytes to {data['output']} (verified)"))


def search(
    ctx: typer.Context,
    tags: Annotated[str, typer.Option("--tags", help="Comma-separated tags to look up in the DHT.")] = "",
    content_type: Annotated[str, typer.Option("--content-type", help="Only this MIME type.")] = "",
    producer: Annotated[str, typer.Option("--producer", help="Only this producer's identity key.")] = "",
    max_price: Annotated[int | None, typer.Option("--max-price", min=0, help="Highest price.")] = None,
    _json: JsonOption = False,
) -> None:
    """Find content by tags (DHT tag records) and streams by tags (their adverts), or, without tags, content among
    what this node knows. Each result has a kind: content or stream."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        body: dict[str, Any] = {
            "tags": comma_list(tags),
            "content_type": content_type,
            "producer": producer,
        }
        if max_price is not None:
            body["max_price"] = max_price
        data = client.call("POST", "/v1/content/search", body)

        def human(out: Console) -> None:
            rows = [_search_row(r) for r in data["results"]]
            cols = ["kind", "uhrp url / stream", "title", "type", "size", "price", "producer"]
            print_rows(out, cols, rows, empty="nothing found")

        emit(state, data, human)


def _search_row(r: dict[str, Any]) -> tuple[Any, ...]:
    """One table row of a search result: content (its UHRP URL) or a stream (its id; price per packet or second)."""
    if r.get("kind") == "stream":
        price = f"{r['price']} {r['pricing_model']}"
        return ("stream", r["stream_id"], "", "", "", price, r["producer"])
    return ("content", r["uhrp_url"], r["title"], r["content_type"], r["size"], r["price"], r["producer"])


@app.command()
def status(
    ctx: typer.Context, content: Annotated[str, typer.Argument(help="Hash or UHRP URL.")], _json: JsonOption = False
) -> None:
    """Metadata of content and the state of each replica (pending, transferring, available, failed)."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", f"/v1/content/{content}/status")

        def human(out: Console) -> None:
            print_fields(
                out,
                [
                    ("hash", data["hash"]),
                    ("uhrp url", data["uhrp_url"]),
                    ("size", data["size"]),
                    ("held here", "yes" if data["local"] else "no"),
                    ("replicas", f"{data['available']} available of {data['replication']}"),
                ],
            )
            _replica_rows(out, data)

        emit(state, data, human)


@app.command("list")
def list_content(ctx: typer.Context, _json: JsonOption = False) -> None:
    """Content known to this node."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", "/v1/content")

        def human(out: Console) -> None:
            rows = [(c["uhrp_url"], c["title"], c["size"], "yes" if c["local"] else "no") for c in data["content"]]
            print_rows(out, ["uhrp url", "title", "size", "held"], rows, empty="no content")

        emit(state, data, human)


@app.command()
def repair(ctx: typer.Context, _json: JsonOption = False) -> None:
    """Run one repair pass now (count live replicas, recruit or trim)."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/content/repair")
        emit_fields(state, data)
