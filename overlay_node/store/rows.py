"""Many rows per SQL statement, for the writes on a paid stream's path.

Why: Python's ``sqlite3`` lets go of the GIL around every SQLite step and takes it back after, and
``executemany`` makes one step per row. The writes run in a worker thread while the node's trio loop keeps the
GIL busy, so each time the thread wants the GIL back it waits for the loop to hand it over (up to the
interpreter's switch interval, 5 ms). A group commit of a few dozen payments makes hundreds of steps that way:
measured on a 2-core machine with a busy loop, 36 rows into 6 tables took about 1 s with ``executemany`` and
80 ms with one statement per table. So the hot writes send their rows in one statement, and check many keys
with one query.

Pure SQL text and parameters: the functions take an open connection and never commit.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import cast

__all__ = ["MAX_PARAMS", "execute_rows", "marks", "values_sql"]

#: host parameters per statement: SQLite's smallest default limit (builds before 3.32 allow 999)
MAX_PARAMS = 999

# Binding a value that is not an int, float, str or bytearray makes ``sqlite3`` look for an adapter first, and a miss
# costs two attribute lookups, one of which formats an AttributeError and throws it away: about 2,000 instructions
# for each BLOB (bytes) and each NULL (None), more than SQLite's own work for the column. An adapter registered for
# exactly those two types is a dictionary hit instead, and gives back the value it was given (``bytes(b)`` is ``b``
# itself; ``{}.get(None)`` is None), so what is bound does not change. A payment received binds about eight.
sqlite3.register_adapter(bytes, bytes)
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))  # a C function: no Python frame


@functools.lru_cache(maxsize=512)
def values_sql(sql: str, rows: int) -> str:
    """``sql``, a statement with one ``VALUES (...)`` group (``INSERT ... VALUES (?, ?) [ON CONFLICT ...]``), with
    that group repeated ``rows`` times.

    Raises:
        ValueError: ``sql`` has no ``VALUES (`` group, or ``rows`` is not positive.
    """
    if rows < 1:
        raise ValueError("at least one row")
    head, sep, rest = sql.partition("VALUES ")
    if not sep or not rest.startswith("("):
        raise ValueError(f"no VALUES group in {sql!r}")
    depth, end = 0, -1
    for i, char in enumerate(rest):
        depth += (char == "(") - (char == ")")
        if depth == 0:
            end = i + 1
            break
    if end < 0:
        raise ValueError(f"unbalanced VALUES group in {sql!r}")
    group, tail = rest[:end], rest[end:]
    return head + sep + ", ".join([group] * rows) + tail


def execute_rows(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[object]]) -> None:
    """Run the one-row statement ``sql`` (see :func:`values_sql`) for every row of ``rows``, in order, with as
    few statements as :data:`MAX_PARAMS` allows. A constraint a row breaks fails its whole statement (raise it
    to the caller, which rolls back)."""
    if not rows:
        return
    per = max(1, MAX_PARAMS // len(rows[0]))
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        conn.execute(values_sql(sql, len(chunk)), [value for row in chunk for value in row])


def marks(count: int) -> str:
    """``?,?,...``: ``count`` placeholders, for ``WHERE x IN (...)`` (keep ``count`` within :data:`MAX_PARAMS`)."""
    return ",".join("?" * count)
