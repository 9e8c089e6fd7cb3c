"""The three end-to-end scenarios of the project, through the CLI, on one ``scripts/cluster.py`` cluster:

1. :func:`live_streaming`: a producer streams a live feed at a steady rate (``ctl stream push --follow``) to three
   consumers paying every 1, 10 and 100 packets, who found the stream with ``ctl discover --service-type
   streaming``;
2. :func:`premium_content`: a priced dataset published with R = 3 and tags, found with ``ctl search``, paid for and
   downloaded verified (``ctl access``); a consumer that does not pay gets nothing;
3. :func:`marketplace`: three producers advertise the same capability at different prices and regions; a consumer
   picks by price with ``ctl discover`` filters, subscribes to two streams and buys a file from the third.

Every scenario drives the nodes with ``overlay-node --data-dir <node> ctl ...`` only, as a user would, and records
each check it makes (what a command answered against what it must be) in an :class:`Outcome`. Payments reconcile
across the consumer's ``ctl report``, the producer's ``ctl analytics`` and both wallets (``ctl wallet balance``).
``tests/cluster/test_scenarios.py`` asserts that no check failed; ``scripts/demo.py`` prints a summary table.

The scenarios run one after another on the same :data:`NODES` nodes (roles: nodes 0-2 produce, 3-5 consume), so each
reads the reports from the moment it started (``--time-range <epoch>..``) and the wallets as differences.

Waits are on events: a command's exit, a subscriber's packets read from its output as they arrive. The only clock is
the live feed's own rate (a producer emitting packets at a steady pace is what the scenario is about).
"""

from __future__ import annotations

import json
import random
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cluster import Cluster, _cli

#: nodes in the cluster the three scenarios share: 0-2 produce, 3-5 consume
NODES = 6
PRODUCERS = (0, 1, 2)
CONSUMERS = (3, 4, 5)
#: longest wait for one event (a command, a subscriber's packets)
WAIT = 90.0
#: what a consumer's wallet gets from the devnet faucet before it buys
FUNDS = 50_000


class ScenarioError(Exception):
    """A step of a scenario could not run (a command failed, an answer lacked what the next step needs)."""


@dataclass(frozen=True, slots=True)
class Check:
    """One comparison a scenario made: ``what`` must be ``expected``, the commands said ``got``."""

    what: str
    expected: object
    got: object

    @property
    def ok(self) -> bool:
        return self.expected == self.got

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'FAILED'}: {self.what}: expected {self.expected!r}, got {self.got!r}"


@dataclass(slots=True)
class Outcome:
    """What a scenario did: CLI steps, payments and satoshis paid, its checks, how long it took."""

    name: str
    steps: int = 0
    payments: int = 0
    satoshis: int = 0
    seconds: float = 0.0
    checks: list[Check] = field(default_factory=list)
    error: str = ""

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def reconciled(self) -> bool:
        return not self.error and bool(self.checks) and not self.failures


