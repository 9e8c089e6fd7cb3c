"""The ``overlay-node`` command: ``run`` and ``init`` act on a data dir; ``ctl ...`` talks to a running daemon."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main

from overlay_cli import ctl, devnet_cmd
from overlay_cli.output import CliState, JsonOption, cli_errors
from overlay_node.errors import BadRequest, ConfigError, Conflict

app = typer.Typer(
    name="overlay-node",
    help="Peer-to-peer daemon for the BSV overlay network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # usage errors as plain lines (no box wrapped at 80 columns), help without rich: quicker, and copyable
    rich_markup_mode=None,
)
app.add_typer(ctl.app, name="ctl")
app.command("devnet")(devnet_cmd.devnet)


def data_dir_of(state: CliState) -> Path:
    """The data dir a command acts on: ``--data-dir``, else $OVERLAY_NODE_DATA_DIR or ~/.overlay-node."""
    if state.data_dir:
        return Path(state.data_dir).expanduser()
    from overlay_node.datadir import default_data_dir

    return default_data_dir()


@app.callback()
def root(
    ctx: typer.Context,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Data dir (default $OVERLAY_NODE_DATA_DIR or ~/.overlay-node).")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Debug logs and tracebacks.")] = False,
) -> None:
    """Global options come before the command: ``overlay-node --data-dir D ctl status`` (``--json`` may also
    follow any command: ``overlay-node ctl status --json``)."""
    ctx.obj = CliState(data_dir=data_dir, json=json_, debug=debug)


#: what ``init --producer`` / ``init --consumer`` set in config.toml (docs/cli.md, Roles); everything else stays at
#: its default (commented out)
ROLE_SETTINGS: dict[str, dict[str, dict[str, object]]] = {
    # sells content and streams: places replicas of what it publishes, serves many subscribers, keeps a large store
    "producer": {"content": {"replication": 3}, "streams": {"max_consumers": 100}},
    # buys content and streams: publishes nothing (no replicas to place), keeps a small store for what it fetches,
    # and pays several windows of a stream ahead
    "consumer": {"content": {"replication": 0, "storage_budget": 4 * 1024**3}, "streams": {"pay_ahead": 256}},
}


def role_config_text(base: str, role: str | None) -> str:
    """The starter config.toml with the role's keys set (uncommented) in their sections."""
    if role is None:
        return base
    settings = ROLE_SETTINGS[role]
    out: list[str] = [f"# written by `overlay-node init --{role}`: the keys set below fit a {role}", ""]
    section = ""
    for line in base.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        key = line[2:].partition(" = ")[0] if line.startswith("# ") else ""
        value = settings.get(section, {}).get(key)
        out.append(line if value is None else f"{key} = {json.dumps(value)}")
    return "\n".join(out) + "\n"


