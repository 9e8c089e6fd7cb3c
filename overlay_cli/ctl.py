"""``overlay-node ctl ...``: commands that act on a running daemon through its control socket."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from overlay_cli import adverts_cmd, content_cmd, overlay_cmd, streams_cmd, wallet_cmd
from overlay_cli.client import control_client
from overlay_cli.output import CliState, cli_errors, emit, print_fields, print_rows, short_key

app = typer.Typer(help="Act on the running daemon of the data dir.", no_args_is_help=True)
app.command()(adverts_cmd.advertise)
app.command()(adverts_cmd.adverts)
app.command()(adverts_cmd.discover)
app.add_typer(adverts_cmd.dht_app, name="dht")
app.add_typer(wallet_cmd.app, name="wallet")
app.command()(wallet_cmd.quote)
app.command()(wallet_cmd.pay)
app.command()(content_cmd.publish)
app.command()(content_cmd.distribute)
app.command()(content_cmd.access)
app.command("get")(content_cmd.access)
app.command()(content_cmd.search)
app.add_typer(content_cmd.app, name="content")
app.command()(overlay_cmd.submit)
app.command()(overlay_cmd.lookup)
app.command()(overlay_cmd.topics)
app.command()(overlay_cmd.history)
app.command()(overlay_cmd.sync)


@app.command()
def status(ctx: typer.Context) -> None:
    """Identity, addresses, readiness and peer count of the daemon."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", "/v1/status")

        def human(out: Console) -> None:
            rows = [
                ("identity key", data["identity_key"]),
                ("name", data.get("name") or "-"),
                ("version", data.get("version")),
                ("ready", "yes" if data.get("ready") else "no"),
                ("swarm", " ".join(data.get("swarm", []))),
                ("dht", data.get("dht")),
                ("http", data.get("http")),
                ("ledger", data.get("ledger")),
                ("control", data.get("control")),
                ("data dir", data.get("data_dir")),
                ("peers", data.get("peers")),
                ("dht contacts", data.get("dht_contacts")),
                ("uptime", f"{data.get('uptime', 0):.0f}s"),
                *_http_auth_rows(data.get("http_auth") or {}),
            ]
            print_fields(out, rows)

        emit(state, data, human)


def _http_auth_rows(block: dict[str, Any]) -> list[tuple[str, object]]:
    """The BRC-104/105 lines of ``ctl status``: sessions and requests on the http port, payments taken and made."""
    if not block:
        return []
    refused = sum((block.get("refusals") or {}).values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted((block.get("refusals") or {}).items()))
    client = block.get("client") or {}
    pay_refused = sum((block.get("payments_refused") or {}).values())
    return [
        (
            "http auth",
            "off"
            if not block.get("enabled", True)
            else f"{block.get('sessions', 0)} sessions ({block.get('proven_sessions', 0)} proven), "
            f"{block.get('handshakes', 0)} handshakes, {block.get('authenticated', 0)} authenticated requests, "
            f"{refused} refused" + (f" ({reasons})" if reasons else ""),
        ),
        (
            "http payments",
            f"{block.get('payment_required', 0)} asked (402), {block.get('payments_accepted', 0)} accepted "
            f"({block.get('satoshis_received', 0)} sat), {pay_refused} refused; paid out {client.get('paid', 0)} "
            f"({client.get('satoshis_paid', 0)} sat), {client.get('refused', 0)} refused",
        ),
    ]


@app.command()
def peers(ctx: typer.Context) -> None:
    """The authenticated peer links of the daemon."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", "/v1/peers")

        def human(out: Console) -> None:
            now = time.time()
            rows = [
                (
                    short_key(p["identity_key"]),
                    p["address"],
                    p["direction"],
                    f"{now - p['connected_at']:.0f}s",
                    p["frames_in"],
                    p["frames_out"],
                    "-" if p.get("rtt_ms") is None else f"{p['rtt_ms']:.1f}",
                )
                for p in data["peers"]
            ]
            columns = ["identity", "address", "dir", "age", "frames in", "frames out", "rtt ms"]
            print_rows(out, columns, rows, empty="no peers linked")

        emit(state, data, human)


@app.command()
def connect(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="Peer address: host:port or ws://host:port/p2p/1.")],
) -> None:
    """Link the daemon to a peer (authenticated) and keep the link."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/peers/connect", {"address": address})
        emit(state, data, lambda out: out.print(f"linked to {data['identity_key']} at {address}"))


@app.command()
def stop(
    ctx: typer.Context,
    wait: Annotated[bool, typer.Option(help="Wait until the daemon has exited.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the exit.")] = 30.0,
) -> None:
    """Stop the daemon gracefully."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/shutdown")
        api = client.data_dir / "api.json"
        stopped = not wait or _wait_gone(api, timeout)
        result = {"status": "stopped" if stopped and wait else data.get("status", "stopping")}
        emit(state, result, lambda out: out.print(f"daemon {result['status']}"))


def _wait_gone(path: Path, timeout: float) -> bool:
    """Wait for the daemon to remove its api.json (it does so as its last step)."""
    # the CLI is synchronous and has no event to wait on; the daemon's file removal is the signal
    deadline = time.monotonic() + timeout
    while path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# paid live streams, `ctl stream ...` for producers and `ctl subscribe` for consumers, are mounted last so that
# `ctl --help` lists them after the commands above
app.add_typer(streams_cmd.app, name="stream")
app.command("subscribe")(streams_cmd.subscribe)
