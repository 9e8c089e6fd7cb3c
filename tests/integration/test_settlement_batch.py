"""The settlement queue's batch of ARC answers (``store.settlement.apply_many``) writes a few statements per table for
the whole batch, and leaves the database and the wallet's effects exactly as applying each answer on its own
(``apply``) does: same rows, same effects, in order. Real SQLite files: one store populated, copied, and each copy
brought forward one way."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import trio

from overlay_node.config import StoreSection
from overlay_node.store import open_store
from overlay_node.store.records import JobState
from overlay_node.store.settlement import JobUpdate, SettlementEffects, SettlementJob

CONFIG = StoreSection(busy_timeout=5.0, read_connections=2)
NOW = 1_800_000_000.0
TABLES = ("settlement", "wallet_utxos", "wallet_txs", "wallet_history", "payments")
#: the ARC answer each job gets, by its number (then again round the list); jobs 3 and 11 are finished already
OUTCOMES: tuple[JobState, ...] = ("seen", "mined", "progressing", "failed", "pending", "abandoned", "mined", "seen")


def txid(n: int) -> str:
    return f"{n:064x}"


def populate(conn: sqlite3.Connection, jobs: int) -> None:
    """Per job: its transaction (spending output 0 of the one before), a pending change output, a spent input,
    a history entry, a payment received, and the job itself."""
    for n in range(jobs):
        t = txid(n)
        conn.execute(
            "INSERT INTO wallet_txs (txid, raw, parents, state, created_at) VALUES (?, ?, ?, 'unproven', ?)",
            (t, b"raw", txid(n - 1) if n else "", NOW),
        )
        for vout, state, spent_by in ((0, "spent", txid(n + 1)), (1, "pending" if n % 2 else "spendable", None)):
            conn.execute(
                "INSERT INTO wallet_utxos (txid, vout, satoshis, script, protocol, key_id, counterparty, origin, "
                "state, spent_by, created_at) VALUES (?, ?, 1000, x'76a9', '2-p', 'k', 'self', 'change', ?, ?, ?)",
                (t, vout, state, spent_by, NOW),
            )
        conn.execute(
            "INSERT INTO wallet_history (txid, direction, kind, amount, fee, status, created_at, updated_at) "
            "VALUES (?, 'out', 'payment', 5, 1, ?, ?, ?)",
            (t, ("sending", "unknown", "unconfirmed")[n % 3], NOW, NOW),
        )
        conn.execute(  # the payee's entry of the payment received (it names the quote)
            "INSERT INTO wallet_history (txid, direction, kind, amount, fee, quote_id, status, created_at, updated_at) "
            "VALUES (?, 'in', 'payment', 5, 0, ?, 'unconfirmed', ?, ?)",
            (t, f"q{n}", NOW, NOW),
        )
        conn.execute(
            "INSERT INTO payments (quote_id, derivation_prefix, derivation_suffix, payer, resource, price, amount, "
            "txid, status, receipt, accepted_at, updated_at) VALUES (?, ?, 's', 'p', 'stream:s', 5, 5, ?, ?, x'00', "
            "?, ?)",
            (f"q{n}", f"prefix{n}", t, "failed" if n == 9 else "accepted", NOW, NOW),
        )
        state = "mined" if n in (3, 11) else ("pending", "seen", "progressing")[n % 3]
        conn.execute(
            "INSERT INTO settlement (txid, beef, kind, state, attempts, next_at, created_at, updated_at) "
            "VALUES (?, x'beef', 'submit', ?, 0, ?, ?, ?)",
            (t, state, NOW, NOW, NOW),
        )


def update(n: int) -> JobUpdate:
    outcome = OUTCOMES[n % len(OUTCOMES)]
    if outcome == "mined" and n == 14:  # mined as a later transaction that spends it was: no proof of its own
        return JobUpdate(state="mined", attempts=0, next_at=NOW, arc_status="MINED")
    if outcome == "mined":
        return JobUpdate(
            state="mined", attempts=0, next_at=NOW, arc_status="MINED", merkle_path=b"path", block_height=7
        )
    if outcome in ("failed", "abandoned"):
        return JobUpdate(state=outcome, attempts=2, next_at=NOW, detail="refused", double_spend=n % 2 == 0)
    return JobUpdate(state=outcome, attempts=1, next_at=NOW + 5, arc_status=outcome.upper(), detail=outcome)


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}
    finally:
        conn.close()


async def bring_forward(path: Path, *, batched: bool) -> tuple[list[SettlementEffects], list[str]]:
    """Apply every job's answer (all in one batch, or one by one); the effects, and the statements the batch ran."""
    statements: list[str] = []
    async with open_store(path, CONFIG) as store:
        jobs: list[SettlementJob] = []
        for n in range(16):
            job = await store.settlement.get(txid(n))
            assert job is not None
            jobs.append(job)

        def trace(conn: sqlite3.Connection) -> None:
            conn.set_trace_callback(statements.append)

        await store._write(trace, durable=False)
        items = [(job, update(n)) for n, job in enumerate(jobs)]
        if batched:
            effects = await store.settlement.apply_many(items, now=NOW + 1)
        else:
            effects = [await store.settlement.apply(job, u, now=NOW + 1) for job, u in items]

        def untrace(conn: sqlite3.Connection) -> None:
            conn.set_trace_callback(None)

        await store._write(untrace, durable=False)
    return effects, [s for s in statements if s.split(None, 1)[0].upper() in {"SELECT", "UPDATE", "WITH"}]


