"""The SQLite store on real files: migrations, repositories, concurrency under trio, errors, durability."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from overlay_node.config import StoreSection
from overlay_node.errors import Conflict, StoreError
from overlay_node.store import MIGRATIONS, KnownPeer, Migrations, open_store
from overlay_node.store.payments import IncomingRecord
from overlay_node.store.records import NewJob, UtxoRecord
from overlay_node.store.settlement import DUE_HOLD_SQL, DUE_SQL, NEXT_DUE_SQL, JobUpdate
from overlay_node.store.wallet import HistoryRecord, Outgoing, TxRecord

CONFIG = StoreSection(busy_timeout=5.0, read_connections=4)
LIMIT = 10  # seconds per test, on trio's clock


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "node.db"


async def test_migrations_apply_from_empty(db_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            applied = await store.applied_migrations()
            assert [m.name for m in applied] == list(MIGRATIONS.names())
            assert [m.name for m in applied][:2] == ["0001_meta", "0002_peers"]
            assert all(m.applied_at > 0 for m in applied)
            assert await store.meta.get("anything") is None
            assert await store.peers.list() == []
            assert store.path == db_path
        assert await trio.Path(db_path).exists()


async def test_reopen_is_a_noop(db_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            first = await store.applied_migrations()
        async with open_store(db_path, CONFIG) as store:
            assert await store.applied_migrations() == first


async def test_upgrade_from_an_older_schema_keeps_data(db_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG, migrations=MIGRATIONS.copy(stop_before="0002_peers")) as store:
            assert [m.name for m in await store.applied_migrations()] == ["0001_meta"]
            await store.meta.set("k", "v")
        async with open_store(db_path, CONFIG) as store:
            assert [m.name for m in await store.applied_migrations()] == list(MIGRATIONS.names())
            assert await store.meta.get("k") == "v"
            await store.peers.upsert("02aa", "ws://127.0.0.1:1/p2p/1", 1.0)


async def test_unknown_migration_is_refused(db_path: Path) -> None:
    newer = MIGRATIONS.copy()

    @newer.register("9999_from_the_future")
    def _future(conn: sqlite3.Connection) -> None:
        pass

    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG, migrations=newer):
            pass
        with pytest.raises(StoreError, match=r"newer overlay-node.*9999_from_the_future"):
            async with open_store(db_path, CONFIG):
                pass  # pragma: no cover


async def test_failed_migration_is_rolled_back_whole(db_path: Path) -> None:
    broken = MIGRATIONS.copy()

    @broken.register("9000_half")
    def _half(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        conn.execute("THIS IS NOT SQL")

    with trio.fail_after(LIMIT):
        with pytest.raises(StoreError, match="migration 9000_half failed") as info:
            async with open_store(db_path, CONFIG, migrations=broken):
                pass  # pragma: no cover
        assert isinstance(info.value.__cause__, StoreError)
        assert isinstance(info.value.__cause__.__cause__, sqlite3.Error)
        async with open_store(db_path, CONFIG) as store:
            assert [m.name for m in await store.applied_migrations()] == list(MIGRATIONS.names())
            tables = await store._read(
                lambda c: [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            )
            assert "half_done" not in tables


def test_migration_names_are_checked() -> None:
    m = Migrations()
    m.register("0001_a")(lambda _conn: None)
    with pytest.raises(StoreError, match="must sort after"):
        m.register("0001_a")
    with pytest.raises(StoreError, match="must look like"):
        m.register("two")
    assert m.names() == ("0001_a",)


async def test_meta_and_peers_repositories(db_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            await store.meta.set("k", "v1")
            await store.meta.set("k", "v2")
            assert await store.meta.get("k") == "v2"

            await store.peers.upsert("02aa", "ws://a/p2p/1", 100.0)
            await store.peers.upsert("02bb", "ws://b/p2p/1", 200.0)
            assert await store.peers.record_failure("02aa") == 1
            assert await store.peers.record_failure("02aa") == 2
            assert await store.peers.record_failure("02zz") is None
            assert await store.peers.list() == [
                KnownPeer(identity_key="02bb", address="ws://b/p2p/1", first_seen=200.0, last_seen=200.0, failures=0),
                KnownPeer(identity_key="02aa", address="ws://a/p2p/1", first_seen=100.0, last_seen=100.0, failures=2),
            ]
            # seen again: new address, failures reset, first_seen kept, last_seen never goes back
            await store.peers.upsert("02aa", "ws://a2/p2p/1", 300.0)
            await store.peers.upsert("02aa", "ws://a3/p2p/1", 250.0)
            assert await store.peers.get("02aa") == KnownPeer(
                identity_key="02aa", address="ws://a3/p2p/1", first_seen=100.0, last_seen=300.0, failures=0
            )
            assert await store.peers.forget("02aa") is True
            assert await store.peers.forget("02aa") is False
            assert await store.peers.get("02aa") is None
            assert [p.identity_key for p in await store.peers.list()] == ["02bb"]


async def test_concurrent_writes_from_many_tasks_all_land(db_path: Path) -> None:
    def increment(conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE key = 'counter'").fetchone()
        n = 0 if row is None else int(row[0])
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('counter', ?)", (str(n + 1),))

    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:

            async def worker(i: int) -> None:
                await store.peers.upsert(f"02{i:04x}", f"ws://127.0.0.1:{i}/p2p/1", float(i))
                await store._write(increment)  # read-modify-write: only atomic if writes are serialised
                await store.peers.record_failure(f"02{i:04x}")

            async with trio.open_nursery() as nursery:
                for i in range(60):
                    nursery.start_soon(worker, i)

            peers = await store.peers.list()
            assert len(peers) == 60
            assert all(p.failures == 1 for p in peers)
            assert await store.meta.get("counter") == "60"


async def test_reads_run_while_a_write_is_open(db_path: Path) -> None:
    entered = threading.Event()
    release = threading.Event()

    def slow_write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('k', 'new')")
        entered.set()
        if not release.wait(timeout=LIMIT):
            raise AssertionError("never released")  # pragma: no cover

    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store, trio.open_nursery() as nursery:
            nursery.start_soon(store._write, slow_write)
            await trio.to_thread.run_sync(entered.wait)  # the writer thread holds its open transaction
            # Readers are not blocked by the writer and see the last committed state, many at once.
            results: list[str | None] = []

            async def reader() -> None:
                results.append(await store.meta.get("k"))

            async with trio.open_nursery() as readers:
                for _ in range(10):
                    readers.start_soon(reader)
            assert results == [None] * 10
            release.set()
        # the nursery waited for the write to commit
        async with open_store(db_path, CONFIG) as store:
            assert await store.meta.get("k") == "new"


async def test_urgent_writes_go_before_ordinary_writes_that_wait_behind_them(db_path: Path) -> None:
    entered = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def blocking(_conn: sqlite3.Connection) -> None:
        order.append("first")
        entered.set()
        if not release.wait(timeout=LIMIT):
            raise AssertionError("never released")  # pragma: no cover

    def note(name: str) -> Callable[[sqlite3.Connection], None]:
        def txn(_conn: sqlite3.Connection) -> None:
            order.append(name)

        return txn

    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store, trio.open_nursery() as nursery:
            nursery.start_soon(partial(store._write, blocking, urgent=True))  # e.g. a payment's group commit
            await trio.to_thread.run_sync(entered.wait)
            nursery.start_soon(store._write, note("ordinary"))  # e.g. a settlement batch
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(partial(store._write, note("urgent"), urgent=True))  # the next payments
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    # first come, first served would give "first", "ordinary", "urgent"
    assert order == ["first", "urgent", "ordinary"]


async def test_a_failing_write_rolls_back_whole(db_path: Path) -> None:
    def half(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    def python_error(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('b', '1')")
        raise KeyError("not a database error")

    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            with pytest.raises(StoreError, match="no such table: no_such_table") as info:
                await store._write(half)
            assert isinstance(info.value.__cause__, sqlite3.Error)
            with pytest.raises(KeyError):
                await store._write(python_error)  # our own errors pass through unchanged
            assert await store.meta.get("a") is None
            assert await store.meta.get("b") is None
            await store.meta.set("c", "still writable")
            assert await store.meta.get("c") == "still writable"


async def test_bad_reads_are_store_errors(db_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            with pytest.raises(StoreError, match="no such column"):
                await store._read(lambda c: c.execute("SELECT nope FROM meta").fetchall())
            with pytest.raises(StoreError, match="readonly"):
                await store._read(lambda c: c.execute("DELETE FROM meta").rowcount)
            assert await store.meta.get("x") is None  # the read connection is still usable


async def test_durable_write_restores_normal_sync(db_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            level = await store._write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0], durable=True)
            assert level == 2  # FULL inside the durable commit
            assert await store._write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1  # NORMAL
            mode = await store._read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
            assert mode == "wal"
            assert await store._read(lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0]) == 1


def _temp_files() -> list[str]:
    """SQLite's temporary files this process holds open (a statement journal spilled to disk is one)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:  # closed meanwhile
            continue
        if "etilqs_" in target:
            found.append(target)
    return found