class Run:
    """One scenario's commands on a cluster: counts the steps and keeps the checks in ``outcome``."""

    def __init__(self, cluster: Cluster, name: str, work: Path) -> None:
        self.cluster = cluster
        self.work = work
        self.outcome = Outcome(name)
        work.mkdir(parents=True, exist_ok=True)
        #: wall-clock start: the reports of this scenario are read from here on
        self.since = time.time()
        self._started = time.monotonic()

    def key(self, i: int) -> str:
        return self.cluster.members[i].identity_key

    def ctl(self, i: int, *args: str) -> subprocess.CompletedProcess[str]:
        """``overlay-node --data-dir <node i> ctl ARGS`` (exit code not checked)."""
        self.outcome.steps += 1
        return self.cluster.ctl(i, "ctl", *args, check=False)

    def json(self, i: int, *args: str) -> Any:
        """``overlay-node --data-dir <node i> ctl ARGS --json``, decoded; a failure raises ScenarioError."""
        done = self.ctl(i, *args, "--json")
        if done.returncode != 0:
            raise ScenarioError(f"node{i}: ctl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def spawn(self, i: int, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
        """Start ``overlay-node --data-dir <node i> ctl ARGS --json`` in the background."""
        self.outcome.steps += 1
        return subprocess.Popen(
            [*_cli(), "--data-dir", self.cluster.members[i].data_dir, "ctl", *args, "--json"],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def check(self, what: str, expected: object, got: object) -> None:
        self.outcome.checks.append(Check(what, expected, got))

    def balance(self, i: int) -> int:
        return int(self.json(i, "wallet", "balance")["satoshis"])

    def report(self, i: int) -> dict[str, Any]:
        """Node i's consumer report since the scenario started."""
        report: dict[str, Any] = self.json(i, "report", "--time-range", f"{self.since:.6f}..")
        return report

    def analytics(self, i: int) -> dict[str, Any]:
        """Node i's revenue since the scenario started."""
        revenue: dict[str, Any] = self.json(
            i, "analytics", "--report-type", "revenue", "--time-range", f"{self.since:.6f}.."
        )
        return revenue

    def finish(self) -> Outcome:
        self.outcome.seconds = time.monotonic() - self._started
        return self.outcome


def run_scenario(scenario: Callable[[Cluster, Path], Outcome], cluster: Cluster, work: Path, name: str) -> Outcome:
    """Run one scenario; an error that stopped it is kept in its outcome (``reconciled`` is then false)."""
    started = time.monotonic()
    try:
        return scenario(cluster, work)
    except (ScenarioError, subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
        return Outcome(name, seconds=time.monotonic() - started, error=f"{type(exc).__name__}: {exc}")


# -- subscribers ----------------------------------------------------------------------------------------------------


class Subscriber:
    """A running ``ctl subscribe --json``: a thread reads its output, packets as they arrive, then its summary."""

    def __init__(self, proc: subprocess.Popen[str], name: str) -> None:
        self.proc = proc
        self.name = name
        self.packets: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None
        self._changed = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, name=f"read {name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        rest: list[str] = []  # the summary: one JSON document (indented) after the packet lines
        for line in self.proc.stdout:
            if not rest and line.startswith('{"seq"'):
                with self._changed:
                    self.packets.append(json.loads(line))
                    self._changed.notify_all()
            else:
                rest.append(line)
        with self._changed:
            self.summary = json.loads("".join(rest)) if rest else None
            self._ended = True
            self._changed.notify_all()

    def wait_packets(self, count: int) -> None:
        """Return once ``count`` packets have arrived (the subscription keeps running)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.packets) >= count or self._ended, timeout=WAIT):
                raise ScenarioError(f"{self.name}: {len(self.packets)} of {count} packets after {WAIT:.0f}s")
        if len(self.packets) < count:
            said = self._stderr() or f"exit {self.proc.returncode}, {self.summary}"
            raise ScenarioError(f"{self.name} ended after {len(self.packets)} of {count} packets: {said}")

    def end(self) -> dict[str, Any]:
        """Wait for the command to exit (the producer closed the stream); its summary."""
        try:
            code = self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise ScenarioError(f"{self.name} did not end within {WAIT:.0f}s of the stream's close") from None
        self._thread.join(timeout=WAIT)
        if code != 0 or self.summary is None:
            raise ScenarioError(f"{self.name} exited {code}: {self._stderr()}")
        return self.summary

    def _stderr(self) -> str:
        """What the command said on stderr once it exited (its output has ended: it is exiting)."""
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            return "(still running)"
        return self.proc.stderr.read().strip() if self.proc.stderr is not None else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)


def span(seqs: Iterable[int]) -> str | list[int]:
    """``"first..last (n)"`` for consecutive sequence numbers, else the numbers themselves (what went wrong)."""
    got = list(seqs)
    if got and got == list(range(got[0], got[0] + len(got))):
        return f"{got[0]}..{got[-1]} ({len(got)})"
    return got


def subscribe(run: Run, consumer: int, stream_id: str, producer: str, *, window: int, max_price: int) -> Subscriber:
    args = ["subscribe", stream_id, "--producer", producer, "--auto-pay-interval", str(window)]
    proc = run.spawn(consumer, *args, "--max-price", str(max_price))
    return Subscriber(proc, f"node{consumer}'s subscription to {stream_id} (W = {window})")


def feed(proc: subprocess.Popen[str], lines: Sequence[str], per_second: float) -> None:
    """Write ``lines`` to a live push's input at a steady rate (the producer's own pace), one flush per line."""
    stdin: IO[str] | None = proc.stdin
    assert stdin is not None
    start = time.monotonic()
    for n, line in enumerate(lines):
        pause = start + n / per_second - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # the feed's rate, not a wait for a condition
        stdin.write(line + "\n")
        stdin.flush()


def reconcile_stream(
    run: Run, consumer: int, producer: int, stream_id: str, summary: dict[str, Any], got: list[dict[str, Any]]
) -> dict[str, Any]:
    """Check a consumer's report against what its subscription received and paid; returns the report."""
    who = f"node{consumer} {stream_id}"
    report = run.report(consumer)
    provider = {p["identity_key"]: p for p in report["providers"]}.get(run.key(producer), {})
    row = {(s["stream_id"], s["provider"]): s for s in report["streams"]}.get((stream_id, run.key(producer)), {})
    run.check(f"{who}: report satoshis to the producer = paid", summary["paid_satoshis"], provider.get("satoshis"))
    run.check(f"{who}: report packets from the producer = received", len(got), provider.get("packets"))
    run.check(f"{who}: report stream satoshis = paid", summary["paid_satoshis"], row.get("satoshis"))
    run.check(f"{who}: report stream packets = received", len(got), row.get("packets"))
    run.check(f"{who}: report stream payments = payments made", summary["payments"], row.get("payments"))
    run.check(f"{who}: report stream fees = fees paid", summary["fees"], row.get("fees"))
    return report


# -- 1. live data streaming with micropayments ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveSettings:
    stream_id: str = "btc-usd-ticks"
    producer: int = 0
    consumers: tuple[int, ...] = CONSUMERS
    #: W of each consumer: a payment every 1, 10 and 100 packets
    windows: tuple[int, ...] = (1, 10, 100)
    #: packets in the feed (a multiple of every W, so that each consumer pays exactly what it received)
    packets: int = 200
    #: satoshis per packet
    rate: int = 2
    #: packets per second of the live feed
    per_second: float = 100.0


def live_streaming(cluster: Cluster, work: Path, s: LiveSettings = LiveSettings()) -> Outcome:
    """A live feed at a steady rate to three consumers paying every W = 1, 10 and 100 packets."""
    run = Run(cluster, "live streaming", work)
    producer_key = run.key(s.producer)
    created = run.json(s.producer, "stream", "create", "--stream-id", s.stream_id, "--pricing-model", "per-packet",
                       "--rate", str(s.rate), "--title", "BTC/USD ticks", "--tags", "ticker,prices")  # fmt: skip
    run.check("stream created", s.stream_id, created["stream_id"])
    for c in s.consumers:
        run.json(c, "wallet", "faucet", str(FUNDS))
        hosts = run.json(c, "discover", "--service-type", "streaming", "--max-price", str(s.rate))["hosts"]
        found = [(h["identity_key"], h["price"]) for h in hosts if h.get("resource") == s.stream_id]
        run.check(f"node{c} discovers the stream (producer, price)", [(producer_key, s.rate)], found)
    before = {i: run.balance(i) for i in (s.producer, *s.consumers)}

    subs = [
        subscribe(run, c, s.stream_id, producer_key, window=w, max_price=s.rate)
        for c, w in zip(s.consumers, s.windows, strict=True)
    ]
    lines = [json.dumps({"n": n, "price": 97_000 + n % 13, "t": 1_780_000_000 + n}) for n in range(s.packets)]
    push = run.spawn(s.producer, "stream", "push", s.stream_id, "--follow", stdin=True)
    try:
        half = s.packets // 2
        feed(push, lines[:half], s.per_second)
        for sub in subs:  # packets go out while the feed is still open: the stream is live
            sub.wait_packets(half)
        run.check("every consumer had the first half while the feed was still open", True, push.poll() is None)
        feed(push, lines[half:], s.per_second)
        out, err = push.communicate(timeout=WAIT)  # closes the input: the end of the feed
        if push.returncode != 0:
            raise ScenarioError(f"stream push --follow exited {push.returncode}: {err.strip()}")
        run.check("packets pushed live", s.packets, json.loads(out)["pushed"])
        for sub in subs:
            sub.wait_packets(s.packets)
        run.json(s.producer, "stream", "close", s.stream_id)
        summaries = [sub.end() for sub in subs]
    finally:
        for proc in (push, *(sub.proc for sub in subs)):
            if proc.poll() is None:
                proc.kill()
    _live_checks(run, s, subs, summaries, lines, before)
    return run.finish()


def _live_checks(
    run: Run,
    s: LiveSettings,
    subs: list[Subscriber],
    summaries: list[dict[str, Any]],
    lines: list[str],
    before: dict[int, int],
) -> None:
    expected_payloads = [json.loads(line) for line in lines]
    paid_total = 0
    for c, w, sub, summary in zip(s.consumers, s.windows, subs, summaries, strict=True):
        who = f"node{c} (W = {w})"
        run.check(f"{who}: sequence numbers received", span(range(s.packets)), span(p["seq"] for p in sub.packets))
        run.check(f"{who}: payloads received = fed", True, [p["payload"] for p in sub.packets] == expected_payloads)
        run.check(f"{who}: subscription ended by the close", "closed", summary["reason"])
        run.check(f"{who}: satoshis paid = packets x rate", s.packets * s.rate, summary["paid_satoshis"])
        run.check(f"{who}: payments = packets / W", s.packets // w, summary["payments"])
        report = reconcile_stream(run, c, s.producer, s.stream_id, summary, sub.packets)
        spent = before[c] - run.balance(c)
        run.check(
            f"{who}: wallet spent = report satoshis + fees", report["total_satoshis"] + report["total_fees"], spent
        )
        paid_total += report["total_satoshis"]
        run.outcome.payments += report["total_payments"]
    _producer_checks(run, s.producer, {run.key(c): s.packets * s.rate for c in s.consumers}, before[s.producer])
    status = run.json(s.producer, "stream", "status", s.stream_id)
    run.check("producer's stream status revenue = analytics total", paid_total, status["revenue_satoshis"])
    run.outcome.satoshis += paid_total


def _producer_checks(run: Run, producer: int, expected: dict[str, int], balance_before: int) -> dict[str, Any]:
    """The producer's analytics since the scenario started against what each consumer paid (``expected``), and its
    wallet; returns the analytics."""
    who = f"producer node{producer}"
    revenue = run.analytics(producer)
    per_consumer = {c["identity_key"]: c["satoshis"] for c in revenue["consumers"]}
    run.check(f"{who}: analytics per consumer = what each paid", expected, per_consumer)
    run.check(
        f"{who}: analytics total = sum of the consumers' reports", sum(expected.values()), revenue["total_satoshis"]
    )
    run.check(
        f"{who}: wallet received = analytics total", revenue["total_satoshis"], revenue["wallet_received_satoshis"]
    )
    run.check(
        f"{who}: wallet balance grew by the analytics total",
        revenue["total_satoshis"],
        run.balance(producer) - balance_before,
    )
    return revenue


# -- 2. premium content -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PremiumSettings:
    producer: int = 1
    #: the nodes that may buy (the first two that hold no replica: one pays, one does not)
    candidates: tuple[int, ...] = (*CONSUMERS, 0, 2)
    price: int = 500
    replication: int = 3
    rows: int = 6000
    tags: str = "climate,premium"


def dataset(path: Path, rows: int) -> bytes:
    """A CSV of hourly station temperatures (deterministic), written to ``path``."""
    rng = random.Random(2026)
    lines = ["station,hour,temp_c,humidity"]
    stations = ("oslo", "bergen", "tromso", "lisbon", "porto", "nairobi")
    for n in range(rows):
        lines.append(
            f"{stations[n % len(stations)]},{n // len(stations)},{rng.uniform(-20, 35):.2f},{rng.randint(20, 99)}"
        )
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(data)
    return data


def premium_content(cluster: Cluster, work: Path, s: PremiumSettings = PremiumSettings()) -> Outcome:
    """A priced dataset, R = 3, found by tag, paid for and downloaded verified; a non-payer gets nothing."""
    run = Run(cluster, "premium content", work)
    source = work / "stations.csv"
    data = dataset(source, s.rows)
    terms = ["--tags", s.tags, "--price", str(s.price), "--replication", str(s.replication)]
    published = run.json(s.producer, "publish", str(source), "--title", "Hourly station temperatures", *terms, "--wait")
    content, url = published["hash"], published["uhrp_url"]
    holders = {r["identity_key"] for r in published["replicas"] if r["state"] == "available"}
    run.check("replicas placed and verified by their holders", s.replication, len(holders))
    others = [i for i in s.candidates if i != s.producer and run.key(i) not in holders]
    if len(others) < 2:
        raise ScenarioError(f"need two nodes without a replica among {s.candidates}, found {others}")
    buyer, freeloader = others[0], others[1]

    results = run.json(buyer, "search", "--tags", s.tags.split(",")[-1])["results"]
    listed = [(r["uhrp_url"], r["price"], r["producer"]) for r in results if r["hash"] == content]
    run.check("search by tag finds the dataset (url, price, producer)", [(url, s.price, run.key(s.producer))], listed)

    # a consumer that does not pay gets nothing: refused before paying, nothing written
    stolen = work / "stolen.csv"
    refused = run.ctl(freeloader, "access", url, "--output", str(stolen), "--max-price", "0")
    run.check("a consumer that will not pay is refused (exit 11, payment)", 11, refused.returncode)
    run.check("... and gets no bytes", [], sorted(p.name for p in work.glob("stolen.csv*")))
    _gateways_refuse(run, content, data, [s.producer, *sorted(i for i in range(NODES) if run.key(i) in holders)])

    run.json(buyer, "wallet", "faucet", str(FUNDS))
    before = {i: run.balance(i) for i in (buyer, s.producer)}
    copy = work / "bought.csv"
    got = run.json(buyer, "access", url, "--output", str(copy), "--max-price", str(s.price))
    run.check("the buyer's download is the dataset (verified)", True, copy.read_bytes() == data)
    run.check("downloaded size", len(data), got["size"])

    report = run.report(buyer)
    row = {c["hash"]: c for c in report["content"]}.get(content, {})
    run.check("buyer's report: the dataset's price", s.price, row.get("satoshis"))
    run.check(
        "buyer's report: one purchase of the producer's",
        (1, run.key(s.producer)),
        (row.get("payments"), row.get("provider")),
    )
    run.check("buyer's report: bytes delivered", len(data), row.get("bytes"))
    run.check(
        "buyer's wallet spent = price + fees",
        report["total_satoshis"] + report["total_fees"],
        before[buyer] - run.balance(buyer),
    )
    revenue = _producer_checks(run, s.producer, {run.key(buyer): s.price}, before[s.producer])
    sale = {c["hash"]: c for c in revenue["content"]}.get(content, {})
    run.check(
        "producer's analytics: the sale of the dataset (accesses, satoshis)",
        (1, s.price),
        (sale.get("accesses"), sale.get("satoshis")),
    )
    run.outcome.payments += report["total_payments"]
    run.outcome.satoshis += report["total_satoshis"]
    return run.finish()


def _gateways_refuse(run: Run, content: str, data: bytes, nodes: list[int]) -> None:
    """A plain HTTPS GET of the priced content from the producer's and the holders' gateways gets no bytes."""
    import httpx

    context = ssl.create_default_context(cafile=str(run.cluster.ca_file)) if run.cluster.tls else None
    with httpx.Client(verify=context or False, timeout=10) as http:
        for i in nodes:
            answer = http.get(f"{run.cluster.members[i].http}/uhrp/{content}")
            run.outcome.steps += 1
            refused = answer.status_code in (401, 402, 403)
            run.check(f"node{i}'s gateway refuses a GET without payment (HTTP {answer.status_code})", True, refused)
            run.check(f"node{i}'s gateway sends none of the bytes", False, data[:64] in answer.content)


# -- 3. multi-producer marketplace ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Offer:
    """One producer's offer of the same capability: a stream (``rate`` per packet) or a file (``price``)."""

    producer: int
    region: str
    price: int
    stream_id: str = ""


@dataclass(frozen=True, slots=True)
class MarketSettings:
    consumer: int = 3
    capability: str = "weather"
    offers: tuple[Offer, ...] = (
        Offer(0, "eu", 2, "wx-eu-live"),
        Offer(1, "us", 3, "wx-us-live"),
        Offer(2, "eu", 700),
    )
    #: the consumer's price limit per unit when it picks the streams (the file's producer is above it)
    max_price: int = 10
    packets: int = 50
    window: int = 10


def marketplace(cluster: Cluster, work: Path, s: MarketSettings = MarketSettings()) -> Outcome:
    """Three producers of one capability; the consumer picks by price, subscribes to two streams, buys a file."""
    run = Run(cluster, "marketplace", work)
    streams = [o for o in s.offers if o.stream_id]
    (seller,) = [o for o in s.offers if not o.stream_id]
    for o in s.offers:
        model = "per-packet" if o.stream_id else "flat"
        run.json(o.producer, "advertise", "--service", f"ls_{s.capability}", "--service-type", s.capability,
                 "--capability", s.capability, "--price", str(o.price), "--pricing-model", model,
                 "--region", o.region, "--no-token")  # fmt: skip
    for o in streams:
        run.json(o.producer, "stream", "create", "--stream-id", o.stream_id, "--rate", str(o.price),
                 "--tags", s.capability, "--title", f"{s.capability} ({o.region})")  # fmt: skip
        packets = work / f"{o.stream_id}.ndjson"
        packets.write_text("".join(json.dumps({"station": o.region, "n": n}) + "\n" for n in range(s.packets)))
        run.json(o.producer, "stream", "push", o.stream_id, "--file", str(packets))
    source = work / "forecast.json"
    source.write_text(json.dumps({"region": seller.region, "days": [{"day": d, "temp_c": 10 + d} for d in range(30)]}))
    published = run.json(seller.producer, "publish", str(source), "--price", str(seller.price),
                         "--tags", s.capability, "--replication", "0")  # fmt: skip

    picked = _discover(run, s)
    run.json(s.consumer, "wallet", "faucet", str(FUNDS))
    before = {i: run.balance(i) for i in (s.consumer, *(o.producer for o in s.offers))}
    if len(picked) != len(streams):
        raise ScenarioError(f"the consumer picked {picked}, not one stream of each affordable producer")
    subs: list[Subscriber] = []
    try:
        for o in streams:  # in the order of the offers (picked is ordered by key)
            if subs:
                # the next subscription once the last one's first payment came back: the wallet's one coin is
                # spent by a payment in flight until its receipt, and a payment that finds no free coin fails
                # (insufficient_funds) instead of waiting for that change
                subs[-1].wait_packets(1)
            if (run.key(o.producer), o.stream_id) in picked:
                subs.append(
                    subscribe(run, s.consumer, o.stream_id, run.key(o.producer), window=s.window, max_price=s.max_price)
                )
        for sub in subs:
            sub.wait_packets(s.packets)
        for o in streams:
            run.json(o.producer, "stream", "close", o.stream_id)
        summaries = [sub.end() for sub in subs]
    finally:
        for sub in subs:
            sub.stop()
    for o, sub, summary in zip(streams, subs, summaries, strict=True):
        run.check(f"{o.stream_id}: packets received", span(range(s.packets)), span(p["seq"] for p in sub.packets))
        run.check(f"{o.stream_id}: satoshis paid", s.packets * o.price, summary["paid_satoshis"])

    found = run.json(s.consumer, "search", "--tags", s.capability, "--producer", run.key(seller.producer))["results"]
    run.check("search finds the third producer's file", [published["hash"]], [r["hash"] for r in found])
    copy = work / "forecast-bought.json"
    run.json(s.consumer, "access", published["uhrp_url"], "--output", str(copy), "--max-price", str(seller.price))
    run.check("the bought file is the published one", True, copy.read_bytes() == source.read_bytes())
    _market_checks(run, s, subs, summaries, before)
    return run.finish()


def _discover(run: Run, s: MarketSettings) -> list[tuple[str, str]]:
    """The consumer's choice: the producers of the capability within its price, then their streams."""
    service = f"ls_{s.capability}"
    key = {o.producer: run.key(o.producer) for o in s.offers}

    def hosts(*filters: str) -> set[str]:
        return {h["identity_key"] for h in run.json(s.consumer, "discover", "--service", service, *filters)["hosts"]}

    run.check("every producer advertises the capability", set(key.values()), hosts("--capability", s.capability))
    affordable = hosts("--capability", s.capability, "--max-price", str(s.max_price))
    run.check(
        "discover --max-price keeps the cheaper two",
        {key[o.producer] for o in s.offers if o.price <= s.max_price},
        affordable,
    )
    for region in sorted({o.region for o in s.offers}):
        run.check(
            f"discover --region {region}",
            {key[o.producer] for o in s.offers if o.region == region},
            hosts("--region", region),
        )
    adverts = run.json(s.consumer, "discover", "--service-type", "streaming", "--capability", s.capability,
                       "--max-price", str(s.max_price))["hosts"]  # fmt: skip
    picked = sorted((h["identity_key"], h["resource"]) for h in adverts if h["identity_key"] in affordable)
    expected = sorted((key[o.producer], o.stream_id) for o in s.offers if o.stream_id and o.price <= s.max_price)
    run.check("the streams of the affordable producers", expected, picked)
    return picked


def _market_checks(
    run: Run, s: MarketSettings, subs: list[Subscriber], summaries: list[dict[str, Any]], before: dict[int, int]
) -> None:
    """Each producer's payments reconcile across the consumer's report, its analytics and both wallets."""
    report = run.report(s.consumer)
    providers = {p["identity_key"]: p for p in report["providers"]}
    for o in s.offers:
        owed = s.packets * o.price if o.stream_id else o.price
        key = run.key(o.producer)
        run.check(f"consumer's report: satoshis to node{o.producer}", owed, providers.get(key, {}).get("satoshis"))
        _producer_checks(run, o.producer, {run.key(s.consumer): owed}, before[o.producer])
    for o, sub, summary in zip([o for o in s.offers if o.stream_id], subs, summaries, strict=True):
        reconcile_stream(run, s.consumer, o.producer, o.stream_id, summary, sub.packets)
    spent = before[s.consumer] - run.balance(s.consumer)
    run.check(
        "consumer's wallet spent = report satoshis + fees", report["total_satoshis"] + report["total_fees"], spent
    )
    run.outcome.payments += report["total_payments"]
    run.outcome.satoshis += report["total_satoshis"]


#: the scenarios in the order they run, with their names
SCENARIOS: tuple[tuple[str, Callable[[Cluster, Path], Outcome]], ...] = (
    ("live streaming", live_streaming),
    ("premium content", premium_content),
    ("marketplace", marketplace),
)
