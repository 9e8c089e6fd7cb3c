"""The end of the soak: settle the cluster (every node up and linked, repair passes, payments settled), then check
the invariants from durable records on both sides:

- content: every acknowledged blob held by at least R live nodes besides its producer, each copy (the file in the
  holder's blob store) byte-exact: its size and SHA-256 are the id's;
- streams: no subscriber got more packets than its producer's recorded payments cover plus one unpaid window,
  counted three ways (sequence numbers the driver read, the consumer's report, the producer's status);
- payments: every payment recorded once by its payer and once by its payee, and known to the ledger (its HTTP
  API) unless both sides gave it up; every acknowledged receipt among them;
- wallets: each wallet's spendable coins are exactly the ledger's unspent outputs on the scripts the wallet ever
  held, and its balance is their sum. The control API lists no coins and the ledger's HTTP API no outputs by
  script, so this one reads both SQLite files (read-only) beside the balance the control API answers.

A bounded wait on a status condition (the repair rounds) is how the soak settles; everything else waits on
server-side events (``/v1/peers/wait``, ``/v1/wallet/settlement/wait``).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.soak.workload import REPLICATION
from tests.soak.world import FAILURES, Sub, World, error_code

T = TypeVar("T")
R = TypeVar("R")

#: ARC statuses that mean the ledger holds the transaction
SETTLED = ("SEEN_ON_NETWORK", "MINED")
#: history statuses of a payment its payer gave up (the coins came back)
GIVEN_UP = ("failed", "abandoned")
REPAIR_ROUNDS = 6
#: seconds a server-side wait (links, one settlement) may take
LINK_WAIT = 60
SETTLE_WAIT = 60
#: violations listed per check at most (the count is always whole)
SHOWN = 5


def parallel(fn: Callable[[T], R], items: Sequence[T], workers: int = 8) -> list[R]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


# -- settling ------------------------------------------------------------------------------------------------


def rejoin(world: World) -> None:
    """Wait (server side, on link events) until every live node is linked with every other."""
    live = world.live()

    def wait(i: int) -> None:
        others = [world.key(j) for j in live if j != i]
        try:
            world.call(
                i, "POST", "/v1/peers/wait", {"identity_keys": others, "timeout": LINK_WAIT}, timeout=LINK_WAIT + 30
            )
        except FAILURES as exc:
            world.violation("restarts", f"node{i} not linked with every other node after the restarts: {exc}")

    parallel(wait, live)


def links(world: World) -> dict[str, dict[str, int]]:
    """Each live node's peer links and DHT routing-table contacts (every other node, when all is well)."""

    def status(i: int) -> dict[str, int]:
        answer = world.call(i, "GET", "/v1/status")
        return {"peers": int(answer["peers"]), "dht_contacts": int(answer["dht_contacts"])}

    live = world.live()
    return {f"node{i}": s for i, s in zip(live, parallel(status, live), strict=True)}


def stop_subscriptions(world: World) -> None:
    """End every subscriber's session (its reader then gets the summary line); one that has none is skipped."""
    for sub in world.subs:
        try:
            world.call(sub.consumer, "POST", "/v1/subscriptions/stop", {"stream_id": sub.stream_id})
        except FAILURES:
            pass  # no session running (between two, or its node just restarted)


def holdings(world: World, live: Sequence[int]) -> dict[int, set[str]]:
    """The content each live node lists as held locally."""

    def listing(i: int) -> set[str]:
        return {str(c["hash"]) for c in world.call(i, "GET", "/v1/content")["content"] if c.get("local")}

    return dict(zip(live, parallel(listing, live), strict=True))


def _short(world: World, held: dict[int, set[str]]) -> list[str]:
    return [
        b.hash
        for b in world.blobs
        if len({i for i, hashes in held.items() if b.hash in hashes} - {b.publisher}) < REPLICATION
    ]


def repair(world: World) -> dict[int, set[str]]:
    """Repair passes on every node until every acknowledged blob has R replicas again (at most REPAIR_ROUNDS)."""
    live = world.live()

    def one_pass(i: int) -> dict[str, int]:
        try:
            counts: dict[str, int] = world.call(i, "POST", "/v1/content/repair", timeout=600)
        except FAILURES as exc:
            world.note(f"repair pass on node{i}: {error_code(exc)} {exc}")
            return {}
        return counts

    held = holdings(world, live)
    for rounds in range(1, REPAIR_ROUNDS + 1):
        if not _short(world, held):
            break
        for counts in parallel(one_pass, live):
            world.repairs["final_recruited"] += counts.get("recruited", 0)
            world.repairs["final_trimmed"] += counts.get("trimmed", 0)
        world.repairs["final_rounds"] = rounds
        held = holdings(world, live)
    return held


