"""``overlay-node ctl wallet balance | faucet AMOUNT | receive | history`` and the explicit payment commands
``ctl quote --provider KEY --resource ID [--amount N]`` and ``ctl pay --quote-id ID``.

Clients of the control API (``/v1/wallet/...``, ``/v1/quote``, ``/v1/pay``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from overlay_cli.client import control_client
from overlay_cli.output import (
    CliState,
    JsonOption,
    cli_errors,
    emit,
    emit_fields,
    full_key,
    print_fields,
    print_rows,
    when,
)

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(help="The daemon's wallet: balance, devnet faucet, deposit address, history.", no_args_is_help=True)


@app.command()
def balance(ctx: typer.Context, _json: JsonOption = False) -> None:
    """Spendable satoshis, confirmed and unconfirmed."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", "/v1/wallet/balance")

        def human(out: Console) -> None:
            print_fields(
                out,
                [
                    ("spendable", f"{data['satoshis']} sat"),
                    ("confirmed", f"{data['confirmed']} sat"),
                    ("unconfirmed", f"{data['unconfirmed']} sat"),
                    ("reserved", f"{data['reserved']} sat"),
                    ("coins", data["coins"]),
                ],
            )

        emit(state, data, human)


@app.command()
def faucet(
    ctx: typer.Context,
    amount: Annotated[int, typer.Argument(help="Satoshis to get from the devnet faucet.", min=1)],
    _json: JsonOption = False,
) -> None:
    """Fund the wallet from the devnet ledger's faucet (devnet only)."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/wallet/faucet", {"satoshis": amount})
        spendable = data["balance"]["satoshis"]
        text = f"received {data['satoshis']} sat in {data['txid']}; spendable {spendable} sat"
        emit(state, data, lambda out: out.print(text, markup=False))


@app.command()
def receive(ctx: typer.Context, _json: JsonOption = False) -> None:
    """The wallet's deposit key and address."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", "/v1/wallet/receive")

        def human(out: Console) -> None:
            print_fields(
                out,
                [
                    ("address", data["address"]),
                    ("public key", data["pubkey"]),
                    ("locking script", data["locking_script"]),
                    ("derivation", data["derivation"]),
                ],
            )

        emit(state, data, human)


@app.command()
def history(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Most entries to show (newest first).", min=1, max=10_000)] = 50,
    _json: JsonOption = False,
) -> None:
    """Payments and deposits, newest first (with --json: a list of entries)."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", f"/v1/wallet/history?limit={limit}")
        entries: list[dict[str, Any]] = data["history"]

        def human(out: Console) -> None:
            rows = [
                (
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["created_at"])),
                    e["direction"],
                    e["kind"],
                    e["amount"],
                    e["fee"],
                    e["status"],
                    full_key(e.get("counterparty")),
                    e["txid"],
                )
                for e in entries
            ]
            columns = ["time", "dir", "kind", "sat", "fee", "status", "counterparty", "txid"]
            print_rows(out, columns, rows, empty="no history yet")

        emit(state, entries, human)


def quote(
    ctx: typer.Context,
    provider: Annotated[str, typer.Option("--provider", help="The payee's identity key (hex).")],
    resource: Annotated[str, typer.Option("--resource", help="What to pay for (a resource id).")],
    amount: Annotated[
        int | None,
        typer.Option("--amount", help="Satoshis to offer (needed when the payee sets no price).", min=1),
    ] = None,
    _json: JsonOption = False,
) -> None:
    """Ask a peer for a signed payment quote."""
    state: CliState = ctx.obj
    body: dict[str, Any] = {"provider": provider, "resource": resource}
    if amount is not None:
        body["amount"] = amount
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/quote", body)

        def human(out: Console) -> None:
            expires = when(data["expires_ms"] / 1000)
            print_fields(
                out,
                [
                    ("quote id", data["quote_id"]),
                    ("payee", data["payee"]),
                    ("resource", data["resource"]),
                    ("price", f"{data['amount']} sat"),
                    ("expires", expires),
                ],
            )

        emit(state, data, human)


def pay(
    ctx: typer.Context,
    quote_id: Annotated[str, typer.Option("--quote-id", help="A quote from `ctl quote`.")],
    _json: JsonOption = False,
) -> None:
    """Pay a quote; prints the payee's signed receipt."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/pay", {"quote_id": quote_id})

        def human(out: Console) -> None:
            print_fields(
                out,
                [
                    ("paid", f"{data['amount']} sat"),
                    ("txid", data["txid"]),
                    ("payee", data["payee"]),
                    ("resource", data["resource"]),
                    ("quote id", data["quote_id"]),
                    ("receipt sig", data["sig"]),
                ],
            )

        emit(state, data, human)


@app.command("settlement-wait")
def settlement_wait(
    ctx: typer.Context,
    txid: Annotated[str, typer.Argument(help="Transaction id of a payment or spend.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait.", min=0.1, max=3600)] = 30.0,
    _json: JsonOption = False,
) -> None:
    """Wait until the settlement of TXID has an outcome (seen, mined, failed or abandoned)."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/wallet/settlement/wait", {"txid": txid, "timeout": timeout})
        emit_fields(state, data)
