"""``overlay-node ctl ...``: commands that act on a running daemon through its control socket."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from overlay_cli import adverts_cmd, content_cmd, overlay_cmd, reports_cmd, streams_cmd, wallet_cmd
from overlay_cli.client import control_client
from overlay_cli.daemon_exit import ExitWatch, daemon_pid
from overlay_cli.output import CliState, JsonOption, cli_errors, emit, print_fields, print_rows
from overlay_node.errors import ApiError

if TYPE_CHECKING:
    from rich.console import Console

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
app.command()(reports_cmd.report)
app.command()(reports_cmd.analytics)
app.command()(reports_cmd.lineage)


@app.command()
def status(ctx: typer.Context, _json: JsonOption = False) -> None:
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
def peers(ctx: typer.Context, _json: JsonOption = False) -> None:
    """The authenticated peer links of the daemon."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", "/v1/peers")

        def human(out: Console) -> None:
            now = time.time()
            rows = [
                (
                    p["identity_key"],
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
    _json: JsonOption = False,
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
    _json: JsonOption = False,
) -> None:
    """Stop the daemon gracefully; with --wait (the default), return once its process has exited."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        # watched from before the request: api.json goes early in the shutdown, the process and its lock last
        with ExitWatch(daemon_pid(client.data_dir), client.data_dir) as watch:
            data = client.call("POST", "/v1/shutdown")
            if wait and not watch.wait(timeout):
                raise _still_running(watch.pid, timeout)
        result = {"status": "stopped" if wait else data.get("status", "stopping")}
        emit(state, result, lambda out: out.print(f"daemon {result['status']}"))


def _still_running(pid: int | None, timeout: float) -> ApiError:
    who = f"the daemon (pid {pid})" if pid is not None else "the daemon"
    end = f"; end it with `kill -KILL {pid}` if it hangs" if pid is not None else ""
    return ApiError(
        f"{who} has not exited {timeout:g}s after being asked to stop: see its log{end}", code="timeout", status=0
    )


# paid live streams, `ctl stream ...` for producers and `ctl subscribe` for consumers, are mounted last so that
# `ctl --help` lists them after the commands above
app.add_typer(streams_cmd.app, name="stream")
app.command("subscribe")(streams_cmd.subscribe)
