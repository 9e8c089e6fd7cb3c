"""``ctl report`` (what this node bought and consumed), ``ctl analytics`` (what it sold) and ``ctl lineage HASH``
(a content's ancestors and descendants, found through the DHT)."""

from __future__ import annotations

import csv
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from overlay_cli.client import control_client
from overlay_cli.output import CliState, JsonOption, cli_errors, emit, print_fields, print_rows, when
from overlay_node.errors import BadRequest

if TYPE_CHECKING:
    from rich.console import Console

FORMATS = ("table", "json", "csv")
REPORT_TYPES = ("usage", "access", "revenue")

TimeRangeOption = Annotated[
    str,
    typer.Option(
        "--time-range", help="24h, 7d, 30m, all, or FROM..TO with ISO dates or epoch seconds (either side open)."
    ),
]

#: the columns of `ctl report --format csv`: one row per provider, stream, content (and payment)
CSV_COLUMNS = (
    "level",
    "provider",
    "name",
    "packets",
    "bytes",
    "satoshis",
    "fees",
    "payments",
    "settled_satoshis",
    "unsettled_satoshis",
    "state",
)


def _format(state: CliState, fmt: str) -> str:
    if fmt not in FORMATS:
        raise BadRequest(f"bad --format {fmt!r}: use table, json or csv")
    if state.json:
        return "json"
    if fmt == "json":
        state.json = True
    return fmt


def _csv_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in data["providers"]:
        rows.append({"level": "provider", "provider": p["identity_key"], "name": "", **p})
    for s in data["streams"]:
        rows.append({"level": "stream", "name": s["stream_id"], "bytes": "", **s})
    for c in data["content"]:
        rows.append({"level": "content", "name": c["hash"], **c})
    for o in data.get("other", []):
        rows.append({"level": "other", "name": o["resource"], "packets": "", "bytes": "", **o})
    for p in data.get("payments", []):
        state = f"{p['status']}/{p['settlement']}"
        rows.append(
            {"level": "payment", "name": p["txid"], "satoshis": p["satoshis"], "fees": p["fee"], "payments": 1}
            | {"provider": p["provider"], "state": state, "settled_satoshis": p["satoshis"] if p["settled"] else 0}
        )
    return rows


def _write_csv(data: dict[str, Any]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in _csv_rows(data):
        writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})


def _report_human(data: dict[str, Any], out: Console) -> None:
    print_fields(
        out,
        [
            ("time range", data["time_range"]["text"]),
            ("paid", f"{data['total_satoshis']} sat in {data['total_payments']} payments (fees {data['total_fees']})"),
            ("settled", f"{data['settled_satoshis']} sat, unsettled {data['unsettled_satoshis']} sat"),
            ("failed", f"{data['failed_satoshis']} sat"),
            ("consumed", f"{data['total_packets']} packets, {data['total_bytes']} bytes"),
        ],
    )
    cols = ["provider", "satoshis", "fees", "payments", "packets", "bytes", "unsettled"]
    rows: list[tuple[object, ...]] = [
        (p["identity_key"], p["satoshis"], p["fees"], p["payments"], p["packets"], p["bytes"], p["unsettled_satoshis"])
        for p in data["providers"]
    ]
    print_rows(out, cols, rows, empty="no purchases in this range")
    if data["streams"]:
        cols = ["stream", "provider", "satoshis", "payments", "packets", "state"]
        rows = [
            (s["stream_id"], s["provider"], s["satoshis"], s["payments"], s["packets"], s["state"])
            for s in data["streams"]
        ]
        print_rows(out, cols, rows, empty="")
    if data["content"]:
        cols = ["content", "provider", "satoshis", "payments", "bytes"]
        rows = [(c["hash"], c["provider"], c["satoshis"], c["payments"], c["bytes"]) for c in data["content"]]
        print_rows(out, cols, rows, empty="")
    if "payments" in data:
        cols = ["txid", "provider", "resource", "satoshis", "fee", "status", "settlement", "time"]
        rows = [
            (p["txid"], p["provider"], p["resource"], p["satoshis"], p["fee"], p["status"], p["settlement"], when(t))
            for p in data["payments"]
            for t in [p["created_at"]]
        ]
        print_rows(out, cols, rows, empty="no payments in this range")


