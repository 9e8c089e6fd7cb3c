"""How the CLI speaks: ``--json`` for scripts, aligned fields and tables for people, one-line errors with the exit
code of their family (the table in :mod:`overlay_node.errors`).

rich is imported only when something is printed for people: a ``--json`` call never loads it. Everything printed
comes from data (keys, titles, error messages from the daemon), so consoles here never interpret rich markup, and
nothing is wrapped or cut when the output is not a terminal.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from overlay_node.errors import OverlayError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


@dataclass(slots=True)
class CliState:
    """Global options, kept in ``ctx.obj`` by the root callback (``--json`` after a command sets ``json`` too)."""

    data_dir: str | None = None
    json: bool = False
    debug: bool = False
    #: the command being run, without its arguments (``overlay-node ctl publish``), for error messages
    command: str = ""

    @property
    def out(self) -> Console:
        return console()


def console(*, stderr: bool = False) -> Console:
    """A console for people: no markup (the text is data), no highlighting; on a terminal lines fold at its width,
    elsewhere (a pipe, a file) nothing is wrapped or cut."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(
        file=stream,
        markup=False,
        highlight=False,
        emoji=False,
        soft_wrap=not tty,
        width=None if tty else 100_000,
    )


def _json_flag(ctx: typer.Context, value: bool) -> bool:
    """``--json`` after a command: the same as the global ``overlay-node --json ...``. (Called for every command
    that declares it, with or without the flag: it also records the command's name for error messages.)"""
    if not isinstance(ctx.obj, CliState):
        ctx.obj = CliState()
    ctx.obj.command = ctx.command_path
    if value:
        ctx.obj.json = True
    return value


#: ``--json`` on a command; every leaf command takes it (tests/integration/test_cli.py walks the command tree), and
#: the root callback takes it before the command too. Declare it as ``_json: JsonOption = False``; the callback
#: sets the command's ``CliState.json``.
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.", callback=_json_flag)]


def emit(state: CliState, data: Any, human: Callable[[Console], None]) -> None:
    """Print ``data`` as JSON with ``--json``, else call ``human`` to print it for people."""
    if state.json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        human(console())


def emit_fields(state: CliState, data: dict[str, Any]) -> None:
    """Print a flat answer: JSON with ``--json``, else one aligned ``field  value`` line per key."""
    emit(state, data, lambda out: print_fields(out, list(data.items())))


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    """A plain rich table; cells are text (never markup), folded only where a terminal is too narrow."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, show_lines=False)
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*(Text("" if v is None else str(v)) for v in row))
    return t


def print_rows(out: Console, columns: Sequence[str], rows: Sequence[Sequence[object]], *, empty: str) -> None:
    """``rows`` as a table, or the line ``empty`` when there are none."""
    out.print(table(None, columns, rows) if rows else empty)


def full_key(key: str | None) -> str:
    """An identity key or hash as it is (never cut: ``ctl quote --provider`` needs it whole), ``-`` when absent."""
    return key or "-"


def when(epoch: float | None, *, now: float | None = None) -> str:
    """An epoch time for people: ``2026-12-03 10:40:00Z (in 15m)``; ``-`` when absent (JSON keeps the number)."""
    if epoch is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))
    delta = epoch - (time.time() if now is None else now)
    return f"{stamp} ({'in ' if delta >= 0 else ''}{_span(abs(delta))}{'' if delta >= 0 else ' ago'})"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def comma_list(text: str) -> list[str]:
    """The items of a comma-separated option, stripped, empty ones left out."""
    return [item.strip() for item in text.split(",") if item.strip()]


def print_error(message: str) -> None:
    """``error: message`` on stderr: one line, never wrapped, the message printed as text."""
    sys.stderr.write(f"error: {' '.join(message.splitlines())}\n")
    sys.stderr.flush()


def print_note(message: str) -> None:
    """A line for people on stderr (progress, summaries), printed as text, never wrapped."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


@contextmanager
def cli_errors(state: CliState) -> Iterator[None]:
    """Turn our errors into a one-line message on stderr and the family's exit code (traceback with --debug)."""
    try:
        yield
    except OverlayError as exc:
        if state.debug:
            raise
        print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None


def print_fields(out: Console, rows: Sequence[tuple[str, object]]) -> None:
    """Aligned ``field  value`` lines; values are never wrapped or cut, so keys and URLs stay copyable."""
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"{key:<{width}}  {'-' if value is None else value}", markup=False, overflow="ignore", crop=False)
