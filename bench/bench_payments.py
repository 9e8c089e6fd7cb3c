"""Benchmark of BRC-29 payments: the payee's check + durable record path per core, and end-to-end quote -> pay ->
receipt between whole nodes in separate processes, with a devnet ledger in its own process.

Run from the repository root::

    .venv/bin/python bench/bench_payments.py [--quick] [--chains 32] [--rounds 150] [--payers 16]
        [--payments 200] [--ecdsa 10000] [--defer-settlement] [--skip-payee] [--skip-e2e] [--quote-apart]
        [--profile DIR]

1. Payee path, in this one process (the benchmark's trio loop, its store's writer thread): a payee (store,
   wallet, payments service; no settlement, no peer manager running) and ``--chains`` payers (each its own
   store and wallet, funded by the devnet faucet). Before the clock starts every payer prepares ``--rounds``
   payments, each spending the change of the one before (its own chain: the BEEF of payment r names payment
   r-1 by txid only, since the payee holds it by then); the payee issues the quotes. Then one task per chain
   feeds its payments to the payee in order, as ``pay.submit`` would: ``PaymentMessage.from_wire`` of the wire
   body, :meth:`Payments.accept_payment` (quote checks, BEEF parse, the input's script and signature, fee, the
   output's derived key, and the group commit, which signs the receipts of its batch together (one signature
   per 16) and records them: ``synchronous=FULL``, recorded with its
   settlement job before the receipt is returned), ``receipt.to_wire``. Round 0 warms up (BEEF with the faucet's
   ancestry, block roots fetched once) and is left out. Payments/s per core = payments / CPU seconds of this
   process (all threads, ``time.process_time``: nanoseconds, where ``/proc`` counts 10 ms ticks, a tenth of a
   quick part; the trio thread's share is given too, the rest is mostly the store's writer thread) over the
   measured rounds; the wall-clock rate beside it. The measured rounds are timed in
   three parts one after the other (all chains finish a part before the next starts), so the spread shows how
   steady the figure is, and how it moves as the payee's database grows (it starts empty). Beside it, in the
   same run (before and after part 1), the raw limit: coincurve ECDSA sign + verify (and verify alone) per core
   (``time.process_time`` of a loop over distinct digests; each verify parses the 33-byte public key, as a
   script check must).
2. End to end: one payee node and ``--payers`` payer nodes (whole nodes through ``bench/nodeproc.py``: the payee
   in a process of its own, the payers spread over ``--payer-procs`` processes, default 2, several nodes on each
   trio loop), the devnet ledger in another (``python -m overlay_node.devnet``, a block every
   ``--block-interval`` seconds). Every payer links to the payee, is funded, makes 2 warm-up payments, then all
   pay at once, each ``--payments`` times in a row: ``request_quote`` -> ``pay`` -> receipt (each payment spends
   the change of the one before; every payment has a quote of its own, which comes with the receipt of the payment
   before it, ``pay(then=...)``, the ``next`` of ``pay.submit``: one round trip per payment, the first of each row
   asked with ``pay.quote``; ``--quote-apart``: every quote asked with ``pay.quote``). Payments/s = all payments /
   (last receipt - first start); latency p50/p99 per payment (quote asked -> receipt checked, also split into the
   quote and the payment) in the payers' processes.
   Settlement is live (the payee submits each payment to the ledger at once) unless ``--defer-settlement``. CPU
   ms per payment of the payee's process, the payers' processes together and the ledger's, from ``/proc``, and
   of the payee's and the payers' by thread (the trio loop's ``MainThread``, the stores' writer threads, worker
   threads: ``nodeproc.THREAD_CPU_OP``). Beside it, the raw limit measured just before and after it (coincurve sign
   + verify per core, as in part 1), and each process's CPU per payment in those units: this machine's speed varies
   from hour to hour, and that figure says how slow the hour was. It compares runs of different hours only roughly:
   Python code and libsecp256k1 do not slow down alike (in this project's slow hours the raw limit fell to about half
   and the payee's CPU per payment in those units still rose by a tenth or more).
   The default run is a burst of about 5 s: a payer's copy of each payment comes due ``settle_poll_interval`` (5 s)
   after its receipt, and the payee looks at each payment again as long after its broadcast, so most of that
   settlement falls after the window. ``--payments 800`` (about 20 s) measures the steady state, which includes it
   (docs/design.md, section 9: about 15 % fewer payments/s here).

``--quick``: 30 rounds, 40 payments per payer, 2,000 signatures (about 10 s). ``--profile DIR`` writes a cProfile
dump of the measured payee rounds (part 1) to ``DIR/payee.prof``. Prints a table against the targets and saves
``bench/results/bench_payments.json`` (with the commit and the files of ``overlay_node/`` changed in the working
tree); never fails on time: it exits non-zero only when something is wrong (a refused payment, a balance that
does not add up, a process that fails).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from coincurve import PrivateKey, PublicKey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodeproc import (  # noqa: E402  # bench/ is on sys.path as a script
    THREAD_CPU_OP,
    Host,
    NodeHost,
    NodeSpec,
    open_host,
    process_cpu_seconds,
    system_cpu_seconds,
)
from results_io import save  # noqa: E402  # bench/ is on sys.path

from overlay_node.config import StoreSection, SwarmSection, WalletSection  # noqa: E402
from overlay_node.crypto.keys import Identity  # noqa: E402
from overlay_node.metrics import Metrics  # noqa: E402
from overlay_node.net.peers import PeerManager  # noqa: E402
from overlay_node.protocol.payments import PaymentMessage  # noqa: E402
from overlay_node.services.payments import Payments  # noqa: E402
from overlay_node.services.wallet import Wallet  # noqa: E402
from overlay_node.store.db import open_store  # noqa: E402
from overlay_node.store.wallet import HistoryRecord  # noqa: E402

if TYPE_CHECKING:  # the node processes import it (part 1 needs no node)
    from overlay_node.node import Node

RESULTS = ROOT / "bench" / "results" / "bench_payments.json"
TARGETS = {"payee_per_core": 3_000, "e2e_per_s": 1_000}
AMOUNT = 1_000  # satoshis per payment
FUNDS = 50_000_000  # satoshis each payer gets from the faucet
SEGMENTS = 3  # the payee's measured rounds are timed in this many parts
E2E_ECDSA = 4_000  # signatures of the raw limit measured before and after the end-to-end run
# on top of nodeproc.LOOPBACK, for every node of the end-to-end run
BASE: dict[str, Any] = {"node.shutdown_grace": 1.0, "node.log_level": "warning"}


def _ms_quantiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[max(0, int(len(ms) * 0.99) - 1)], 3),
        "max_ms": round(ms[-1], 3),
    }


def start_ledger(root: Path, block_interval: float) -> tuple[subprocess.Popen[str], str]:
    """The devnet ledger in its own process; returns it and its URL (from its ``--json`` ready line)."""
    command = [sys.executable, "-m", "overlay_node.devnet", "--port", "0", "--json", "--log-level", "warning"]
    command += ["--data-dir", str(root / "devnet"), "--block-interval", str(block_interval)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise SystemExit(f"the devnet ledger did not start (exit status {proc.returncode})")
    return proc, str(json.loads(line)["url"])


def fsync_ms(folder: Path, n: int = 30) -> float:
    """Median time of a 4 KiB write + fsync in ``folder`` (what a durable commit waits for, at least)."""
    path = folder / "fsync.probe"
    times = []
    with path.open("wb") as f:
        for _ in range(n):
            f.write(os.urandom(4096))
            f.flush()
            t = time.perf_counter()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t)
    path.unlink()
    return round(statistics.median(times) * 1000, 3)


# -- 1. the raw limit: coincurve ECDSA --------------------------------------------------------------------------


def ecdsa_limits(n: int) -> dict[str, float]:
    """coincurve ECDSA per core: sign, verify (public key parsed from 33 bytes each time), sign + verify."""
    key = PrivateKey()
    pub = key.public_key.format(compressed=True)
    digests = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]
    t = time.process_time()
    sigs = [key.sign(d, hasher=None) for d in digests]
    sign_s = time.process_time() - t
    t = time.process_time()
    for sig, d in zip(sigs, digests, strict=True):
        if not PublicKey(pub).verify(sig, d, hasher=None):
            raise RuntimeError("coincurve refused its own signature")
    verify_s = time.process_time() - t
    return {
        "n": n,
        "sign_per_s": round(n / sign_s, 1),
        "verify_per_s": round(n / verify_s, 1),
        "sign_verify_per_s": round(n / (sign_s + verify_s), 1),
    }


# -- 1. the payee path, in this process ---------------------------------------------------------------------------


@dataclass
class Party:
    """A node reduced to what payments need (as in tests/integration/test_payments.py): store, wallet, payments."""

    name: str
    identity: Identity
    wallet: Wallet
    payments: Payments
    config: WalletSection

    @property
    def key(self) -> str:
        return self.identity.public_key_hex


async def _run_party(
    root: Path, name: str, url: str, store_config: StoreSection, *, task_status: trio.TaskStatus[Party]
) -> None:
    identity = Identity.generate()
    metrics = Metrics()
    config = WalletSection(arc_url=url)
    async with open_store(root / f"{name}.db", store_config) as store, trio.open_nursery() as inner:
        # the payments service registers its peer handlers on a manager; nothing here runs it (no links)
        peers = PeerManager(identity, SwarmSection(host="127.0.0.1", port=0), metrics)
        wallet = Wallet(identity, config, store, metrics)
        payments = Payments(identity, config, store, metrics, peers, wallet)
        await inner.start(wallet.run)
        await inner.start(payments.run)
        task_status.started(Party(name, identity, wallet, payments, config))


async def _prepare_chain(payee: Party, payer: Party, rounds: int) -> list[dict[str, Any]]:
    """``rounds`` payments of ``payer`` to ``payee``, each spending the change of the one before, as wire bodies.

    Each is written ahead and marked sent on the payer's side (so that its change is spendable and the payee is
    known to hold it: the next BEEF names it by txid only), exactly as ``Payments.send_payment`` does around the
    request."""
    bodies = []
    for r in range(rounds):
        quote = payee.payments.issue_quote(payer.key, f"bench:{payer.name}:{r}", AMOUNT)
        message, prepared = await payer.payments.prepare_payment(quote)
        history = HistoryRecord(
            txid=prepared.txid,
            direction="out",
            kind="payment",
            amount=prepared.amount,
            fee=prepared.fee,
            counterparty=payee.key,
            quote_id=quote.quote_id,
            resource=quote.resource,
        )
        await payer.wallet.begin(prepared, history)
        payer.wallet.sent(prepared, None)
        bodies.append(message.to_wire())
    return bodies


async def _feed(payee: Party, payer_key: str, bodies: list[dict[str, Any]], latencies: list[float]) -> None:
    """What ``pay.submit`` does with each body, without the link."""
    for body in bodies:
        t = time.perf_counter()
        message = PaymentMessage.from_wire(body, max_bytes=payee.config.max_payment_bytes)
        receipt = await payee.payments.accept_payment(payer_key, message)
        receipt.to_wire()
        latencies.append(time.perf_counter() - t)


async def payee_path(args: argparse.Namespace, root: Path, url: str) -> dict[str, Any]:
    out: dict[str, Any] = {"chains": args.chains, "rounds": args.rounds}
    async with trio.open_nursery() as nursery:
        payee: Party = await nursery.start(_run_party, root, "payee", url, StoreSection())
        payers: list[Party] = []
        for i in range(args.chains):
            # payers: one read connection each (they only prepare; 32 stores need not hold 4 each)
            payers.append(await nursery.start(_run_party, root, f"payer{i}", url, StoreSection(read_connections=1)))

        t = time.perf_counter()
        async with trio.open_nursery() as funding:
            for p in payers:
                funding.start_soon(p.wallet.faucet, FUNDS)
        bodies: dict[str, list[dict[str, Any]]] = {}

        async def prepare(p: Party) -> None:
            bodies[p.key] = await _prepare_chain(payee, p, args.rounds)
            await p.wallet.flush()

        async with trio.open_nursery() as preparing:
            for p in payers:
                preparing.start_soon(prepare, p)
        out["prepare_seconds"] = round(time.perf_counter() - t, 2)

        # round 0: warm-up (its BEEF carries the faucet's ancestry; block roots are fetched and kept)
        warm: list[float] = []
        async with trio.open_nursery() as feeding:
            for p in payers:
                feeding.start_soon(_feed, payee, p.key, bodies[p.key][:1], warm)

        # the measured rounds, in SEGMENTS parts one after the other (every chain ends a part before the next
        # begins): the spread between parts shows how steady the figure is on this machine
        measured = range(1, args.rounds)
        size = -(-len(measured) // SEGMENTS)
        parts = [measured[i : i + size] for i in range(0, len(measured), size)]
        latencies: list[float] = []
        segments: list[dict[str, Any]] = []
        prof = cProfile.Profile() if args.profile else None
        for part in parts:
            before = len(latencies)
            machine = system_cpu_seconds()
            cpu, loop_cpu, wall = time.process_time(), time.thread_time(), time.perf_counter()
            if prof is not None:
                prof.enable()
            async with trio.open_nursery() as feeding:
                for p in payers:
                    feeding.start_soon(_feed, payee, p.key, bodies[p.key][part.start : part.stop], latencies)
            if prof is not None:
                prof.disable()
            wall = time.perf_counter() - wall
            loop_cpu = time.thread_time() - loop_cpu
            cpu = time.process_time() - cpu
            segments.append(
                {
                    "payments": len(latencies) - before,
                    "seconds": wall,
                    "cpu_seconds": cpu,
                    "loop_thread_cpu_seconds": loop_cpu,
                    "machine_busy_cores": {
                        k: round((v - machine[k]) / wall, 2) for k, v in system_cpu_seconds().items()
                    },
                }
            )
        if prof is not None:
            prof.dump_stats(str(Path(args.profile) / "payee.prof"))
        n = len(latencies)
        balance = payee.wallet.balance()
        expected = (n + len(warm)) * AMOUNT
        if balance.satoshis != expected:
            raise RuntimeError(f"the payee holds {balance.satoshis} satoshis, not {expected}")
        wall = sum(g["seconds"] for g in segments)
        cpu = sum(g["cpu_seconds"] for g in segments)
        loop_cpu = sum(g["loop_thread_cpu_seconds"] for g in segments)
        per_core = [g["payments"] / g["cpu_seconds"] for g in segments]
        out.update(
            {
                "payments": n,
                "seconds": round(wall, 3),
                "cpu_seconds": round(cpu, 3),
                "loop_thread_cpu_seconds": round(loop_cpu, 3),
                "per_core": round(n / cpu, 1),
                "per_core_segments": [round(x, 1) for x in per_core],
                "per_s_wall": round(n / wall, 1),
                "cpu_us_per_payment": round(cpu / n * 1e6, 1),
                "loop_thread_us_per_payment": round(loop_cpu / n * 1e6, 1),
                "other_threads_us_per_payment": round((cpu - loop_cpu) / n * 1e6, 1),
                "accept_latency": _ms_quantiles(latencies),
                "segments": [{k: round(v, 3) if isinstance(v, float) else v for k, v in g.items()} for g in segments],
            }
        )
        nursery.cancel_scope.cancel()
    return out


# -- 2. end to end: whole nodes in their own processes ------------------------------------------------------------


def _thread_ms(before: list[dict[str, float]], after: list[dict[str, float]], n: int) -> dict[str, float]:
    """CPU ms per payment by thread name, over processes (``thread_cpu`` answers before and after the run)."""
    out: dict[str, float] = {}
    for b, a in zip(before, after, strict=True):
        for name, seconds in a.items():
            out[name] = out.get(name, 0.0) + seconds - b.get(name, 0.0)
    return {name: round(s / n * 1000, 3) for name, s in sorted(out.items(), key=lambda kv: -kv[1]) if s > 0}


def describe(node: Node) -> dict[str, Any]:
    return {"identity_key": node.info.identity_key, "swarm": node.info.swarm[0]}


async def payee_ops(host: Host, op: str, _args: list[Any]) -> Any:
    node = host.nodes[0]
    if op == "balance":
        return node.wallet.balance().satoshis
    raise ValueError(f"unknown op {op}")


async def payer_ops(host: Host, op: str, args: list[Any]) -> Any:
    if op == "setup":  # link every payer to the payee and fund it
        url, key, satoshis = args
        async with trio.open_nursery() as nursery:
            for node in host.nodes:
                nursery.start_soon(_setup_payer, node, url, key, satoshis)
        return None
    if op == "pay":  # every payer pays ``count`` times in a row, all at once; latencies and times
        key, count, tag, apart = args
        latencies: list[tuple[float, float]] = []  # (quote, quote -> receipt) of each payment
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i, node in enumerate(host.nodes):
                nursery.start_soon(_pay_loop, node, key, count, f"{tag}:{i}", apart, latencies)
        return {"t0": t0, "t_end": time.perf_counter(), "latencies": latencies}
    raise ValueError(f"unknown op {op}")


async def _setup_payer(node: Node, url: str, key: str, satoshis: int) -> None:
    await node.peers.connect(url, expect_key=key)
    await node.wallet.faucet(satoshis)


async def _pay_loop(
    node: Node, key: str, count: int, tag: str, apart: bool, latencies: list[tuple[float, float]]
) -> None:
    payments = node.payments
    for i in range(count):
        t = time.perf_counter()
        quote = await payments.request_quote(key, f"e2e:{tag}:{i}", AMOUNT)
        quoted = time.perf_counter()
        # the quote of the next payment comes with this one's receipt (pay.submit's next), unless --quote-apart
        then = (f"e2e:{tag}:{i + 1}", AMOUNT) if i + 1 < count and not apart else None
        receipt = await payments.pay(quote, then=then)
        latencies.append((quoted - t, time.perf_counter() - t))
        if receipt.amount != AMOUNT:
            raise RuntimeError(f"a receipt for {receipt.amount} satoshis, not {AMOUNT}")


async def end_to_end(args: argparse.Namespace, root: Path, url: str, ledger_pid: int) -> dict[str, Any]:
    shared: dict[str, Any] = BASE | {"wallet.arc_url": url}
    if args.defer_settlement:
        shared["wallet.settle_delay"] = 3600  # ARC submissions held back during the run
    hosts: list[NodeHost] = []
    out: dict[str, Any] = {"payers": args.payers, "payments_each": args.payments, "quote_apart": args.quote_apart}
    async with trio.open_nursery() as nursery:

        async def start(specs: list[NodeSpec], ops: Any) -> NodeHost:
            host = await open_host(nursery, specs, ops, describe, in_process=False, log_level=logging.WARNING)
            hosts.append(host)
            return host

        async def on_all(groups: list[NodeHost], op: str, *op_args: Any) -> list[Any]:
            answers: list[Any] = [None] * len(groups)

            async def one(i: int) -> None:
                answers[i] = await groups[i].call(op, *op_args)

            async with trio.open_nursery() as calls:
                for i in range(len(groups)):
                    calls.start_soon(one, i)
            return answers

        def cpu(payee: NodeHost, groups: list[NodeHost]) -> dict[str, float]:
            return {
                "payee": payee.cpu_seconds(),
                "payers": sum(g.cpu_seconds() for g in groups),
                "ledger": process_cpu_seconds(ledger_pid),
            }

        try:
            t = time.perf_counter()
            payee = await start([NodeSpec(str(root), "payee", shared)], payee_ops)
            procs = max(1, min(args.payer_procs, args.payers))
            groups = [
                await start([NodeSpec(str(root), f"p{i}", shared) for i in range(j, args.payers, procs)], payer_ops)
                for j in range(procs)
            ]
            out["payer_processes"] = procs
            out["start_seconds"] = round(time.perf_counter() - t, 2)
            key = payee.info["identity_key"]
            await on_all(groups, "setup", payee.info["swarm"], key, FUNDS)
            # links, BEEF with the faucet's ancestry, block roots
            await on_all(groups, "pay", key, 2, "warm", args.quote_apart)
            threads_before = await on_all([payee, *groups], THREAD_CPU_OP)
            before = cpu(payee, groups)
            machine, wall = system_cpu_seconds(), time.perf_counter()
            runs = await on_all(groups, "pay", key, args.payments, "run", args.quote_apart)
            wall = time.perf_counter() - wall
            after = cpu(payee, groups)
            threads_after = await on_all([payee, *groups], THREAD_CPU_OP)
            latencies = [x for r in runs for x in r["latencies"]]
            n = len(latencies)
            elapsed = max(r["t_end"] for r in runs) - min(r["t0"] for r in runs)
            out.update(
                {
                    "payments": n,
                    "seconds": round(elapsed, 3),
                    "per_s": round(n / elapsed, 1),
                    "latency": _ms_quantiles([total for _, total in latencies]),
                    "quote_latency": _ms_quantiles([quote for quote, _ in latencies]),
                    "pay_latency": _ms_quantiles([total - quote for quote, total in latencies]),
                    "cpu_ms_per_payment": {k: round((after[k] - before[k]) / n * 1000, 3) for k in after},
                    "cpu_ms_per_payment_by_thread": {
                        "payee": _thread_ms(threads_before[:1], threads_after[:1], n),
                        "payers": _thread_ms(threads_before[1:], threads_after[1:], n),
                    },
                    "machine_cores": {
                        "cores": os.cpu_count(),
                        **{k: round((v - machine[k]) / wall, 2) for k, v in system_cpu_seconds().items()},
                        "these_three": round((sum(after.values()) - sum(before.values())) / wall, 2),
                    },
                }
            )
            expected = (n + 2 * args.payers) * AMOUNT
            received = await payee.call("balance")
            if received != expected:
                raise RuntimeError(f"the payee holds {received} satoshis, not {expected}")
        finally:
            for host in reversed(hosts):
                await host.stop()
    out["settlement"] = "deferred" if args.defer_settlement else "live (devnet ledger in its own process)"
    return out


# -- the run ------------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pay-") as tmp:
        root = Path(tmp)
        results["fsync_ms"] = fsync_ms(root)
        ledger, url = start_ledger(root, args.block_interval)
        try:
            if not args.skip_payee:
                results["ecdsa"] = ecdsa_limits(args.ecdsa)
                (root / "payee").mkdir()
                results["payee"] = await payee_path(args, root / "payee", url)
                results["ecdsa_after"] = ecdsa_limits(args.ecdsa)
                sv = statistics.mean(
                    [results["ecdsa"]["sign_verify_per_s"], results["ecdsa_after"]["sign_verify_per_s"]]
                )
                results["payee"]["ratio_to_sign_verify"] = round(results["payee"]["per_core"] / sv, 3)
            if not args.skip_e2e:
                (root / "e2e").mkdir()
                # the raw limit beside it too: how fast this machine signs and verifies right then (it varies
                # from hour to hour here), and the CPU of a payment in those units (see the module doc)
                before = ecdsa_limits(E2E_ECDSA)
                e2e = await end_to_end(args, root / "e2e", url, ledger.pid)
                after = ecdsa_limits(E2E_ECDSA)
                sv = statistics.mean([before["sign_verify_per_s"], after["sign_verify_per_s"]])
                e2e["sign_verify_per_s"] = [before["sign_verify_per_s"], after["sign_verify_per_s"]]
                e2e["cpu_in_sign_verifies"] = {
                    k: round(ms / 1000 * sv, 2) for k, ms in e2e["cpu_ms_per_payment"].items()
                }
                results["e2e"] = e2e
        finally:
            ledger.terminate()
            ledger.wait(10)
    return results


def print_table(r: dict[str, Any]) -> None:
    def row(name: str, value: str, target: str = "") -> None:
        print(f"{name:<56} {value:>20} {target:>10}")

    row("measure", "value", "target")
    if "payee" in r:
        p, e0, e1 = r["payee"], r["ecdsa"], r["ecdsa_after"]
        row(
            f"payee verified + recorded payments/s per core ({p['chains']} chains)",
            f"{p['per_core']:.0f}",
            f">= {TARGETS['payee_per_core']}",
        )
        segs = p["per_core_segments"]
        row(f"  per core in {len(segs)} parts: min - max", f"{min(segs):.0f} - {max(segs):.0f}")
        row("  the same, wall clock", f"{p['per_s_wall']:.0f}")
        busy = [g["machine_busy_cores"].get("busy", 0.0) for g in p["segments"]]
        row(f"  cores busy, whole machine (of {os.cpu_count()}), per part", " ".join(f"{b:.2f}" for b in busy))
        row(
            "  CPU us per payment: all, trio thread, other threads",
            f"{p['cpu_us_per_payment']:.0f}, {p['loop_thread_us_per_payment']:.0f}, "
            f"{p['other_threads_us_per_payment']:.0f}",
        )
        a = p["accept_latency"]
        row("  accept_payment p50 / p99 (ms, 32 in flight)", f"{a['p50_ms']:.2f} / {a['p99_ms']:.2f}")
        row(
            "raw: coincurve sign + verify /s per core (before, after)",
            f"{e0['sign_verify_per_s']:.0f}, {e1['sign_verify_per_s']:.0f}",
        )
        row("raw: coincurve verify /s per core (before, after)", f"{e0['verify_per_s']:.0f}, {e1['verify_per_s']:.0f}")
        row("ratio payee path / (sign + verify)", f"{p['ratio_to_sign_verify']:.3f}")
    if "e2e" in r:
        e = r["e2e"]
        row(
            f"end-to-end quote->pay->receipt /s, {e['payers']} payers in {e['payer_processes']} process(es)",
            f"{e['per_s']:.0f}",
            f">= {TARGETS['e2e_per_s']}",
        )
        row("  latency p50 / p99 (ms)", f"{e['latency']['p50_ms']:.1f} / {e['latency']['p99_ms']:.1f}")
        q, y = e["quote_latency"], e["pay_latency"]
        row("    of which quote, then pay: p50 (ms)", f"{q['p50_ms']:.1f}, {y['p50_ms']:.1f}")
        c = e["cpu_ms_per_payment"]
        row("  CPU ms per payment: payee, payers, ledger", f"{c['payee']:.2f}, {c['payers']:.2f}, {c['ledger']:.2f}")
        for side, threads in e.get("cpu_ms_per_payment_by_thread", {}).items():
            top = ", ".join(f"{name} {ms:.2f}" for name, ms in list(threads.items())[:3])
            print(f"    {side} by thread: {top}")
        m = e["machine_cores"]
        if "busy" in m:
            row(
                f"  cores busy (of {m['cores']}): all, these three, steal",
                f"{m['busy']:.2f} {m['these_three']:.2f} {m['steal']:.2f}",
            )
        row("  settlement", e["settlement"].split(" ")[0])
        due = WalletSection().settle_poll_interval  # the nodes run with the default
        row(f"  seconds measured (copies due {due:g} s after receipts)", f"{e['seconds']:.1f}")
        if "sign_verify_per_s" in e:
            sv, units = e["sign_verify_per_s"], e["cpu_in_sign_verifies"]
            row("raw: coincurve sign + verify /s per core (before, after)", f"{sv[0]:.0f}, {sv[1]:.0f}")
            row(
                "  CPU per payment in sign + verify: payee, payers, ledger",
                f"{units['payee']:.1f}, {units['payers']:.1f}, {units['ledger']:.1f}",
            )
    print(f"fsync (4 KiB) median: {r['fsync_ms']} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a run of about a minute)")
    parser.add_argument("--chains", type=int, default=32, help="payer chains feeding the payee (part 1)")
    parser.add_argument("--rounds", type=int, default=None, help="payments per chain, the first a warm-up (150)")
    parser.add_argument("--ecdsa", type=int, default=None, help="signatures for the raw limit (10000)")
    parser.add_argument("--payers", type=int, default=16, help="payer nodes of the end-to-end run (part 2)")
    parser.add_argument("--payments", type=int, default=None, help="payments per payer, end to end (200)")
    parser.add_argument("--payer-procs", type=int, default=2, help="processes the payer nodes are spread over (part 2)")
    parser.add_argument("--block-interval", type=float, default=2.0, help="seconds between devnet blocks")
    parser.add_argument("--defer-settlement", action="store_true", help="hold ARC submissions back (part 2)")
    parser.add_argument("--skip-payee", action="store_true", help="leave out part 1")
    parser.add_argument(
        "--quote-apart", action="store_true", help="ask every quote with pay.quote (not with the payment before it)"
    )
    parser.add_argument("--skip-e2e", action="store_true", help="leave out part 2")
    parser.add_argument("--profile", default=None, help="write a cProfile dump of part 1's measured rounds here")
    args = parser.parse_args()
    quick = args.quick
    args.rounds = args.rounds or (30 if quick else 150)
    args.ecdsa = args.ecdsa or (2_000 if quick else 10_000)
    args.payments = args.payments or (40 if quick else 200)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first is a warm-up)")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    results = trio.run(run, args)
    results["mode"] = "quick" if quick else "full"
    save(RESULTS, results)
    print_table(results)
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