def _fill_and_rewrite(conn: sqlite3.Connection) -> list[str]:
    """A one-statement rewrite of about 300 pages that SQLite must be able to undo alone (a UNIQUE column): the
    temporary files open before the transaction ends."""
    conn.execute("CREATE TABLE IF NOT EXISTS wide (id INTEGER PRIMARY KEY, k INTEGER UNIQUE, v BLOB)")
    conn.execute("DELETE FROM wide")
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) "
        "INSERT INTO wide (k, v) SELECT i, zeroblob(500) FROM n"
    )
    conn.execute("UPDATE wide SET k = k + 100000")
    return _temp_files()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see open files")
async def test_statement_journals_stay_in_memory_but_a_migrations_spill_to_disk(db_path: Path) -> None:
    # engine.py invariant 11: a multi-row statement's journal is a copy in memory, not a file of write system calls
    seen: list[list[str]] = []
    migrations = MIGRATIONS.copy()

    @migrations.register("9000_rewrite")
    def _rewrite(conn: sqlite3.Connection) -> None:
        seen.append(_fill_and_rewrite(conn))

    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG, migrations=migrations) as store:
            (during_migration,) = seen
            assert during_migration, "a migration's statement journal spills to a file past 64 KiB"
            assert await store._write(_fill_and_rewrite) == []
            assert await store._write(_fill_and_rewrite, durable=True) == []
            assert await store._write(lambda c: c.execute("SELECT count(*) FROM wide").fetchone()[0]) == 2000


