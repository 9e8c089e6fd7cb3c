"""``overlay-node ctl submit FILE --topic tm_x``, ``ctl lookup --service ls_x --query JSON``, ``ctl topics`` and
``ctl history TXID.VOUT --depth N`` and ``ctl sync [--topic tm_x]``: the node's overlay host (BRC-22 submit,
BRC-24 lookup, BRC-64 history, GASP).

Clients of the control API (``/v1/overlay/...``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from overlay_cli.client import control_client
from overlay_cli.output import CliState, JsonOption, cli_errors, emit, print_fields, print_rows, table
from overlay_node.errors import BadRequest

if TYPE_CHECKING:
    from rich.console import Console

_MAX_FILE = 48 * 1024 * 1024


def _read_beef(path: str) -> bytes:
    """A BEEF from a file (``-``: stdin), binary or hex text."""
    try:
        data = sys.stdin.buffer.read(_MAX_FILE + 1) if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > _MAX_FILE:
        raise BadRequest(f"{path} is larger than {_MAX_FILE} bytes")
    text = data.strip()
    if text and all(c in b"0123456789abcdefABCDEF" for c in text):
        try:
            return bytes.fromhex(text.decode("ascii"))
        except ValueError:
            raise BadRequest(f"{path} looks like hex but is not (odd length?)") from None
    return data


def submit(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="BEEF file (binary or hex); - reads stdin.")],
    topic: Annotated[list[str], typer.Option("--topic", "-t", help="Topic to submit to (repeat for several).")],
    mode: Annotated[
        str, typer.Option(help="current-tx, historical-tx (no broadcast) or historical-tx-no-spv.")
    ] = "current-tx",
    _json: JsonOption = False,
) -> None:
    """Submit a transaction to the node's overlay topics (BRC-22) and show the STEAK."""
    state: CliState = ctx.obj
    with cli_errors(state):
        beef = _read_beef(file)
        with control_client(state) as client:
            data = client.call("POST", "/v1/overlay/submit", {"beef_hex": beef.hex(), "topics": topic, "mode": mode})

        def human(out: Console) -> None:
            out.print(f"txid {data['txid']}", markup=False)
            rows = [
                (
                    name,
                    " ".join(map(str, steak.get("outputsToAdmit", []))) or "-",
                    " ".join(map(str, steak.get("coinsToRetain", []))) or "-",
                    " ".join(map(str, steak.get("coinsRemoved", []))) or "-",
                )
                for name, steak in data["steak"].items()
            ]
            out.print(table(None, ["topic", "admitted outputs", "retained inputs", "removed inputs"], rows))

        emit(state, data, human)


def lookup(
    ctx: typer.Context,
    service: Annotated[str, typer.Option("--service", "-s", help="Lookup service, e.g. ls_ship.")],
    query: Annotated[str, typer.Option("--query", "-q", help='The query as JSON, e.g. \'{"topics":["tm_x"]}\'.')],
    _json: JsonOption = False,
) -> None:
    """Ask one of the node's lookup services (BRC-24); each output is shown with its decoded token fields."""
    state: CliState = ctx.obj
    with cli_errors(state):
        try:
            parsed = json.loads(query)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"--query is not JSON: {exc}") from None
        with control_client(state) as client:
            data = client.call("POST", "/v1/overlay/lookup", {"service": service, "query": parsed})

        def human(out: Console) -> None:
            outputs: list[dict[str, Any]] = data["outputs"]
            if not outputs:
                out.print("no outputs")
                return
            for o in outputs:  # one line each, never wrapped: keys and URLs stay copyable
                line = f"{o['txid']}.{o['outputIndex']}  {_describe(o.get('decoded'))}"
                out.print(line, markup=False, overflow="ignore", crop=False)

        emit(state, data, human)


def _describe(decoded: dict[str, Any] | None) -> str:
    if not decoded:
        return "-"
    shown = {k: v for k, v in decoded.items() if k not in ("signature", "lockingKey", "fields")}
    return " ".join(f"{k}={v}" for k, v in shown.items())


def topics(ctx: typer.Context, _json: JsonOption = False) -> None:
    """The topic managers and lookup services the node hosts, with what they hold."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", "/v1/overlay/topics")

        def human(out: Console) -> None:
            managers = [(n, m["name"], m["outputs"], m["unspent"]) for n, m in data["topic_managers"].items()]
            out.print(table("topic managers", ["topic", "name", "outputs", "unspent"], managers))
            services = [(n, m["name"], m["indexed"]) for n, m in data["lookup_services"].items()]
            out.print(table("lookup services", ["service", "name", "indexed"], services))

        emit(state, data, human)


def history(
    ctx: typer.Context,
    outpoint: Annotated[str, typer.Argument(help="The output, as TXID.VOUT.")],
    depth: Annotated[int, typer.Option(help="Retained predecessors to follow back (BRC-64).", min=0)] = 1,
    _json: JsonOption = False,
) -> None:
    """An output's BRC-64 history: it and the spent outputs its topic retained, down to --depth."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/overlay/history", {"outpoint": outpoint, "depth": depth})

        def human(out: Console) -> None:
            print_fields(out, [("outpoint", data["outpoint"]), ("depth", data["depth"])])
            rows = [
                (
                    n["depth"],
                    f"{n['txid']}.{n['outputIndex']}",
                    n["topic"],
                    n["satoshis"],
                    "yes" if n["spent"] else "no",
                )
                for n in data["history"]
            ]
            out.print(table(None, ["depth", "outpoint", "topic", "satoshis", "spent"], rows))

        emit(state, data, human)


def sync(
    ctx: typer.Context,
    topic: Annotated[
        list[str] | None, typer.Option("--topic", "-t", help="Topic to sync (repeat; default: every hosted topic).")
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Host base URL to sync with (repeat; default: the hosts this node knows of)."),
    ] = None,
    _json: JsonOption = False,
) -> None:
    """Sync topics with their other hosts now (GASP): fetch the outputs this node missed, with their ancestry."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/overlay/sync", {"topics": topic or [], "hosts": host or []})

        def human(out: Console) -> None:
            rows = [
                (r["topic"], r["host"], r["listed"], r["fetched"], r["admitted"], r["refused"], r["error"] or "-")
                for r in data["reports"]
            ]
            columns = ["topic", "host", "listed", "fetched", "admitted", "refused", "error"]
            print_rows(out, columns, rows, empty="no other host of these topics is known")

        emit(state, data, human)
