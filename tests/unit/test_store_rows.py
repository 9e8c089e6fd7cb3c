"""store/rows.py: one statement for many rows, the same rows as one statement per row would write."""

from __future__ import annotations

import sqlite3

import pytest

from overlay_node.store.rows import MAX_PARAMS, execute_rows, marks, values_sql

UPSERT = (
    "INSERT INTO t (k, v, s) VALUES (?, ?, 'new') "
    "ON CONFLICT (k) DO UPDATE SET v = coalesce(t.v, excluded.v), s = 'seen'"
)


def test_the_values_group_is_repeated_and_the_rest_kept() -> None:
    assert values_sql(UPSERT, 2) == (
        "INSERT INTO t (k, v, s) VALUES (?, ?, 'new'), (?, ?, 'new') "
        "ON CONFLICT (k) DO UPDATE SET v = coalesce(t.v, excluded.v), s = 'seen'"
    )
    assert values_sql("INSERT INTO t (k) VALUES (lower(?))", 3) == (
        "INSERT INTO t (k) VALUES (lower(?)), (lower(?)), (lower(?))"
    )
    with pytest.raises(ValueError, match="no VALUES"):
        values_sql("UPDATE t SET v = ?", 2)
    with pytest.raises(ValueError, match="unbalanced"):
        values_sql("INSERT INTO t (k) VALUES (?", 2)
    with pytest.raises(ValueError, match="at least one"):
        values_sql(UPSERT, 0)
    assert marks(3) == "?,?,?"


def _table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT, s TEXT)")
    return conn


def test_many_rows_land_as_row_by_row_would_across_statement_limits() -> None:
    # more rows than one statement may carry (2 parameters each), keys repeated for the upsert
    rows = [(i % 700, None if i % 3 else f"v{i}") for i in range(MAX_PARAMS)]
    ours, theirs = _table(), _table()
    execute_rows(ours, UPSERT, rows)
    theirs.executemany(UPSERT, rows)
    query = "SELECT k, v, s FROM t ORDER BY k"
    assert ours.execute(query).fetchall() == theirs.execute(query).fetchall()
    assert len(ours.execute(query).fetchall()) == 700
    execute_rows(ours, UPSERT, [])  # nothing to do


def test_a_row_that_breaks_a_constraint_fails_its_statement() -> None:
    conn = _table()
    with pytest.raises(sqlite3.IntegrityError):
        execute_rows(conn, "INSERT INTO t (k, v) VALUES (?, ?)", [(1, "a"), (1, "b")])


def test_blobs_and_nulls_are_bound_through_an_adapter_that_gives_them_back() -> None:
    # without one, sqlite3 looks a BLOB's or a NULL's adapter up by attribute, formatting an AttributeError each time
    protocol = sqlite3.PrepareProtocol
    assert sqlite3.adapters[(bytes, protocol)](b"\x00raw") == b"\x00raw"
    assert sqlite3.adapters[(type(None), protocol)](None) is None
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t (b BLOB, n BLOB, s TEXT, i INTEGER)")
        execute_rows(conn, "INSERT INTO t (b, n, s, i) VALUES (?, ?, ?, ?)", [(b"\x01\x02", None, "x", 7)] * 3)
        rows = conn.execute("SELECT b, typeof(b), n, typeof(n), s, i FROM t").fetchall()
        assert rows == [(b"\x01\x02", "blob", None, "null", "x", 7)] * 3
    finally:
        conn.close()
