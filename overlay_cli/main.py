"""The ``overlay-node`` command: ``run`` and ``init`` act on a data dir; ``ctl ...`` talks to a running daemon."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from overlay_cli import ctl, devnet_cmd
from overlay_cli.output import CliState, JsonOption, cli_errors
from overlay_node.errors import ConfigError

app = typer.Typer(
    name="overlay-node",
    help="Peer-to-peer daemon for the BSV overlay network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(ctl.app, name="ctl")
app.command("devnet")(devnet_cmd.devnet)


def data_dir_of(state: CliState) -> Path:
    """The data dir a command acts on: ``--data-dir``, else $OVERLAY_NODE_DATA_DIR or ~/.overlay-node."""
    from overlay_node.datadir import default_data_dir

    return Path(state.data_dir).expanduser() if state.data_dir else default_data_dir()


@app.callback()
def root(
    ctx: typer.Context,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Data dir (default $OVERLAY_NODE_DATA_DIR or ~/.overlay-node).")
    ] = None,
    json_: JsonOption = False,
    debug: Annotated[bool, typer.Option("--debug", help="Debug logs and tracebacks.")] = False,
) -> None:
    """Global options; they come before the command: ``overlay-node --data-dir D ctl status``."""
    ctx.obj = CliState(data_dir=data_dir, json=json_, debug=debug)


@app.command()
def init(
    ctx: typer.Context,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls", help="Also make a local CA and a certificate so the http port serves https:// (kept if present)."
        ),
    ] = False,
    tls_host: Annotated[
        list[str] | None,
        typer.Option(
            "--tls-host", help="Host name or IP the certificate names (repeatable; default 127.0.0.1, localhost)."
        ),
    ] = None,
) -> None:
    """Create the data dir, its identity key and a commented config.toml (existing files are kept)."""
    from overlay_node.config import starter_config_text
    from overlay_node.crypto.keys import Identity
    from overlay_node.datadir import DataDir

    state: CliState = ctx.obj
    with cli_errors(state):
        dd = DataDir(data_dir_of(state))
        result = dd.init(config_text=starter_config_text())
        key = Identity.from_private_bytes(dd.load_identity()).public_key_hex
        data: dict[str, object] = {"data_dir": str(dd.path), "identity_key": key, "created": result.created}
        if tls:
            from overlay_node.tls import enable_in_data_dir

            data["tls"] = enable_in_data_dir(dd.path, dd.config_path, tls_host or ["127.0.0.1", "localhost"])
        if state.json:
            sys.stdout.write(json.dumps(data) + "\n")
        else:
            verb = "initialized" if result.created else "already initialized"
            state.out.print(f"{verb} {dd.path}\nidentity key {key}")
            if tls:
                state.out.print(f"https with a local CA: trust {dd.path / 'tls' / 'ca.pem'} in clients")


def _parse_sets(values: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        out[key.strip()] = value.strip()
    return out


@app.command()
def run(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", help="Config file (default <data_dir>/config.toml).")
    ] = None,
    swarm_port: Annotated[int | None, typer.Option("--swarm-port", help="Peer-link port (0: any free port).")] = None,
    swarm_host: Annotated[str | None, typer.Option("--swarm-host", help="Peer-link bind address.")] = None,
    http_port: Annotated[int | None, typer.Option("--http-port", help="Public HTTP port (0: any free port).")] = None,
    http_host: Annotated[str | None, typer.Option("--http-host", help="Public HTTP bind address.")] = None,
    bootstrap: Annotated[
        list[str] | None, typer.Option("--bootstrap", help="Peer to dial and keep linked (repeatable).")
    ] = None,
    dht_port: Annotated[int | None, typer.Option("--dht-port", help="DHT UDP port (0: any free port).")] = None,
    dht_bootstrap: Annotated[
        list[str] | None, typer.Option("--dht-bootstrap", help="DHT node host:port to bootstrap from (repeatable).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Node name shown in status.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any config key: --set swarm.max_links=64 (repeatable).")
    ] = None,
) -> None:
    """Run the daemon in the foreground (initializing the data dir on first use). Stop it with Ctrl-C."""
    from overlay_node.config import load_config, starter_config_text
    from overlay_node.datadir import DataDir
    from overlay_node.logs import setup_logging

    state: CliState = ctx.obj
    with cli_errors(state):
        dd = DataDir(data_dir_of(state))
        if not dd.identity_path.exists():
            dd.init(config_text=starter_config_text())
        overrides = _parse_sets(set_ or [])
        for key, value in (
            ("swarm.port", swarm_port),
            ("swarm.host", swarm_host),
            ("http.port", http_port),
            ("http.host", http_host),
            ("dht.port", dht_port),
            ("node.name", name),
        ):
            if value is not None:
                overrides[key] = value
        if bootstrap:
            overrides["swarm.bootstrap"] = tuple(bootstrap)
        if dht_bootstrap:
            overrides["dht.bootstrap"] = tuple(dht_bootstrap)
        path = config if config is not None else (dd.config_path if dd.config_path.exists() else None)
        cfg = load_config(path, overrides=overrides)
        setup_logging("debug" if state.debug else cfg.node.log_level)
        from overlay_cli.daemon import run_daemon

        run_daemon(dd, cfg, as_json=state.json)


def main() -> None:
    """Console-script entry point."""
    logging.captureWarnings(True)
    app()


if __name__ == "__main__":
    main()