def report(
    ctx: typer.Context,
    time_range: TimeRangeOption = "all",
    include_payments: Annotated[
        bool, typer.Option("--include-payments", help="List each payment with its txid and settlement state.")
    ] = False,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    _json: JsonOption = False,
) -> None:
    """What this node bought and consumed: per provider, stream and content (packets, bytes, satoshis, fees,
    settlement)."""
    state: CliState = ctx.obj
    with cli_errors(state):
        fmt = _format(state, fmt)
        with control_client(state) as client:
            body = {"time_range": time_range, "include_payments": include_payments}
            data = client.call("POST", "/v1/reports/consumer", body)
        if fmt == "csv":
            _write_csv(data)
            return
        emit(state, data, lambda out: _report_human(data, out))


def _analytics_human(data: dict[str, Any], out: Console) -> None:
    kind = data["report_type"]
    print_fields(
        out,
        [
            ("report", f"{kind}, {data['time_range']['text']}"),
            ("revenue", f"{data['total_satoshis']} sat in {data['payments']} payments"),
            ("settled", f"{data['settled_satoshis']} sat, unsettled {data['unsettled_satoshis']} sat"),
            ("wallet received", f"{data['wallet_received_satoshis']} sat"),
        ],
    )
    rows: list[tuple[object, ...]]
    if kind == "revenue":
        rows = [
            (c["identity_key"], c["satoshis"], c["settled_satoshis"], c["unsettled_satoshis"], c["payments"])
            for c in data["consumers"]
        ]
        print_rows(out, ["consumer", "satoshis", "settled", "unsettled", "payments"], rows, empty="no sales")
    for s in data["streams"]:
        rows = [
            (x["identity_key"], x["packets"], x.get("satoshis", "-"), x.get("state", "-")) for x in s["subscribers"]
        ]
        out.print(f"stream {s['stream_id']}: {s['packets']} packets, {s['satoshis']} sat")
        print_rows(out, ["subscriber", "packets", "satoshis", "state"], rows, empty="no subscribers")
    for c in data["content"]:
        rows = [(x["identity_key"], x["accesses"], x["bytes"], x.get("satoshis", "-")) for x in c["consumers"]]
        out.print(f"content {c['hash']}: {c['accesses']} sales, {c['bytes']} bytes, {c['satoshis']} sat")
        print_rows(out, ["consumer", "accesses", "bytes", "satoshis"], rows, empty="no buyers")
    busy = [b for b in data["buckets"] if b["payments"]]
    if busy:
        rows = [(b["start_iso"], b["satoshis"], b["settled_satoshis"], b["payments"]) for b in busy]
        print_rows(out, ["hour", "satoshis", "settled", "payments"], rows, empty="")


def analytics(
    ctx: typer.Context,
    report_type: Annotated[str, typer.Option("--report-type", help="usage, access or revenue.")] = "revenue",
    time_range: TimeRangeOption = "all",
    _json: JsonOption = False,
) -> None:
    """What this node sold: revenue (settled and unsettled), usage or access per stream, content and consumer, with
    hourly buckets (--json) for charts."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/reports/analytics", {"report_type": report_type, "time_range": time_range})
        emit(state, data, lambda out: _analytics_human(data, out))


def _tree(out: Console, entries: list[dict[str, Any]], key: str, indent: int) -> None:
    for e in entries:
        found = "" if e["found"] else " (not found)"
        out.print(f"{'  ' * indent}{e['hash']} {e['relationship'] or '-'}{found}", overflow="ignore", crop=False)
        _tree(out, e.get(key, []), key, indent + 1)


def lineage(
    ctx: typer.Context,
    content: Annotated[str, typer.Argument(metavar="HASH", help="A content id (hex) or UHRP URL.")],
    depth: Annotated[int, typer.Option("--depth", min=1, max=16, help="Levels to follow each way.")] = 3,
    _json: JsonOption = False,
) -> None:
    """A content's ancestors and descendants, from any node (parents from provider records, children from the
    children records in the DHT)."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/content/lineage", {"hash": content, "depth": depth})

        def human(out: Console) -> None:
            print_fields(out, [("content", data["hash"]), ("relationship", data["relationship"] or "-")])
            out.print("ancestors:" if data["parents"] else "ancestors: none")
            _tree(out, data["parents"], "parents", 1)
            out.print("descendants:" if data["children"] else "descendants: none")
            _tree(out, data["children"], "children", 1)

        emit(state, data, human)