def logged_repairs(world: World) -> int:
    """Recruitments the nodes' repair loops logged over the whole run (every life of every node)."""
    total = 0
    for i in range(world.n):
        log = world.data_dir(i) / "daemon.log"
        if log.exists():
            total += log.read_text(errors="replace").count("; recruited (")
    return total


def histories(world: World, live: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    def history(i: int) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = world.call(i, "GET", "/v1/wallet/history?limit=10000")["history"]
        return entries

    return dict(zip(live, parallel(history, live), strict=True))


def settle_payments(world: World, ledger: httpx.Client) -> None:
    """Every payment on both sides waited for (its settlement job decided), then a block mined."""
    live = world.live()
    jobs = [
        (i, str(e["txid"])) for i, entries in histories(world, live).items() for e in entries if e["kind"] == "payment"
    ]

    def wait(job: tuple[int, str]) -> str:
        i, txid = job
        try:
            answer = world.call(
                i,
                "POST",
                "/v1/wallet/settlement/wait",
                {"txid": txid, "timeout": SETTLE_WAIT},
                timeout=SETTLE_WAIT + 30,
            )
        except FAILURES as exc:
            return f"error:{error_code(exc)}"
        return str(answer["state"])

    states = Counter(parallel(wait, jobs))
    world.note(f"settlement jobs after the wait: {dict(states)}")
    ledger.post("/v1/mine").raise_for_status()


# -- invariants ----------------------------------------------------------------------------------------------


def _blob_file(world: World, i: int, content: str) -> Path:
    return world.data_dir(i) / "blobs" / content[:2] / content[2:4] / content


def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


#: a copy that went between the listing and the hashing: a background repair pass trimmed it (surplus)
DROPPED = "dropped"


def _verify_copy(world: World, i: int, content: str, size: int) -> str:
    """An empty string when node ``i``'s copy is byte-exact, :data:`DROPPED` when the node no longer holds it,
    else what is wrong with it."""
    path = _blob_file(world, i, content)
    if not path.is_file():
        # a trim deletes the blob, then the row: look again once the row had time to follow
        time.sleep(1.0)
        if content not in holdings(world, [i])[i]:
            return DROPPED
        return f"node{i} lists {content[:16]} as held but has no blob file {path}"
    got_size, got = _file_digest(path)
    if (got_size, got) != (size, content):
        return f"node{i}'s copy of {content[:16]} is {got_size} bytes hashing to {got[:16]}, not {size} bytes"
    return ""


def check_content(world: World, held: dict[int, set[str]]) -> dict[str, int]:
    """Each listed copy hashed; then every blob must have R byte-exact copies besides its producer's. The nodes'
    own repair loops keep running, so a copy trimmed as surplus meanwhile is left out, not counted as bad."""
    copies = [
        (i, blob.hash, blob.size) for blob in world.blobs for i, hashes in sorted(held.items()) if blob.hash in hashes
    ]
    results = parallel(lambda copy: _verify_copy(world, *copy), copies, workers=2)
    exact: dict[str, set[int]] = defaultdict(set)
    bad = dropped = 0
    for (i, content, _), problem in zip(copies, results, strict=True):
        if problem == DROPPED:
            dropped += 1
        elif problem:
            bad += 1
            world.violation("content", problem)
        else:
            exact[content].add(i)
    short = 0
    for blob in world.blobs:
        replicas = exact[blob.hash] - {blob.publisher}
        if len(replicas) < REPLICATION:
            short += 1
            world.violation(
                "content",
                f"{blob.hash[:16]} ({blob.size} bytes, published on node{blob.publisher}) has {len(replicas)} "
                f"byte-exact live replicas besides its producer (R = {REPLICATION}): on {sorted(exact[blob.hash])}",
            )
    return {"blobs": len(world.blobs), "copies_hashed": len(copies), "short": short, "bad_copies": bad} | {
        "trimmed_meanwhile": dropped
    }


def _consumer_packets(world: World, sub: Sub) -> int:
    report = world.call(sub.consumer, "POST", "/v1/reports/consumer", {})
    producer = world.key(sub.producer)
    return sum(
        int(s["packets"]) for s in report["streams"] if s["stream_id"] == sub.stream_id and s["provider"] == producer
    )


def check_streams(world: World) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for sub in world.subs:
        status = world.call(sub.producer, "GET", f"/v1/streams/{sub.stream_id}")
        row = next((s for s in status["subscribers"] if s["identity_key"] == world.key(sub.consumer)), None)
        paid = int(row["paid_satoshis"]) if row else 0
        counts = {
            "read by the driver": len(sub.seqs),
            "in the consumer's report": _consumer_packets(world, sub),
            "in the producer's status": int(row["packets"]) if row else 0,
        }
        allowance = paid + sub.window * sub.rate
        for where, packets in counts.items():
            if packets * sub.rate > allowance:
                world.violation(
                    "streams",
                    f"{sub.stream_id} to node{sub.consumer} (W = {sub.window}, rate {sub.rate}): {packets} packets "
                    f"{where} but only {paid} satoshis paid to the producer: beyond one unpaid window (the driver "
                    f"read {len(sub.seqs)})",
                )
        reported = counts["in the consumer's report"]
        if abs(reported - len(sub.seqs)) > sub.window:
            world.note(
                f"{sub.stream_id} to node{sub.consumer}: the consumer's report counts {reported} packets, "
                f"the driver read {len(sub.seqs)}"
            )
        if len(sub.seqs) * sub.rate > paid:
            world.note(f"{sub.stream_id} to node{sub.consumer}: packets read before they were paid (within a window)")
        out.append(
            {
                "stream_id": sub.stream_id,
                "consumer": f"node{sub.consumer}",
                "window": sub.window,
                "sessions": sub.sessions,
                "paid_satoshis": paid,
                # what the subscriber paid beyond the packets the driver read (prepaid windows, packets lost with a
                # killed consumer's queue, and anything paid for packets never sent)
                "paid_beyond_read_satoshis": paid - len(sub.seqs) * sub.rate,
                "payments": int(row["payments"]) if row else 0,
                **{f"packets {where}": n for where, n in counts.items()},
            }
        )
    return out


def ledger_statuses(ledger: httpx.Client, txids: Sequence[str]) -> dict[str, str]:
    def status(txid: str) -> str:
        answer = ledger.get(f"/v1/tx/{txid}")
        return str(answer.json().get("txStatus")) if answer.status_code == 200 else f"http {answer.status_code}"

    return dict(zip(txids, parallel(status, txids), strict=True))


def _payment_entries(
    hist: dict[int, list[dict[str, Any]]],
) -> tuple[dict[str, list[tuple[int, dict[str, Any]]]], dict[str, list[tuple[int, dict[str, Any]]]]]:
    outs: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    ins: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for i, entries in hist.items():
        for e in entries:
            if e["kind"] == "payment":
                (outs if e["direction"] == "out" else ins)[str(e["txid"])].append((i, e))
    return outs, ins


Entries = list[tuple[int, dict[str, Any]]]


def _check_one_payment(world: World, txid: str, outs: Entries, ins: Entries, on_ledger: str) -> list[str]:
    problems = []
    for side, entries in (("payer", outs), ("payee", ins)):
        twice = [i for i, n in Counter(i for i, _ in entries).items() if n > 1]
        if twice:
            problems.append(f"{txid[:16]} recorded more than once by its {side} node{twice[0]}")
    given_up = bool(outs) and all(e["status"] in GIVEN_UP for _, e in outs)
    kept = [i for i, e in ins if e["status"] not in GIVEN_UP]
    if given_up:
        if on_ledger in SETTLED:
            problems.append(f"{txid[:16]} given up by its payer (coins back) but {on_ledger} on the ledger")
        if kept:
            problems.append(f"{txid[:16]} given up by its payer but kept by its payee node{kept[0]}")
        return problems
    for i, e in outs:
        payee = world.index_of(str(e["counterparty"]))
        if payee is not None and payee not in {j for j, _ in ins}:
            problems.append(f"{txid[:16]} from node{i} ({e['status']}) not recorded by its payee node{payee}")
    for j, e in ins:
        payer = world.index_of(str(e["counterparty"]))
        if payer is not None and payer not in {i for i, _ in outs}:
            problems.append(f"{txid[:16]} received by node{j} ({e['status']}) not recorded by its payer node{payer}")
    if on_ledger not in SETTLED and (outs or kept):
        problems.append(f"{txid[:16]} recorded as paid but not settled on the ledger ({on_ledger})")
    return problems


def check_payments(world: World, ledger: httpx.Client) -> dict[str, int]:
    hist = histories(world, world.live())
    outs, ins = _payment_entries(hist)
    txids = sorted(set(outs) | set(ins))
    on_ledger = ledger_statuses(ledger, txids)
    problems: list[str] = []
    for txid in txids:
        problems += _check_one_payment(world, txid, outs.get(txid, []), ins.get(txid, []), on_ledger[txid])
    for paid in world.payments:
        payer_n = sum(1 for i, _ in outs.get(paid.txid, []) if i == paid.payer)
        payee_n = sum(1 for i, _ in ins.get(paid.txid, []) if i == paid.payee)
        if (payer_n, payee_n) != (1, 1):
            problems.append(
                f"acknowledged payment {paid.txid[:16]} (node{paid.payer} -> node{paid.payee}, {paid.amount}) is "
                f"recorded {payer_n} times by the payer and {payee_n} times by the payee"
            )
    for problem in problems:
        world.violation("payments", problem)
    statuses = Counter(on_ledger.values())
    return {"payments": len(txids), "acknowledged": len(world.payments), "problems": len(problems)} | {
        f"ledger {status}": n for status, n in statuses.items()
    }


def _read_only(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def _wallet_vs_ledger(world: World, i: int, ledger_db: Path) -> list[str]:
    balance = int(world.call(i, "GET", "/v1/wallet/balance")["satoshis"])
    with closing(_read_only(world.data_dir(i) / "node.db")) as node:
        rows = node.execute("SELECT txid, vout, satoshis, script, state FROM wallet_utxos").fetchall()
    scripts = {bytes(r["script"]) for r in rows}
    spendable = {(str(r["txid"]), int(r["vout"])): int(r["satoshis"]) for r in rows if r["state"] == "spendable"}
    unspent: dict[tuple[str, int], int] = {}
    with closing(_read_only(ledger_db)) as ledger:
        for script in scripts:
            for r in ledger.execute(
                "SELECT txid, vout, satoshis FROM outputs WHERE script = ? AND spent_by IS NULL", (script,)
            ):
                unspent[(str(r["txid"]), int(r["vout"]))] = int(r["satoshis"])
    problems = []
    only_wallet = sorted(set(spendable) - set(unspent))
    only_ledger = sorted(set(unspent) - set(spendable))
    states = {(str(r["txid"]), int(r["vout"])): str(r["state"]) for r in rows}
    for txid, vout in only_wallet[:SHOWN]:
        problems.append(
            f"node{i}'s coin {txid[:16]}:{vout} is spendable in its wallet but spent or unknown on the ledger"
        )
    for txid, vout in only_ledger[:SHOWN]:
        problems.append(
            f"node{i}'s output {txid[:16]}:{vout} ({unspent[(txid, vout)]} sat) is unspent on the ledger but "
            f"{states[(txid, vout)]} in its wallet"
        )
    extra = len(only_wallet) + len(only_ledger) - min(len(only_wallet), SHOWN) - min(len(only_ledger), SHOWN)
    if extra > 0:
        problems.append(f"node{i}: {extra} more coins differ between its wallet and the ledger")
    if balance != sum(unspent.values()):
        problems.append(
            f"node{i}'s balance is {balance} sat, the ledger's unspent outputs on its scripts {sum(unspent.values())}"
        )
    return problems


def check_wallets(world: World) -> dict[str, int]:
    ledger_db = world.cluster.root / "devnet" / "ledger.db"
    problems: list[str] = []
    for i in world.live():
        try:
            problems += _wallet_vs_ledger(world, i, ledger_db)
        except (*FAILURES, sqlite3.Error) as exc:
            problems.append(f"node{i}: could not compare its wallet with the ledger: {exc}")
    for problem in problems:
        world.violation("wallets", problem)
    return {"wallets": len(world.live()), "problems": len(problems)}
