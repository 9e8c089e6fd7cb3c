"""``overlay-node devnet``: run the devnet ledger (an ARC-compatible local BSV ledger) in the foreground.

Mount with ``app.command("devnet")(devnet)``. Prints where it listens once ready (with ``--json``, one line:
``{"url": ..., "host": ..., "port": ..., "data_dir": ..., "height": ...}``); SIGINT/SIGTERM stop it
gracefully (a second signal forces it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from overlay_cli.output import CliState, JsonOption, cli_errors


def devnet(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", help="TCP port for the ARC API (0: any free port).")] = 4762,
    host: Annotated[str, typer.Option("--host", help="Bind address.")] = "127.0.0.1",
    block_interval: Annotated[
        float,
        typer.Option("--block-interval", help="Seconds between blocks while transactions wait (0: only on demand)."),
    ] = 5.0,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Ledger dir (default <node data dir>/devnet).")
    ] = None,
    fee_sat_per_kb: Annotated[int, typer.Option("--fee-sat-per-kb", help="Mining fee policy.")] = 1,
    api_key: Annotated[str, typer.Option("--api-key", help="Require Authorization: Bearer <key>.")] = "",
    _json: JsonOption = False,
) -> None:
    """Run the devnet ledger: ARC's API over a local UTXO set, blocks with merkle paths, and a faucet."""
    from overlay_cli.main import data_dir_of
    from overlay_node.devnet import DevnetSettings, Policy, serve_foreground
    from overlay_node.errors import ConfigError
    from overlay_node.logs import setup_logging

    state: CliState = ctx.obj if isinstance(ctx.obj, CliState) else CliState()
    with cli_errors(state):
        if data_dir is None:
            data_dir = data_dir_of(state) / "devnet"
        try:
            policy = Policy(mining_fee_satoshis=fee_sat_per_kb, mining_fee_bytes=1000)
        except ValueError as exc:
            raise ConfigError(f"--fee-sat-per-kb: {exc}") from exc
        settings = DevnetSettings(
            data_dir=data_dir.expanduser(),
            host=host,
            port=port,
            block_interval=block_interval,
            policy=policy,
            api_key=api_key,
        )
        setup_logging("debug" if state.debug else "info")
        serve_foreground(settings, as_json=state.json)