async def test_the_write_connection_caches_store_cache_mib(db_path: Path) -> None:
    config = dataclasses.replace(CONFIG, cache_mib=3)

    def cache(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA cache_size").fetchone()[0])

    with trio.fail_after(LIMIT):
        async with open_store(db_path, config) as store:
            assert await store._write(cache) == -3 * 1024  # KiB
            assert await store._read(cache) == -2000  # SQLite's default: a reader's cache is dropped by each commit


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            await store.meta.set("node_name", "alpha")
            await store.peers.upsert("02aa", "ws://a/p2p/1", 1.5)
        async with open_store(db_path, CONFIG) as store:
            assert await store.meta.get("node_name") == "alpha"
            assert await store.peers.list() == [
                KnownPeer(identity_key="02aa", address="ws://a/p2p/1", first_seen=1.5, last_seen=1.5, failures=0)
            ]


async def test_closed_store_refuses_calls(db_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            pass
        with pytest.raises(StoreError, match="closed"):
            await store.meta.get("k")
        with pytest.raises(StoreError, match="closed"):
            await store.meta.set("k", "v")


async def test_not_a_database_is_a_store_error(db_path: Path) -> None:
    await trio.Path(db_path).write_bytes(b"this is not an sqlite file" * 100)
    with trio.fail_after(LIMIT), pytest.raises(StoreError, match="not a database"):
        async with open_store(db_path, CONFIG):
            pass  # pragma: no cover


async def test_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT), pytest.raises(StoreError, match="cannot open database"):
        async with open_store(tmp_path / "absent" / "node.db", CONFIG):
            pass  # pragma: no cover


async def test_the_settlement_queue_reads_open_jobs_through_their_index(db_path: Path) -> None:
    """Finished jobs are kept, so the queries a node runs every settlement round must not walk the whole table:
    with ``ORDER BY id`` / ``MIN(id)`` SQLite plans a scan in id order (every payment ever made, each round)."""
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG):
            pass
    conn = sqlite3.connect(db_path)
    try:
        for sql in (DUE_SQL, DUE_HOLD_SQL, NEXT_DUE_SQL):
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, (0,) * sql.count("?"))]
            assert any("USING INDEX settlement_due" in step for step in plan), (sql, plan)
            assert not any(step.startswith("SCAN") for step in plan), (sql, plan)
    finally:
        conn.close()


