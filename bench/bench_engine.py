"""Benchmark of the overlay engine (BRC-22 submit, BRC-24 lookup) over a node's HTTP port, with the fixed workload of
the reference anchor (``/work/shared/anchors/overlay-engine``: the official ``@bsv/overlay`` engine), and, with
``--with-reference``, the anchor's own HTTP server measured in the same run.

Run from the repository root::

    .venv/bin/python bench/bench_engine.py [--quick] [--with-reference] [--rounds 1] [-n 1000] [--lookups 3000]
        [--conc 1,8,32] [--lookup-conc 1,8,32] [--duplicates 200] [--warmup 200] [--profile DIR]

The workload (the anchor's ``lib.mjs``; generated before anything is timed, the same bytes for both servers):

- plug-ins: ``tm_bench`` admits outputs whose locking script is P2PKH to one fixed known key, retains no previous
  coin; ``ls_bench`` answers ``{txid, outputIndex}`` and ``{findAll: true, limit}`` (``bench/engine_plugin.py``,
  loaded by the node as ``overlay.topic_managers = ["tm_bench=bench.engine_plugin:BenchTopicManager"]``; the
  node's process has the repository root on ``sys.path``, which ``spawn`` hands it from this one);
- each submission: a BEEF (about 365 bytes) of a fake "mined" parent (coinbase-style input, the BUMP of
  ``MerklePath.fromCoinbaseTxidAndHeight``: one level, the txid alone) and a child spending it with a real P2PKH
  signature, outputs 6,000 sats to the known key (admitted) and 3,000 to another key. Byte-identical to the
  anchor's generator (checked against ``lib.mjs`` in ``--with-reference`` runs);
- phases, in order: sanity (admitted, duplicate, a tampered transaction refused; not timed); warm-up: ``--warmup``
  fresh submissions (default 200) sent one at a time, reported but with no target, so that the timed phases measure
  both servers and the client in their steady state (the reference's and the client's JIT compile their paths during
  the first requests; our node fills its caches and prepared statements); submit ``-n`` fresh
  transactions at each ``--conc`` level (1 = sequential); spend of admitted: ``-n`` spends of the first level's
  outputs, each a BEEF (about 557 bytes) of parent+BUMP, the earlier unmined child and the spend (2 script checks; the
  previous coin is marked spent and removed), sequential; ``--duplicates`` resubmissions of the first level's
  transactions; lookups by txid at each ``--lookup-conc`` (``--lookups`` each, over the unspent outputs),
  findAll limit 10 (``--lookups``/4), a miss (``--lookups``); then the HTTP floor of each server, a GET that does
  next to nothing (ours ``/health/live``, the reference's ``/stats``) with 1 and 8 clients (``--lookups`` each):
  what its HTTP stack alone costs per request.

Servers, one at a time (the other one is not running), each on 127.0.0.1:

- ours: a whole node in its own process (``bench/nodeproc.py``) with ``overlay.spv = "scripts-only"`` (the anchor's
  chain tracker is ``'scripts only'``: merkle paths are read and must prove their transaction, no block is asked
  for), ``overlay.broadcast = false`` (the anchor has no broadcaster), ``overlay.propagate = false`` (the anchor has
  no advertiser, so no propagation), ``overlay.durable = true`` (the STEAK is answered after a ``synchronous=FULL``
  commit); our engine always checks every unproven transaction's scripts;
- the reference (``--with-reference``): the anchor copied to ``--reference-dir`` (default
  ``/tmp/overlay-engine-anchor``, outside the repository), ``npm install`` there (better-sqlite3 built from source
  if it must be), then its ``server.mjs`` (node:http in front of ``@bsv/overlay`` 0.4.6, SQLite file with default
  pragmas, the STEAK sent from ``onSteakReady`` before its writes, as overlay-express; the client waits for its
  ``/stats`` to show nothing in flight before closing a phase's CPU window).

Load generator: ``bench/engine_client.mjs``, a Node.js client of the anchor's ``http-client.mjs`` pattern (node:http,
one keep-alive agent, at most ``concurrency`` requests in flight), the same for both servers. Per phase: ops/s
(count / wall time of the phase), p50/p95/p99/max latency per request, the server process's CPU (``/proc``, all
threads) per operation and in cores, and the client's own CPU.

``--rounds K`` measures both servers K times (ours first in odd rounds, the reference first in even ones) and the
table shows the median with (min-max). ``--quick``: ``-n 300 --lookups 1000 --duplicates 100`` (about 1 minute with
the reference once it is installed). ``--profile DIR``: ours only (one ``--conc`` level is enough: then there is no
lookup by txid, every output of the first level being spent), the submit phases and then the lookup phases
each under ``py-spy record`` of the node's process (``.venv/bin/py-spy``, 100 Hz, every thread): collapsed stacks in
``DIR/ours_submit.txt`` and ``DIR/ours_lookup.txt``, and the busy samples per part of a request's path printed for
the trio loop's thread and for the worker threads (SQLite) apart; the figures of a profiled run are slowed by the
sampling, and are saved apart (``bench_engine_profile.json``). Prints a table against the targets of the issue and
saves ``bench/results/bench_engine.json``; exits non-zero only when something is wrong (a refused valid
submission, a missing or wrong lookup answer, a tampered transaction accepted, a server that fails), never on time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so that the node's process (spawned with this sys.path) imports bench.engine_plugin

# the constants only; the node's process loads the plugin itself, as bench.engine_plugin
from engine_plugin import (  # noqa: E402  # bench/ is on sys.path
    KNOWN_LOCKING,
    KNOWN_PUBLIC,
    KNOWN_SECRET,
    OTHER_LOCKING,
    SERVICE_ENTRY,
    TOPIC,
    TOPIC_ENTRY,
)
from nodeproc import Host, NodeSpec, open_host, system_cpu_seconds  # noqa: E402  # bench/ is on sys.path
from results_io import save  # noqa: E402  # bench/ is on sys.path

from overlay_node.chain.formats import BeefEntry, encode_beef  # noqa: E402
from overlay_node.crypto.bump import varint_bytes  # noqa: E402
from overlay_node.crypto.sighash import P2pkhSpend, outpoint_bytes, sign_p2pkh, txid_of_raw  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bench_engine.json"
CLIENT = ROOT / "bench" / "engine_client.mjs"
ANCHOR = Path("/work/shared/anchors/overlay-engine")
ANCHOR_FILES = ("package.json", "package-lock.json", "lib.mjs", "server.mjs")
#: on top of nodeproc.LOOPBACK
NODE_CONFIG: dict[str, Any] = {
    "overlay.topic_managers": [TOPIC_ENTRY],
    "overlay.lookup_services": [SERVICE_ENTRY],
    "overlay.spv": "scripts-only",
    "overlay.broadcast": False,
    "overlay.propagate": False,
    "overlay.durable": True,
    "node.shutdown_grace": 1.0,
}
TARGET_SUBMIT_RATIO = 5.0
TARGET_LOOKUP_RATIO = 1.0


# -- the workload (the anchor's lib.mjs, byte for byte) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Made:
    """One generated submission: the subject's txid and raw bytes, its BEEF, and its fake-mined parent's."""

    txid: str
    raw: bytes
    beef: bytes
    parent: BeefEntry


def make_submission(i: int, salt: int) -> Made:
    """``lib.mjs`` ``makeSubmission(i, salt)``: a coinbase-style parent (output 10,000 + i sats to the known key,
    BUMP of ``MerklePath.fromCoinbaseTxidAndHeight(txid, 800000 + i)``) and a child spending it to 6,000 sats to the
    known key and 3,000 to the other key, as BEEF V1."""
    tag = format((salt << 20) + i, "x").rjust(6, "0")[-6:]
    unlock = bytes.fromhex("03" + tag)
    satoshis = 10_000 + i
    parent_raw = b"".join(
        (
            (1).to_bytes(4, "little"),
            b"\x01",
            bytes(32),
            b"\xff\xff\xff\xff",
            varint_bytes(len(unlock)),
            unlock,
            b"\xff\xff\xff\xff",
            b"\x01",
            satoshis.to_bytes(8, "little"),
            varint_bytes(len(KNOWN_LOCKING)),
            KNOWN_LOCKING,
            bytes(4),
        )
    )
    parent_txid = txid_of_raw(parent_raw)
    # BRC-74, one level holding the transaction alone at offset 0 (flag 2: the txid)
    bump = varint_bytes(800_000 + i) + b"\x01\x01\x00\x02" + bytes.fromhex(parent_txid)[::-1]
    parent = BeefEntry(parent_txid, parent_raw, bump)
    spend = P2pkhSpend(outpoint_bytes(parent_txid, 0), KNOWN_LOCKING, satoshis, KNOWN_SECRET, KNOWN_PUBLIC)
    raw = sign_p2pkh([spend], [(KNOWN_LOCKING, 6_000), (OTHER_LOCKING, 3_000)])
    txid = txid_of_raw(raw)
    return Made(txid, raw, encode_beef([parent, BeefEntry(txid, raw)], version=1), parent)


def make_spend_of(made: Made) -> Made:
    """``lib.mjs`` ``makeSpendOf(beef)``: a spend of the child's output 0 to 5,000 sats to the known key; BEEF of
    the parent with its BUMP, the child (unmined) and the spend."""
    spend = P2pkhSpend(outpoint_bytes(made.txid, 0), KNOWN_LOCKING, 6_000, KNOWN_SECRET, KNOWN_PUBLIC)
    raw = sign_p2pkh([spend], [(KNOWN_LOCKING, 5_000)])
    txid = txid_of_raw(raw)
    beef = encode_beef([made.parent, BeefEntry(made.txid, made.raw), BeefEntry(txid, raw)], version=1)
    return Made(txid, raw, beef, made.parent)


def tampered(made: Made) -> bytes:
    """``made``'s BEEF with the child's output 0 paying 6,001 sats: its signature no longer holds (as bench.mjs)."""
    was = (6_000).to_bytes(8, "little") + b"\x19\x76\xa9\x14"
    if made.beef.count(was) != 1:
        raise RuntimeError("cannot locate output 0 of the child")
    return made.beef.replace(was, (6_001).to_bytes(8, "little") + b"\x19\x76\xa9\x14")


#: salts of the generated sets: the submit levels use 1, 2, 3, ...; the sanity pair SANITY_SALT
SANITY_SALT = 15
#: the warm-up submissions' salt: a transaction's tag keeps the low 4 bits of its salt, so this one must differ from
#: every level's (1, 2, ...) and the sanity's there
WARMUP_SALT = 14


def make_workload(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The client's workload (BEEF as hex) and a summary of it."""
    t = time.perf_counter()
    batches = [[make_submission(i, level + 1) for i in range(args.n)] for level in range(len(args.conc))]
    spends = [make_spend_of(m) for m in batches[0]]
    sanity, bad = make_submission(0, SANITY_SALT), make_submission(1, SANITY_SALT)
    warmup = [make_submission(i, WARMUP_SALT) for i in range(args.warmup)]
    seconds = time.perf_counter() - t

    def item(m: Made) -> dict[str, str]:
        return {"txid": m.txid, "beef": m.beef.hex()}

    work = {
        "sanity": item(sanity),
        "tampered": tampered(bad).hex(),
        "batches": [[item(m) for m in b] for b in batches],
        "spends": [item(m) for m in spends],
        "duplicates": [item(m) for m in batches[0][: args.duplicates]],
        "warmup": [item(m) for m in warmup],
    }
    summary = {
        "transactions": len(batches) * args.n + len(spends) + len(warmup) + 2,
        "generation_s": round(seconds, 2),
        "submission_beef_bytes": len(batches[0][0].beef),
        "spend_beef_bytes": len(spends[0].beef),
        "samples": {"submission_1_0": batches[0][0].beef.hex(), "spend_1_0": spends[0].beef.hex()},
    }
    return work, summary