async def test_a_batch_of_answers_leaves_what_one_answer_at_a_time_leaves(tmp_path: Path) -> None:
    with trio.fail_after(20):
        original = tmp_path / "original.db"
        async with open_store(original, CONFIG) as store:

            def fill(conn: sqlite3.Connection) -> None:
                populate(conn, 17)

            await store._write(fill, durable=True)
        one, many = tmp_path / "one.db", tmp_path / "many.db"
        shutil.copy(original, one)
        shutil.copy(original, many)
        singly, _ = await bring_forward(one, batched=False)
        together, statements = await bring_forward(many, batched=True)
    assert together == singly
    assert dump(many) == dump(one)
    assert dump(many) != dump(original)
    # something of every kind happened: coins found, proven, failed and restored, jobs already finished left alone
    for kind in ("restored", "proven", "dead", "failed_payments"):
        assert any(getattr(e, kind) for e in together), kind
    assert together[3] == together[11] == SettlementEffects()
    # the payments received move with their transactions (reached through their history entries)
    assert [e.failed_payments for e in together[:8]] == [(), (), (), (), (), ("q5",), (), ()]
    with contextlib.closing(sqlite3.connect(many)) as conn:
        statuses = dict(conn.execute("SELECT quote_id, status FROM payments").fetchall())
    assert [statuses[f"q{n}"] for n in range(8)] == [
        "settled",  # seen
        "mined",
        "accepted",  # progressing
        "accepted",  # its job was mined already: nothing applied
        "accepted",  # pending again
        "failed",  # abandoned
        "mined",
        "settled",
    ]
    assert together[14].proven == ()  # mined without a proof: its transaction stays unproven
    conn = sqlite3.connect(many)
    try:
        row = conn.execute("SELECT state, merkle_path FROM wallet_txs WHERE txid = ?", (txid(14),)).fetchone()
        assert row == ("unproven", None)
        job = conn.execute("SELECT state FROM settlement WHERE txid = ?", (txid(14),)).fetchone()
        assert job == ("mined",)
    finally:
        conn.close()
    # the jobs that went on cost a few statements for the whole batch; a failure still costs its own
    failures = sum(1 for n in range(16) if OUTCOMES[n % len(OUTCOMES)] in ("failed", "abandoned") and n not in (3, 11))
    assert len(statements) <= 10 + 10 * failures, statements
    # and each searches by index (the table of bound values aside), as in a node's database of many rows (the
    # statistics of these few rows would make a scan the cheaper plan)
    conn = sqlite3.connect(many)
    try:
        if conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_stat1'").fetchone():
            conn.execute("DELETE FROM sqlite_stat1")
            conn.commit()
            conn.close()
            conn = sqlite3.connect(many)
        for sql in statements:
            plan = [str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            scans = [p for p in plan if p.startswith("SCAN") and p.split()[1:2] != ["q"] and "CONSTANT" not in p]
            assert not scans, (sql, plan)
    finally:
        conn.close()