def _import_identity(dd_path: Path, identity_path: Path, source: Path) -> bool:
    """Put the private key in ``source`` (64 hex characters) in the data dir before ``init`` makes one; false when
    the data dir already holds that very key.

    Raises:
        BadRequest: the file cannot be read or is not a secp256k1 private key in hex.
        Conflict: the data dir already has another identity.
    """
    from overlay_node.crypto.keys import Identity

    try:
        text = source.read_bytes()[:4096].decode("ascii").strip()
        raw = bytes.fromhex(text)
    except OSError as exc:
        raise BadRequest(f"cannot read --identity-key {source}: {exc.strerror or exc}") from None
    except ValueError:
        raise BadRequest(f"--identity-key {source} is not a private key: expected 64 hex characters") from None
    try:
        Identity.from_private_bytes(raw)
    except BadRequest as exc:
        raise BadRequest(f"--identity-key {source} is not a private key: {exc}") from None
    if identity_path.exists():
        if identity_path.read_text(encoding="ascii", errors="replace").strip() == raw.hex():
            return False
        raise Conflict(f"{dd_path} already has another identity key: use a new --data-dir to import {source}")
    dd_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(identity_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(raw.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def next_steps(data_dir: Path, role: str | None) -> list[str]:
    """The commands ``init`` suggests, each one that works as printed."""
    base = f"overlay-node --data-dir {data_dir}"
    steps = [f"{base} run", f"{base} ctl status"]
    if role == "producer":
        steps += [f"{base} ctl wallet faucet 100000", f"{base} ctl publish FILE --price 100"]
    elif role == "consumer":
        steps += [f"{base} ctl wallet faucet 100000", f"{base} ctl search --tags TAG"]
    return steps


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
    producer: Annotated[bool, typer.Option("--producer", help="Write a config for a node that sells.")] = False,
    consumer: Annotated[bool, typer.Option("--consumer", help="Write a config for a node that buys.")] = False,
    identity_key: Annotated[
        Path | None, typer.Option("--identity-key", help="Import this private key (64 hex characters).")
    ] = None,
    _json: JsonOption = False,
) -> None:
    """Create the data dir, its identity key and a commented config.toml (existing files are kept)."""
    from overlay_node.config import starter_config_text
    from overlay_node.crypto.keys import Identity
    from overlay_node.datadir import DataDir

    state: CliState = ctx.obj
    with cli_errors(state):
        if producer and consumer:
            raise BadRequest("give at most one of --producer and --consumer")
        role = "producer" if producer else "consumer" if consumer else None
        dd = DataDir(data_dir_of(state))
        imported = identity_key is not None and _import_identity(dd.path, dd.identity_path, identity_key)
        result = dd.init(config_text=role_config_text(starter_config_text(), role))
        key = Identity.from_private_bytes(dd.load_identity()).public_key_hex
        steps = next_steps(dd.path, role)
        data: dict[str, object] = {
            "data_dir": str(dd.path),
            "identity_key": key,
            "created": result.created or imported,
            "config_created": result.config_created,
            "role": role,
            "next": steps,
        }
        if tls:
            from overlay_node.tls import enable_in_data_dir

            data["tls"] = enable_in_data_dir(dd.path, dd.config_path, tls_host or ["127.0.0.1", "localhost"])
        if state.json:
            sys.stdout.write(json.dumps(data) + "\n")
            return
        verb = "initialized" if result.created or imported or result.config_created else "already initialized"
        lines = [f"{verb} {dd.path}", f"identity key {key}"]
        if role is not None and not result.config_created:
            lines.append(f"kept the existing {dd.config_path} (the {role} settings are in docs/cli.md)")
        if tls:
            lines.append(f"https with a local CA: trust {dd.path / 'tls' / 'ca.pem'} in clients")
        lines += ["next:", *(f"  {step}" for step in steps)]
        sys.stdout.write("\n".join(lines) + "\n")


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
    _json: JsonOption = False,
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


def command_words(argv: list[str]) -> list[str]:
    """The words of ``argv`` that may name commands (``ctl content status ...``): global options are skipped, and
    the first option after a word ends them."""
    words: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            if words:
                break
            i += 2 if arg == "--data-dir" else 1
            continue
        words.append(arg)
        i += 1
    return words


def branch(tree: typer.Typer, words: list[str]) -> typer.Typer:
    """``tree`` with only the branch that ``words`` name (the tree itself when they name none).

    typer turns every parameter of every command into a converter when it builds the command tree, which costs
    more than the rest of a ``ctl`` call: the console script builds only the command it runs. (The full tree is
    what tests, ``--help`` of a group and mistyped commands see.)
    """
    if not words:
        return tree
    for command in tree.registered_commands:
        name = command.name or (command.callback and typer.main.get_command_name(command.callback.__name__))
        if name == words[0]:
            only = copy.copy(tree)
            only.registered_commands, only.registered_groups = [command], []
            return only
    for group in tree.registered_groups:
        if group.name == words[0] and group.typer_instance is not None:
            sub = copy.copy(group)
            sub.typer_instance = branch(group.typer_instance, words[1:])
            only = copy.copy(tree)
            only.registered_commands, only.registered_groups = [], [sub]
            return only
    return tree


def plain_parameters(command: Any) -> None:
    """Let the plain string and flag parameters of ``command`` and its subcommands through as they are.

    typer (0.29) converts values with a pydantic TypeAdapter, and importing pydantic is about half of a short
    ``ctl`` call; a ``str`` without a parser, or a flag, needs no conversion (typer's own pass-through checks the
    type). Uses typer's lazily built converter slot; where a typer version has none, nothing changes (the call is
    only slower).
    """
    try:
        from typer._coercion import PassThroughRuntimeParam
    except ImportError:  # pragma: no cover - another typer
        return
    params = list(getattr(command, "params", ()))
    with contextlib.suppress(Exception):  # --help: made (and kept) by the command on first use; make it now
        params.append(command.get_help_option(typer.Context(command)))
    for param in params:
        desc = getattr(param, "type_descriptor", None)
        info = getattr(desc, "parameter_info", None)
        if (
            desc is not None
            and info is not None
            and desc.annotation in (str, bool)
            and getattr(desc, "file_annotation", None) is None
            and getattr(info, "parser", None) is None
            and getattr(param, "_runtime_param", "absent") is None
        ):
            param._runtime_param = PassThroughRuntimeParam(annotation=desc.annotation, parameter_info=info)
    for sub in getattr(command, "commands", {}).values():
        plain_parameters(sub)


def main() -> None:
    """Console-script entry point: builds the branch of the command tree that the arguments name (see
    :func:`branch`) and runs it."""
    logging.captureWarnings(True)
    command = typer.main.get_command(branch(app, command_words(sys.argv[1:])))
    plain_parameters(command)
    command()


if __name__ == "__main__":
    main()
