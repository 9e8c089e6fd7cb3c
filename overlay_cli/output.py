"""How the CLI speaks: global options, JSON for scripts, rich tables for people, one-line errors with distinct
exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from overlay_node.errors import OverlayError

#: exit codes by error family (also listed in docs/cli.md); OverlayError subclasses carry their own ``exit_code``
EXIT_OK = 0
EXIT_USAGE = 2


@dataclass(slots=True)
class CliState:
    """Global options, kept in ``ctx.obj`` by the root callback."""

    data_dir: str | None = None
    json: bool = False
    debug: bool = False

    @property
    def out(self) -> Console:
        return Console(highlight=False, soft_wrap=True)


#: ``--json`` after a command (the root callback takes it before the command too)
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def command_state(ctx: typer.Context, as_json: bool) -> CliState:
    """The global options of a command that also takes ``--json`` itself."""
    state: CliState = ctx.obj
    return replace(state, json=True) if as_json else state


def emit(state: CliState, data: Any, human: Callable[[Console], None]) -> None:
    """Print ``data`` as JSON with ``--json``, else call ``human`` to print it for people."""
    if state.json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        human(state.out)


def emit_fields(state: CliState, data: dict[str, Any]) -> None:
    """Print a flat answer: JSON with ``--json``, else one aligned ``field  value`` line per key."""
    emit(state, data, lambda out: print_fields(out, list(data.items())))


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    """A plain rich table."""
    t = Table(title=title, show_lines=False)
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    return t


def print_rows(out: Console, columns: Sequence[str], rows: Sequence[Sequence[object]], *, empty: str) -> None:
    """``rows`` as a table, or the line ``empty`` when there are none."""
    out.print(table(None, columns, rows) if rows else empty)


def short_key(key: str | None) -> str:
    """An identity key cut to its first 16 characters when long, ``-`` when absent."""
    if not key:
        return "-"
    return key[:16] + "…" if len(key) > 20 else key


def comma_list(text: str) -> list[str]:
    """The items of a comma-separated option, stripped, empty ones left out."""
    return [item.strip() for item in text.split(",") if item.strip()]


@contextmanager
def cli_errors(state: CliState) -> Iterator[None]:
    """Turn our errors into a one-line message on stderr and the family's exit code (traceback with --debug)."""
    try:
        yield
    except OverlayError as exc:
        if state.debug:
            raise
        # one line, never wrapped, and the message printed as text (brackets in it are not markup)
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(exc.exit_code) from None


def print_fields(out: Console, rows: Sequence[tuple[str, object]]) -> None:
    """Aligned ``field  value`` lines; values are never wrapped or cut, so keys and URLs stay copyable."""
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"{key:<{width}}  {'-' if value is None else value}", markup=False, overflow="ignore", crop=False)