async def test_next_due_waits_for_the_job_that_holds_the_others_back(db_path: Path) -> None:
    """A pending submission queued after one that waits to retry is held back (a later transaction may spend an
    earlier one): it is not due, and next_due says when the holder is, so the worker does not wake for nothing
    (it used to report the held job's time, in the past, and the worker spun until the holder came due)."""
    now = 1_000_000.0
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            assert await store.settlement.next_due(now) is None
            await store.settlement.add(NewJob(txid="aa" * 32, beef=b"x", next_at=now + 30), now=now)  # retrying
            await store.settlement.add(NewJob(txid="bb" * 32, beef=b"y", next_at=now - 5), now=now)  # held back
            assert await store.settlement.due(now, limit=10) == []
            assert await store.settlement.next_due(now) == now + 30
            # a watch job is never held back
            await store.settlement.add(NewJob(txid="cc" * 32, beef=b"z", kind="watch", next_at=now + 7), now=now)
            assert await store.settlement.next_due(now) == now + 7
            assert [j.txid for j in await store.settlement.due(now + 7, limit=10)] == ["cc" * 32]
            later = await store.settlement.due(now + 30, limit=10)
            assert [j.txid for j in later] == ["aa" * 32, "bb" * 32, "cc" * 32]
            # once the holder is due, the oldest due time is the answer
            assert await store.settlement.next_due(now + 30) == now - 5


def _incoming(n: int, *, quote: str | None = None, spends: tuple[tuple[str, int], ...] | None = None) -> IncomingRecord:
    """Payment number ``n``: its own quote, prefix, transaction and coin unless told otherwise."""
    txid = f"{n:02x}" * 32
    spent = spends if spends is not None else ((f"f{n:x}".rjust(64, "0"), 0),)
    coin = UtxoRecord(
        txid=txid, vout=0, satoshis=100, script=b"s", protocol="2-x", key_id="k", counterparty="c", origin="payment"
    )
    return IncomingRecord(
        quote_id=quote or f"{n:032x}",
        prefix=f"prefix{n}",
        suffix="suffix",
        payer="02" + "ab" * 32,
        resource="stream:s",
        price=100,
        amount=100,
        txid=txid,
        receipt=b"r",
        accepted_at=1_000.0 + n,
        spends=spent,
        txs=(TxRecord(txid=txid, raw=b"raw", parents=tuple(dict.fromkeys(t for t, _ in spent))),),
        utxo=coin,
        history=HistoryRecord(txid=txid, direction="in", kind="payment", amount=100),
        job=NewJob(txid=txid, beef=b"beef", next_at=1_000.0),
    )


async def test_a_batch_of_payments_is_recorded_as_one_by_one_would(db_path: Path) -> None:
    """Payments are recorded many per transaction (one insert per table): a replay or a double spend inside
    the batch is refused as if the records had come one after another, and a record that breaks a constraint
    no check covers sends the batch down the one-by-one path, where only that record is refused."""
    first = _incoming(1)
    batch = [
        first,
        _incoming(2, quote=first.quote_id),  # the same quote again
        _incoming(3, spends=first.spends),  # another transaction spending the first one's input
        _incoming(4),
    ]
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            outcomes = await store.payments.record(batch)
            assert [o.result for o in outcomes] == ["recorded", "replayed", "double_spend", "recorded"]
            assert outcomes[2].conflict == first.spends[0]
            assert outcomes[2].other_txid == first.txid
            assert (await store.payments.get(first.quote_id)) is not None
            assert (await store.payments.get(batch[3].quote_id)) is not None
            assert {j.txid for j in await store.settlement.due(2_000.0, limit=10)} == {first.txid, batch[3].txid}
            # 5 pays us the coin 4 already gave us (a constraint, not a check): it alone is refused
            clash = dataclasses.replace(_incoming(5), utxo=batch[3].utxo)
            outcomes = await store.payments.record([_incoming(6), clash, _incoming(7)])
            assert [o.result for o in outcomes] == ["recorded", "replayed", "recorded"]
            assert (await store.payments.get(clash.quote_id)) is None
            assert (await store.payments.get(_incoming(7).quote_id)) is not None


def _outgoing(n: int, spends: tuple[tuple[str, int], ...], *, change: int = 1, state: str = "pending") -> Outgoing:
    """Our transaction number ``n``: spends ``spends``, ``change`` coins of its own (``state``)."""
    txid = f"{n:02x}" * 32
    coins = tuple(
        UtxoRecord(
            txid=txid,
            vout=v,
            satoshis=100,
            script=b"s",
            protocol="2-x",
            key_id=f"k{n}.{v}",
            counterparty="self",
            origin="change",
        )
        for v in range(change)
    )
    return Outgoing(
        txid=txid,
        spends=spends,
        txs=(TxRecord(txid=txid, raw=b"raw", parents=tuple(dict.fromkeys(t for t, _ in spends))),),
        change=coins,
        history=HistoryRecord(txid=txid, direction="out", kind="payment", amount=100),
        job=NewJob(txid=txid, beef=b"beef", next_at=1_000.0),
        change_state=state,  # type: ignore[arg-type]
    )