# -- our node -------------------------------------------------------------------------------------------------------


def describe(node: Any) -> dict[str, Any]:
    return {"http": node.info.http, "pid": os.getpid()}


async def node_ops(host: Host, op: str, _args: list[Any]) -> Any:
    if op == "counts":
        topics, services = await host.nodes[0].overlay.counts()
        return {"topics": topics, "services": services}
    raise ValueError(f"unknown op {op}")


# -- the reference ------------------------------------------------------------------------------------------------


def run_logged(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {cwd} ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def prepare_reference(scratch: Path) -> dict[str, Any]:
    """Copy the anchor's files to ``scratch`` and install its packages there (once); returns the versions."""
    if not ANCHOR.is_dir():
        raise SystemExit(f"the anchor is missing: {ANCHOR}")
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("node and npm are needed for --with-reference")
    scratch.mkdir(parents=True, exist_ok=True)
    changed = False
    for name in ANCHOR_FILES:
        src, dst = ANCHOR / name, scratch / name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            if dst.exists():
                dst.chmod(0o644)
            shutil.copyfile(src, dst)
            dst.chmod(0o644)
            changed = True
    if changed or not (scratch / "node_modules" / "@bsv" / "overlay").is_dir():
        print(f"reference: npm install in {scratch} (once; better-sqlite3 may build from source)", flush=True)
        run_logged(["npm", "install", "--no-audit", "--no-fund"], scratch, 900)
    check = ["node", "-e", "new (require('better-sqlite3'))(':memory:').prepare('select 1').get()"]
    if subprocess.run(check, cwd=scratch, capture_output=True, timeout=60).returncode != 0:
        print("reference: npm rebuild better-sqlite3", flush=True)
        run_logged(["npm", "rebuild", "better-sqlite3"], scratch, 900)
        run_logged(check, scratch, 60)

    def version(package: str) -> str:
        data = json.loads((scratch / "node_modules" / package / "package.json").read_text())
        return str(data["version"])

    node_version = run_logged(["node", "--version"], scratch, 30).stdout.strip()
    return {
        "dir": str(scratch),
        "node": node_version,
        **{p: version(p) for p in ("@bsv/overlay", "@bsv/sdk", "better-sqlite3", "knex")},
    }


def check_generator(scratch: Path, summary: dict[str, Any]) -> str:
    """Our generated BEEF against the anchor's ``makeSubmission(0, 1)`` and ``makeSpendOf`` of it."""
    script = (
        "import('./lib.mjs').then(async m => { const a = await m.makeSubmission(0, 1); const s = await "
        "m.makeSpendOf(a.beef); console.log(JSON.stringify([Buffer.from(a.beef).toString('hex'), "
        "Buffer.from(s.beef).toString('hex')])) })"
    )
    theirs = json.loads(run_logged(["node", "-e", script], scratch, 120).stdout)
    ours = [summary["samples"]["submission_1_0"], summary["samples"]["spend_1_0"]]
    if theirs != ours:
        raise SystemExit(f"our workload differs from the anchor's lib.mjs:\n ours   {ours}\n theirs {theirs}")
    return "byte-identical to lib.mjs makeSubmission(0, 1) and makeSpendOf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def stop_process(proc: trio.Process, sig: int) -> None:
    """Send ``sig`` to ``proc`` (one we started) and wait for it to end; killed after 30 s."""
    if proc.returncode is None:
        proc.send_signal(sig)
    with trio.move_on_after(30):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def wait_http(url: str, proc: trio.Process | None = None) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(300):
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"the server exited early ({proc.returncode})")
            with contextlib.suppress(httpx.HTTPError):
                await client.get(url)
                return
            await trio.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