async def test_payments_written_ahead_in_a_batch_are_recorded_as_one_by_one_would(db_path: Path) -> None:
    """The payer's write-ahead takes a batch with one insert per table; a batch in which a coin is not spendable
    (yet, or any more) goes one by one, so a payment spending the change of one before it in the batch is
    written, and only a payment whose coin is gone is refused."""
    funding = _outgoing(1, (), change=3, state="spendable")
    coin = [(funding.txid, v) for v in range(3)]
    first = _outgoing(2, (coin[0],))
    after_first = _outgoing(4, ((first.txid, 0),))  # spends the pending change of an earlier batch
    seventh = _outgoing(7, ((after_first.txid, 0),))
    eighth = _outgoing(8, ((seventh.txid, 0),))  # spends the change of one before it in the same batch
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG) as store:
            wallet = store.wallet
            assert await wallet.commit_outgoing([funding], now=1_000.0) == [None]
            assert await wallet.commit_outgoing([first, _outgoing(3, (coin[1],))], now=1_001.0) == [None, None]
            assert await wallet.commit_outgoing([after_first, _outgoing(5, (coin[2],))], now=1_002.0) == [None, None]
            outcomes = await wallet.commit_outgoing([_outgoing(6, (coin[0],)), seventh, eighth], now=1_003.0)
            assert isinstance(outcomes[0], Conflict)
            assert outcomes[1:] == [None, None]
            states = await wallet.utxo_states([*coin, *((f"{n:02x}" * 32, 0) for n in range(2, 9))])
            spent = {*coin, *((f"{n:02x}" * 32, 0) for n in (2, 4, 7))}
            pending = {(f"{n:02x}" * 32, 0) for n in (3, 5, 8)}
            assert states == {**dict.fromkeys(spent, "spent"), **dict.fromkeys(pending, "pending")}
            written = {entry.txid for entry in await wallet.history()}
            assert written == {f"{n:02x}" * 32 for n in (1, 2, 3, 4, 5, 7, 8)}


async def test_coins_a_refused_or_failed_payment_spent_come_back_through_its_parents(db_path: Path) -> None:
    """No index finds coins by the transaction that spent them (migration 0014): a refused payment undone and a
    failed transaction find theirs among the outputs of their parents. On a database written before that migration,
    exactly the coins each spent come back (or die, after a double spend), and a sibling coin another payment spent
    stays spent."""
    funding = _outgoing(1, (), change=4, state="spendable")
    coin = [(funding.txid, v) for v in range(4)]
    refused = _outgoing(2, (coin[0], coin[1]))
    failed = _outgoing(3, (coin[2],))
    sibling = _outgoing(4, (coin[3],))  # same parent as the refused payment's coins
    child = _outgoing(5, ((failed.txid, 0),))  # spends the pending change of ``failed``
    before = MIGRATIONS.copy(stop_before="0014_spent_by_unindexed")
    with trio.fail_after(LIMIT):
        async with open_store(db_path, CONFIG, migrations=before) as store:
            for n, out in enumerate((funding, refused, failed, sibling, child)):
                assert await store.wallet.commit_outgoing([out], now=1_000.0 + n) == [None]
        async with open_store(db_path, CONFIG) as store:
            wallet, settlement = store.wallet, store.settlement
            await wallet.abort_outgoing(refused.txid)
            assert await wallet.utxo_states([*coin, (refused.txid, 0)]) == {
                coin[0]: "spendable",
                coin[1]: "spendable",
                coin[2]: "spent",
                coin[3]: "spent",
            }
            job = await settlement.get(child.txid)
            assert job is not None
            effects = await settlement.apply(
                job, JobUpdate(state="failed", attempts=1, next_at=2_000.0, detail="refused"), now=2_000.0
            )
            assert [(c.txid, c.vout) for c in effects.restored] == [(failed.txid, 0)]
            job = await settlement.get(failed.txid)
            assert job is not None
            effects = await settlement.apply(
                job,
                JobUpdate(state="failed", attempts=1, next_at=2_001.0, detail="spent", double_spend=True),
                now=2_001.0,
            )
            assert effects.restored == ()
            assert await wallet.utxo_states([coin[2], (failed.txid, 0), (child.txid, 0)]) == {
                coin[2]: "dead",
                (failed.txid, 0): "dead",
                (child.txid, 0): "dead",
            }
    conn = sqlite3.connect(db_path)
    try:
        indexes = {str(row[1]) for row in conn.execute("PRAGMA index_list(wallet_utxos)")}
        assert "wallet_utxos_spent_by" not in indexes
    finally:
        conn.close()