# -- running the client -------------------------------------------------------------------------------------------


async def drive(
    args: argparse.Namespace,
    tmp: Path,
    port: int,
    pid: int,
    *,
    drain: bool,
    check_removed: bool,
    floor: str,
    parts: tuple[str, ...] = ("submit", "lookup"),
) -> dict[str, Any]:
    """Run the client against ``127.0.0.1:port`` (server process ``pid``); its JSON result."""
    config = {
        "port": port,
        "pid": pid,
        "clkTck": os.sysconf("SC_CLK_TCK"),
        "drain": drain,
        "checkRemoved": check_removed,
        "floorPath": floor,
        "workload": str(tmp / "workload.json"),
        "conc": args.conc,
        "lookups": args.lookups,
        "lookupConc": args.lookup_conc,
        "parts": list(parts),
    }
    path = tmp / f"client-{port}.json"
    path.write_text(json.dumps(config))
    done = await trio.run_process(
        ["node", str(CLIENT), str(path)], capture_stdout=True, capture_stderr=not args.verbose, check=False
    )
    if done.returncode != 0:
        tail = (done.stderr or b"").decode(errors="replace")[-2000:]
        raise SystemExit(f"the load client failed against port {port} ({done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def machine_window(before: dict[str, float], wall: float) -> dict[str, float]:
    after = system_cpu_seconds()
    return {k: round((v - before[k]) / wall, 2) for k, v in after.items()} if before else {}


async def measure_ours(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    root = tmp / f"nodes-{time.monotonic_ns()}"
    root.mkdir()
    async with trio.open_nursery() as nursery:
        host = await open_host(
            nursery,
            [NodeSpec(str(root), "engine", dict(NODE_CONFIG))],
            node_ops,
            describe,
            in_process=False,
            log_level=logging.WARNING,
        )
        try:
            url = str(host.info["http"])
            port = int(url.rsplit(":", 1)[1].rstrip("/"))
            pid = int(host.info["pid"])
            before, wall = system_cpu_seconds(), time.perf_counter()
            if args.profile:
                result = await profiled(args, tmp, port, pid)
            else:
                result = await drive(args, tmp, port, pid, drain=False, check_removed=True, floor="/health/live")
            result["machine_cores"] = machine_window(before, time.perf_counter() - wall)
            result["store"] = await host.call("counts")
        finally:
            await host.stop()
    shutil.rmtree(root, ignore_errors=True)
    return result


async def measure_reference(args: argparse.Namespace, tmp: Path, scratch: Path) -> dict[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "DB": "file",
        "PRAGMAS": "default",
        "STEAK_EARLY": "1",
        "MAX_LIFETIME_S": "1800",
    }
    log = (tmp / f"reference-{port}.log").open("wb")
    proc = await trio.lowlevel.open_process(["node", "server.mjs"], cwd=scratch, env=env, stdout=log, stderr=log)
    try:
        await wait_http(f"http://127.0.0.1:{port}/stats", proc)
        before, wall = system_cpu_seconds(), time.perf_counter()
        # its early STEAK (sent from onSteakReady) has no coinsRemoved: the client checks the removal by lookups
        result = await drive(args, tmp, port, proc.pid, drain=True, check_removed=False, floor="/stats")
        result["machine_cores"] = machine_window(before, time.perf_counter() - wall)
        async with httpx.AsyncClient() as client:
            result["server_stats"] = (await client.get(f"http://127.0.0.1:{port}/stats")).json()
    finally:
        await stop_process(proc, signal.SIGTERM)  # server.mjs closes its database and deletes its files
        log.close()
    return result


# -- profiling (py-spy) -------------------------------------------------------------------------------------------


async def profiled(args: argparse.Namespace, tmp: Path, port: int, pid: int) -> dict[str, Any]:
    """The submit phases, then the lookup phases, each under its own py-spy recording of our node's process."""
    result: dict[str, Any] = {"sanity": {}, "phases": {}}
    for part in ("submit", "lookup"):
        spy = await start_profiler(Path(args.profile) / f"ours_{part}.txt", pid)
        try:
            one = await drive(
                args, tmp, port, pid, drain=False, check_removed=True, floor="/health/live", parts=(part,)
            )
        finally:
            await stop_process(spy, signal.SIGINT)  # py-spy writes its file on SIGINT
        result["sanity"].update(one["sanity"])
        result["phases"].update(one["phases"])
    return result


async def start_profiler(out: Path, pid: int) -> trio.Process:
    """``py-spy record`` of process ``pid`` (every thread, not idle ones) into ``out``, collapsed stacks."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    rate = str(PROFILE_HZ)
    command = [spy, "record", "--pid", str(pid), "--rate", rate, "--format", "raw", "--threads", "-o", str(out)]
    proc = await trio.lowlevel.open_process(command, stdout=subprocess.DEVNULL)
    await trio.sleep(1.0)  # let it attach before the load starts
    if proc.poll() is not None:
        raise SystemExit(f"py-spy failed to attach to {pid} ({proc.returncode})")
    return proc


PROFILE_HZ = 100
#: a sample whose innermost frame is one of these is a thread waiting (py-spy's idle detection does not work in
#: every VM): the trio loop in epoll, a cached worker thread waiting for a job, the nodeproc pipe
IDLE_LEAF = r"EpollIOManager\.get_events|WorkerThread\._work \(|connection\.py|Condition\.wait|_wait_for_tstate_lock"
#: parts of a request's path, matched against a busy sample's frames from the innermost out (the first frame that
#: matches a pattern names the part; the patterns are tried in this order for each frame). trio's own frames (and
#: contextlib's, threading's) are looked through: the part is the code that called into trio; what the run loop
#: does for no caller of ours (scheduling, epoll registrations, wakeups) is the last part.
PARTS: tuple[tuple[str, str], ...] = (
    ("script check (validation, sighash, coincurve)", r"chain/validation\.py|crypto/(keys|sighash)\.py|coincurve"),
    ("BEEF parse (chain/formats, crypto/bump)", r"chain/formats\.py|crypto/bump\.py"),
    ("SQLite write statements (store/overlay _apply_one)", r"_apply_one|_delete_deep"),
    ("SQLite transaction + commit/fsync (_write_in_thread)", r"_write_in_thread"),
    ("SQLite calls on the loop (limiter, to_thread hand-off)", r"Database\.(read|write) \("),
    ("SQLite reads (previous coins, index, outputs, BEEFs)", r"store/(overlay|engine|rows)\.py"),
    ("engine (plan, write set, plug-in, hydrate, group commit)", r"overlay_engine|engine_plugin|topics/|group_commit"),
    ("JSON encode/decode (json module)", r"[(/]json/"),
    ("HTTP route (api/overlay)", r"api/overlay\.py"),
    ("HTTP server (net/http_server, wire/http1, starlette)", r"http_server\.py|wire/http1\.py|starlette|anyio"),
    ("metrics (prometheus_client)", r"prometheus_client|overlay_node/metrics\.py"),
)
SOCKETS = "socket send/recv syscalls (trio sockets, for the HTTP server)"
LOOP = "trio: run loop, scheduling, epoll registration, thread hand-off"
_TRANSPARENT = r"trio/|outcome/|contextlib\.py|<attrs generated|threading\.py"


def classify(frames: list[str]) -> str:
    """The part of :data:`PARTS` a busy sample (frames outermost first, the thread's name first) belongs to."""
    if re.search(r"trio/_socket\.py|trio/_highlevel_socket\.py", frames[-1]):
        return SOCKETS
    through_trio = False
    for frame in reversed(frames[1:]):
        if re.search(_TRANSPARENT, frame):
            through_trio = True
            continue
        found = next((name for name, pattern in PARTS if re.search(pattern, frame)), None)
        if found is not None:
            return found
    return LOOP if through_trio else "other"


def profile_breakdown(path: Path, operations: int) -> dict[str, Any]:
    """Busy samples per part of a request's path (see :data:`PARTS`), from py-spy's collapsed stacks with threads:
    the trio loop's thread (the one a request's Python code runs on) and the worker threads (SQLite) apart."""
    parts: dict[str, Counter[str]] = {"main": Counter(), "workers": Counter()}
    idle: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        where = "main" if "MainThread" in frames[0] else "workers"
        if re.search(IDLE_LEAF, frames[-1]):
            idle[where] += n
            continue
        parts[where][classify(frames)] += n

    def ms(samples: int) -> float:
        return round(samples / PROFILE_HZ / max(1, operations) * 1000, 3)

    return {
        "rate_hz": PROFILE_HZ,
        "operations": operations,
        "idle_samples": dict(idle),
        "busy_ms_per_op": {where: ms(sum(c.values())) for where, c in parts.items()},
        "parts": {
            where: {k: {"samples": v, "ms_per_op": ms(v)} for k, v in c.most_common()} for where, c in parts.items()
        },
    }


# -- the whole run --------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"rounds": []}
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmpdir:
        tmp = Path(tmpdir)
        work, summary = make_workload(args)
        (tmp / "workload.json").write_text(json.dumps(work))
        del work
        print(f"generated {summary['transactions']} transactions in {summary['generation_s']} s (not timed)")
        results["workload"] = {k: v for k, v in summary.items() if k != "samples"}
        scratch = Path(args.reference_dir)
        if args.with_reference:
            results["reference"] = await trio.to_thread.run_sync(prepare_reference, scratch)
            results["workload"]["generator"] = await trio.to_thread.run_sync(check_generator, scratch, summary)
            print(f"workload: {results['workload']['generator']}")
        for r in range(args.rounds):
            one: dict[str, Any] = {}
            order = ["ours", "reference"] if r % 2 == 0 else ["reference", "ours"]
            for who in order:
                if who == "ours":
                    print(f"round {r + 1}: our node", flush=True)
                    one["ours"] = await measure_ours(args, tmp)
                elif args.with_reference:
                    print(f"round {r + 1}: reference", flush=True)
                    one["reference"] = await measure_reference(args, tmp, scratch)
            results["rounds"].append(one)
        if args.profile:
            # the lookup phases and the two HTTP floor phases
            lookups = args.lookups * (len(args.lookup_conc) + 3) + max(1, args.lookups // 4)
            results["profile"] = {
                "submit": profile_breakdown(
                    Path(args.profile) / "ours_submit.txt", len(args.conc) * args.n + args.n + args.duplicates
                ),
                "lookup": profile_breakdown(Path(args.profile) / "ours_lookup.txt", lookups),
            }
    return results


# -- checks, table --------------------------------------------------------------------------------------------------


def problems(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for i, one in enumerate(results["rounds"]):
        for who, res in one.items():
            for p in res["sanity"].get("problems", []):
                out.append(f"round {i + 1}, {who}: {p}")
            for name, ph in res["phases"].items():
                if ph["errors"]:
                    out.append(f"round {i + 1}, {who}, {name}: {ph['errors']} errors, first: {ph['firstError']}")
            if who == "ours":
                # every admitted output is stored and indexed: the sanity one and every level's (each spend replaced
                # one output of the first level by its own), and the warm-up's
                want = 1 + len(args.conc) * args.n + args.warmup
                store = res["store"]
                if list(store["topics"].get(TOPIC, ())) != [want, want] or store["services"].get("ls_bench") != want:
                    out.append(f"round {i + 1}, ours: stored {store}, expected {want} unspent outputs, all indexed")
    return out


def stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per phase and server: the median (min, max) over rounds of ops/s, p50, p99, server CPU; and the ratios."""
    out: dict[str, Any] = {}
    rounds = results["rounds"]
    for name in rounds[0]["ours"]["phases"]:
        row: dict[str, Any] = {}
        for who in ("ours", "reference"):
            runs = [one[who]["phases"][name] for one in rounds if who in one]
            if runs:
                row[who] = {
                    key: stat([float(p[key]) for p in runs])
                    for key in ("perSec", "p50ms", "p99ms", "serverCpuMsPerOp", "serverCores", "clientCores")
                }
        if "reference" in row:
            ratios = [
                one["ours"]["phases"][name]["perSec"] / one["reference"]["phases"][name]["perSec"]
                for one in rounds
                if "reference" in one
            ]
            row["ratio"] = stat(ratios)
        out[name] = row
    return out


LABELS = {
    "warmupConc1": "warm-up submit, sequential (no target)",
    "submitConc": "submit, concurrency {}",
    "spendOfAdmittedConc1": "spend of admitted (2 scripts), sequential",
    "duplicateConc1": "duplicate submit, sequential",
    "lookupTxidConc": "lookup by txid, {} clients",
    "lookupFindAll10Conc1": "lookup findAll limit 10, 1 client",
    "lookupMissConc1": "lookup miss, 1 client",
    "httpFloorConc": "HTTP floor (a GET doing nothing), {} clients",
}


def label(name: str) -> str:
    for prefix, text in LABELS.items():
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            return (text.format(rest) if "{}" in text else text).replace("1 clients", "1 client")
    return name


def target(name: str) -> float | None:
    if name.startswith("submitConc"):
        return TARGET_SUBMIT_RATIO
    if name.startswith("lookupTxidConc"):
        return TARGET_LOOKUP_RATIO
    return None


def print_table(results: dict[str, Any], summary: dict[str, Any]) -> None:
    multi = len(results["rounds"]) > 1

    def fmt(s: dict[str, float] | None, spec: str = "{:.0f}") -> str:
        if s is None:
            return "-"
        text = spec.format(s["median"])
        return f"{text} ({spec.format(s['min'])}-{spec.format(s['max'])})" if multi else text

    width = 24 if multi else 9
    head = f"{'phase':<42} {'ours/s':>{width}} {'reference/s':>{width}} {'ours/ref':>{width}} {'target':>8}"
    print(head)
    for name, row in summary.items():
        ours, ref, ratio = row.get("ours"), row.get("reference"), row.get("ratio")
        goal = target(name)
        goal_text = ""
        if goal is not None:
            goal_text = f">= {goal:g}x"
            if ratio is not None:
                goal_text += " ok" if ratio["median"] >= goal else " NO"
        print(
            f"{label(name):<42} {fmt(ours and ours['perSec']):>{width}} {fmt(ref and ref['perSec']):>{width}} "
            f"{fmt(ratio, '{:.2f}'):>{width}} {goal_text:>8}"
        )
    print()
    print(
        f"{'phase (latency ms; server CPU ms/op, cores)':<42} {'ours p50':>9} {'ours p99':>9} {'ref p50':>9} "
        f"{'ref p99':>9} {'ours CPU':>14} {'ref CPU':>14}"
    )
    for name, row in summary.items():
        ours, ref = row.get("ours"), row.get("reference")

        def med(side: dict[str, Any] | None, key: str, spec: str = "{:.2f}") -> str:
            return "-" if side is None else spec.format(side[key]["median"])

        def cpu(side: dict[str, Any] | None) -> str:
            if side is None:
                return "-"
            return f"{side['serverCpuMsPerOp']['median']:.2f} ({side['serverCores']['median']:.2f})"

        print(
            f"{label(name):<42} {med(ours, 'p50ms'):>9} {med(ours, 'p99ms'):>9} {med(ref, 'p50ms'):>9} "
            f"{med(ref, 'p99ms'):>9} {cpu(ours):>14} {cpu(ref):>14}"
        )
    print()
    print(
        "ours: a whole node in its own process, overlay.spv = scripts-only (the anchor's chain tracker is 'scripts "
        "only'), overlay.broadcast = false (the anchor has no broadcaster), overlay.propagate = false (nor an "
        "advertiser), overlay.durable = true (STEAK after a synchronous=FULL commit), every script checked."
    )
    if "reference" in results:
        ref = results["reference"]
        print(
            f"reference: @bsv/overlay {ref['@bsv/overlay']} (@bsv/sdk {ref['@bsv/sdk']}, better-sqlite3 "
            f"{ref['better-sqlite3']}, node {ref['node']}) server.mjs, SQLite file with default pragmas, chain tracker "
            "'scripts only', no broadcaster; STEAK sent from onSteakReady before its writes (its CPU window waits "
            "for them)."
        )
    print(
        "client: bench/engine_client.mjs, Node.js node:http with one keep-alive agent and bounded concurrency "
        "(the anchor's http-client.mjs pattern), the same for both servers; the same transactions for both."
    )
    ours_client = max(
        (p["clientCores"] for one in results["rounds"] for p in one["ours"]["phases"].values()), default=0.0
    )
    print(f"client CPU: at most {ours_client:.2f} cores in any phase against ours")
    machines = [one[w]["machine_cores"] for one in results["rounds"] for w in one if one[w].get("machine_cores")]
    if machines:
        busy = [m["busy"] for m in machines]
        steal = [m.get("steal", 0.0) for m in machines]
        print(
            f"machine: {os.cpu_count()} cores; busy during the servers' runs {min(busy):.2f}-{max(busy):.2f} cores, "
            f"steal {min(steal):.2f}-{max(steal):.2f}"
        )
    for what, prof in results.get("profile", {}).items():
        busy = prof["busy_ms_per_op"]
        print()
        print(
            f"py-spy, our node under the {what} phases ({prof['operations']} requests, {prof['rate_hz']} Hz, busy "
            f"samples only): sampled ms per request: trio loop thread {busy['main']:.3f}, worker threads "
            f"{busy['workers']:.3f}"
        )
        for where, label_text in (("main", "trio loop thread"), ("workers", "worker threads")):
            total = max(1, sum(v["samples"] for v in prof["parts"][where].values()))
            for part, v in prof["parts"][where].items():
                print(
                    f"  {label_text:<17} {part:<58} {v['samples'] / total * 100:5.1f} %  {v['ms_per_op']:6.3f} ms "
                    f"({v['samples']} samples)"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="-n 300 --lookups 1000 --duplicates 100")
    parser.add_argument("--with-reference", action="store_true", help="run the anchor's server too, in this run")
    parser.add_argument("--rounds", type=int, default=1, help="measure each server this many times")
    parser.add_argument("-n", type=int, default=None, help="submissions per submit level (default 1000)")
    parser.add_argument("--lookups", type=int, default=None, help="lookups per lookup phase (default 3000)")
    parser.add_argument("--duplicates", type=int, default=None, help="duplicate submissions (default 200)")
    parser.add_argument(
        "--warmup", type=int, default=200, help="fresh submissions sent, at one client, before the timed phases"
    )
    parser.add_argument("--conc", default="1,8,32", help="submit concurrency levels (the first is also the spends')")
    parser.add_argument("--lookup-conc", default="1,8,32", help="lookup-by-txid client counts")
    parser.add_argument("--reference-dir", default="/tmp/overlay-engine-anchor", help="scratch copy of the anchor")
    parser.add_argument("--profile", default=None, help="ours only, submit phases under py-spy; output here")
    parser.add_argument("--verbose", action="store_true", help="show the client's progress lines")
    args = parser.parse_args()
    quick = args.quick
    args.n = args.n or (300 if quick else 1000)
    args.lookups = args.lookups or (1000 if quick else 3000)
    args.duplicates = min(args.n, args.duplicates if args.duplicates is not None else (100 if quick else 200))
    args.conc = [int(c) for c in args.conc.split(",")]
    args.lookup_conc = [int(c) for c in args.lookup_conc.split(",")]
    if len(args.conc) < 2 and not args.profile:
        parser.error("--conc needs at least two levels (the lookups by txid read the levels after the first)")
    if len(args.conc) < 2:
        args.lookup_conc = []  # a profile of one submit level: no unspent output to look up by txid
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        args.with_reference = False
    logging.basicConfig(level=logging.WARNING)
    results = trio.run(run, args)
    results["mode"] = "quick" if quick else "full"
    results["config"] = {
        "n": args.n,
        "conc": args.conc,
        "lookups": args.lookups,
        "lookup_conc": args.lookup_conc,
        "duplicates": args.duplicates,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "profiled": bool(args.profile),
        "node": NODE_CONFIG,
        "client": "bench/engine_client.mjs (Node.js node:http, keep-alive agent, bounded concurrency)",
    }
    results["targets"] = {
        "submit_ratio": TARGET_SUBMIT_RATIO,
        "lookup_ratio": TARGET_LOOKUP_RATIO,
        "note": "submit >= 5x the reference in the same run (about 1,000 tx/s; reference ~198 tx/s over HTTP "
        "here); lookups/s >= the reference's (~2,400 with 1 client, ~5,700 with 8-32); p99 reported",
    }
    results["summary"] = summarize(results)
    wrong = problems(results, args)
    results["problems"] = wrong
    path = RESULTS.with_name("bench_engine_profile.json") if args.profile else RESULTS
    save(path, results)
    print_table(results, results["summary"])
    if wrong:
        print("\nSOMETHING IS WRONG:")
        for p in wrong:
            print(f"  {p}")
        sys.exit(1)


if __name__ == "__main__":
    main()
