"""Reports from this node's durable records: what it bought and consumed (``ctl report``), what it sold
(``ctl analytics``).

Both read the store only (``store/reports.py``), so a report after a restart says what one before it said, and the
two sides reconcile exactly: the satoshis a consumer's report gives for a provider are the ``amount`` of its payments'
history entries, which is what the provider's ``payments`` rows (its revenue) and its wallet's incoming history
record for the same transactions.

Rules the figures follow:

- A payment counts once its history entry exists and stays counted unless it ``failed`` or was ``abandoned`` (those
  are summed apart as ``failed_satoshis``). A payment is *settled* once ARC has seen it (its settlement job is
  ``seen`` or ``mined``; on the producer's side the ``payments`` row is ``settled`` or ``mined``), else *unsettled*.
- Resources name what was paid for: ``stream:<id>`` (a stream), ``uhrp:<hex>`` (content); anything else is
  ``other`` (a plain ``ctl pay``, an HTTP route).
- Stream packets and payload bytes are the subscription's own counts (``stream_subs``: bytes received by the consumer,
  sent by the producer, each packet once), for subscriptions updated within the range;
  content bytes and packets (chunks) are what each purchase delivered (``consumption``), and on the producer's side
  the content's size times its sales.
- A time range is ``24h``, ``7d``, ``30m`` (the last N hours, days or minutes), ``all``, or ``FROM..TO`` with ISO
  dates or times (UTC unless they say otherwise) or epoch seconds, either side open (``2026-12-01..``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from overlay_node.clock import wall_time
from overlay_node.errors import BadRequest
from overlay_node.store.db import Store
from overlay_node.store.reports import ConsumptionRow, PaymentMade, SubUsage

__all__ = ["REPORT_TYPES", "ReportsService", "TimeRange", "parse_time_range"]

REPORT_TYPES: Final = ("usage", "access", "revenue")
ReportType = Literal["usage", "access", "revenue"]

#: hourly buckets a report fills at most (a longer range gets buckets only where there were payments)
MAX_BUCKETS: Final = 24 * 92
_HOUR: Final = 3600
_SPAN = re.compile(r"^([0-9]{1,6})([mhd])$")
_UNITS: Final = {"m": 60, "h": 3600, "d": 86_400}
_UNCOUNTED: Final = frozenset({"failed", "abandoned"})
_SEEN: Final = frozenset({"seen", "mined"})
_SETTLED_TAKEN: Final = frozenset({"settled", "mined"})
_RANGE_HINT: Final = "use 24h, 7d, all, or FROM..TO with ISO dates or epoch seconds (2026-12-01..2026-12-03)"


@dataclass(frozen=True, slots=True)
class TimeRange:
    """``[since, until)`` in wall-clock seconds, and the text it came from."""

    since: float
    until: float
    text: str

    def as_dict(self) -> dict[str, Any]:
        """``from`` and ``to`` in epoch seconds, None where the range is open."""
        return {
            "text": self.text,
            "from": self.since if self.since > 0 else None,
            "to": self.until if math.isfinite(self.until) else None,
        }


def _instant(text: str, *, end: bool) -> float:
    """Epoch seconds of one side of ``FROM..TO``: epoch seconds, an ISO date (a ``TO`` date means its end), or an
    ISO date and time (UTC unless it names an offset)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        if len(text) == 10:
            day = dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), tzinfo=dt.UTC)
            return (day + dt.timedelta(days=1 if end else 0)).timestamp()
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"bad time {text!r} in --time-range: {_RANGE_HINT}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def parse_time_range(text: str, now: float) -> TimeRange:
    """The range ``text`` names, as of wall time ``now`` (see the module docstring).

    Raises:
        BadRequest: not a range we know, or one that ends before it starts.
    """
    spec = text.strip().lower()
    if spec in ("", "all"):
        return TimeRange(0.0, math.inf, "all")
    span = _SPAN.fullmatch(spec)
    if span is not None:
        return TimeRange(now - int(span.group(1)) * _UNITS[span.group(2)], math.inf, spec)
    if ".." not in spec:
        raise BadRequest(f"bad --time-range {text!r}: {_RANGE_HINT}")
    start, _, stop = text.strip().partition("..")
    since = _instant(start, end=False) if start.strip() else 0.0
    until = _instant(stop, end=True) if stop.strip() else math.inf
    if until <= since:
        raise BadRequest(f"--time-range {text!r} ends before it starts: {_RANGE_HINT}")
    return TimeRange(since, until, text.strip())


def _kind(resource: str) -> tuple[str, str]:
    """``("stream", id)``, ``("content", hex)`` or ``("other", resource)``."""
    if resource.startswith("stream:"):
        return "stream", resource.removeprefix("stream:")
    if resource.startswith("uhrp:"):
        return "content", resource.removeprefix("uhrp:")
    return "other", resource


@dataclass(slots=True)
class _Tally:
    """Satoshis and counts of a group of payments and what they delivered."""

    satoshis: int = 0
    settled: int = 0
    failed: int = 0
    fees: int = 0
    payments: int = 0
    packets: int = 0
    bytes: int = 0
    first: float | None = None
    last: float | None = None
    peers: set[str] = field(default_factory=set)

    def add(self, amount: int, *, settled: bool, failed: bool, at: float, fee: int = 0) -> None:
        if failed:
            self.failed += amount
            return
        self.satoshis += amount
        self.settled += amount if settled else 0
        self.fees += fee
        self.payments += 1
        self.first = at if self.first is None else min(self.first, at)
        self.last = at if self.last is None else max(self.last, at)

    def money(self) -> dict[str, Any]:
        return {
            "satoshis": self.satoshis,
            "settled_satoshis": self.settled,
            "unsettled_satoshis": self.satoshis - self.settled,
            "failed_satoshis": self.failed,
            "payments": self.payments,
        }


def _made_settled(p: PaymentMade) -> bool:
    return p.settlement in _SEEN or p.status == "confirmed"


def _payment_dict(p: PaymentMade) -> dict[str, Any]:
    kind, name = _kind(p.resource)
    return {
        "txid": p.txid,
        "provider": p.provider,
        "resource": p.resource,
        "kind": kind,
        "name": name,
        "satoshis": p.amount,
        "fee": p.fee,
        "status": p.status,
        "settlement": p.settlement or "none",
        "settled": _made_settled(p),
        "created_at": p.created_at,
    }


def _buckets(times: Iterable[tuple[float, int, bool]], span: TimeRange, now: float) -> list[dict[str, Any]]:
    """Hourly buckets of ``(time, satoshis, settled)``: every hour of a bounded range (up to ``MAX_BUCKETS``),
    else every hour between the first and the last payment."""
    sums: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for at, amount, settled in times:
        hour = int(at // _HOUR) * _HOUR
        sums[hour][0] += amount
        sums[hour][1] += amount if settled else 0
        sums[hour][2] += 1
    if span.since > 0:
        first = int(span.since // _HOUR) * _HOUR
        last = int((min(span.until, now) - 1e-6) // _HOUR) * _HOUR
    elif sums:
        first, last = min(sums), max(sums)
    else:
        return []
    if sums:
        first, last = min(first, min(sums)), max(last, max(sums))
    count = (last - first) // _HOUR + 1
    hours = list(range(first, last + 1, _HOUR)) if count <= MAX_BUCKETS else sorted(sums)
    return [
        {
            "start": hour,
            "start_iso": dt.datetime.fromtimestamp(hour, dt.UTC).strftime("%Y-%m-%dT%H:%MZ"),
            "satoshis": sums[hour][0],
            "settled_satoshis": sums[hour][1],
            "payments": sums[hour][2],
        }
        for hour in hours
    ]


class ReportsService:
    """The reports of one node, over its store (stateless: every call reads the durable records afresh)."""

    def __init__(self, store: Store, *, wall_clock: Callable[[], float] = wall_time) -> None:
        self._store = store
        self._wall = wall_clock

    # -- the consumer's report -------------------------------------------------------------------------------------

    async def consumer_report(self, time_range: str = "all", *, include_payments: bool = False) -> dict[str, Any]:
        """What this node bought and consumed in ``time_range``: per provider, per stream and per content.

        Raises:
            BadRequest: a bad time range.
        """
        span = parse_time_range(time_range, self._wall())
        reports = self._store.reports
        made = await reports.payments_made(span.since, span.until)
        subs = await reports.subscriptions("consumer", span.since if span.since > 0 else 0.0)
        consumed = await reports.consumption(span.since, span.until)
        providers: dict[str, _Tally] = defaultdict(_Tally)
        streams: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
        content: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
        other: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
        totals = _Tally()
        for p in made:
            kind, name = _kind(p.resource)
            group = {"stream": streams, "content": content, "other": other}[kind]
            for tally in (providers[p.provider], group[(name, p.provider)], totals):
                tally.add(p.amount, settled=_made_settled(p), failed=p.status in _UNCOUNTED, at=p.created_at, fee=p.fee)
        states = self._deliveries(subs, consumed, providers, streams, content, totals)
        out: dict[str, Any] = {
            "time_range": span.as_dict(),
            "providers": [
                {"identity_key": key, **t.money(), "fees": t.fees, "packets": t.packets, "bytes": t.bytes}
                for key, t in sorted(providers.items())
            ],
            "streams": [
                {"stream_id": sid, "provider": key, **t.money(), "fees": t.fees, "packets": t.packets}
                | {"bytes": t.bytes, "state": states.get((sid, key), "")}
                for (sid, key), t in sorted(streams.items())
            ],
            "content": [
                {"hash": cid, "provider": key, **t.money(), "fees": t.fees, "packets": t.packets, "bytes": t.bytes}
                for (cid, key), t in sorted(content.items())
            ],
            "other": [
                {"resource": res, "provider": key, **t.money(), "fees": t.fees}
                for (res, key), t in sorted(other.items())
            ],
            "total_satoshis": totals.satoshis,
            "total_fees": totals.fees,
            "total_packets": totals.packets,
            "total_bytes": totals.bytes,
            "total_payments": totals.payments,
            "settled_satoshis": totals.settled,
            "unsettled_satoshis": totals.satoshis - totals.settled,
            "failed_satoshis": totals.failed,
        }
        if include_payments:
            out["payments"] = [_payment_dict(p) for p in made]
        return out

    @staticmethod
    def _deliveries(
        subs: list[SubUsage],
        consumed: list[ConsumptionRow],
        providers: dict[str, _Tally],
        streams: dict[tuple[str, str], _Tally],
        content: dict[tuple[str, str], _Tally],
        totals: _Tally,
    ) -> dict[tuple[str, str], str]:
        """Add the packets and bytes delivered to the tallies; returns each subscription's state."""
        states = {}
        for s in subs:
            states[(s.stream_id, s.peer)] = s.state
            for tally in (providers[s.peer], streams[(s.stream_id, s.peer)], totals):
                tally.packets += s.packets
                tally.bytes += s.bytes
        for c in consumed:
            kind, name = _kind(c.resource)
            group = content if kind == "content" else streams
            for tally in (providers[c.provider], group[(name, c.provider)], totals):
                tally.packets += c.packets
                tally.bytes += c.bytes
        return states

    # -- the producer's analytics ----------------------------------------------------------------------------------

    async def analytics(self, report_type: str = "revenue", time_range: str = "all") -> dict[str, Any]:
        """What this node sold in ``time_range``: ``revenue`` (per consumer, stream and content, settled and
        unsettled), ``usage`` (packets and bytes per stream and subscriber, bytes per content) or ``access`` (who
        bought or subscribed to what); each with the totals and hourly ``buckets``.

        Raises:
            BadRequest: an unknown report type or a bad time range.
        """
        if report_type not in REPORT_TYPES:
            raise BadRequest(f"bad --report-type {report_type!r}: use one of {', '.join(REPORT_TYPES)}")
        now = self._wall()
        span = parse_time_range(time_range, now)
        reports = self._store.reports
        taken = await reports.payments_taken(span.since, span.until)
        subs = await reports.subscriptions("producer", span.since if span.since > 0 else 0.0)
        totals = _Tally()
        consumers: dict[str, _Tally] = defaultdict(_Tally)
        by_resource: dict[str, dict[str, _Tally]] = defaultdict(lambda: defaultdict(_Tally))
        for p in taken:
            settled, failed = p.status in _SETTLED_TAKEN, p.status == "failed"
            for tally in (totals, consumers[p.payer], by_resource[p.resource][p.payer]):
                tally.add(p.amount, settled=settled, failed=failed, at=p.accepted_at)
        out: dict[str, Any] = {
            "report_type": report_type,
            "time_range": span.as_dict(),
            "total_satoshis": totals.satoshis,
            "settled_satoshis": totals.settled,
            "unsettled_satoshis": totals.satoshis - totals.settled,
            "failed_satoshis": totals.failed,
            "payments": totals.payments,
            "wallet_received_satoshis": await reports.received_total(span.since, span.until),
            "consumers": [{"identity_key": key, **t.money()} for key, t in sorted(consumers.items())],
            "buckets": _buckets(
                ((p.accepted_at, p.amount, p.status in _SETTLED_TAKEN) for p in taken if p.status != "failed"),
                span,
                now,
            ),
        }
        sold = {name: payers for res, payers in by_resource.items() for kind, name in [_kind(res)] if kind == "content"}
        sizes = await reports.content_sizes(sorted(sold))
        out["streams"] = _stream_rows(by_resource, subs, report_type)
        out["content"] = _content_rows(sold, sizes, report_type)
        out["other"] = [
            {"resource": res, **_sum(payers.values()).money()}
            for res, payers in sorted(by_resource.items())
            if _kind(res)[0] == "other"
        ]
        return out


def _sum(tallies: Iterable[_Tally]) -> _Tally:
    out = _Tally()
    for t in tallies:
        out.satoshis += t.satoshis
        out.settled += t.settled
        out.failed += t.failed
        out.payments += t.payments
        out.first = t.first if out.first is None else min(out.first, t.first or out.first)
        out.last = t.last if out.last is None else max(out.last, t.last or out.last)
    return out


def _stream_rows(
    by_resource: dict[str, dict[str, _Tally]], subs: list[SubUsage], report_type: str
) -> list[dict[str, Any]]:
    """One row per stream sold or subscribed to: money, packets and the subscribers (per report type)."""
    packets: dict[str, dict[str, SubUsage]] = defaultdict(dict)
    for s in subs:
        packets[s.stream_id][s.peer] = s
    ids = sorted({name for res in by_resource for kind, name in [_kind(res)] if kind == "stream"} | set(packets))
    rows = []
    for sid in ids:
        payers = by_resource.get(f"stream:{sid}", {})
        keys = sorted(set(payers) | set(packets[sid]))
        subscribers = []
        for key in keys:
            money = payers[key].money() if key in payers else _Tally().money()
            sub = packets[sid].get(key)
            entry: dict[str, Any] = {
                "identity_key": key,
                "packets": sub.packets if sub else 0,
                "bytes": sub.bytes if sub else 0,
            }
            if report_type != "usage":
                entry |= money
            if report_type == "access":
                entry |= {"state": sub.state if sub else "", "last_seen": sub.updated_at if sub else None}
            subscribers.append(entry)
        total = _sum(payers.values())
        rows.append(
            {
                "stream_id": sid,
                **total.money(),
                "packets": sum(s.packets for s in packets[sid].values()),
                "bytes": sum(s.bytes for s in packets[sid].values()),
                "subscribers": subscribers,
            }
        )
    return rows


def _content_rows(
    sold: dict[str, dict[str, _Tally]], sizes: dict[str, tuple[int, int]], report_type: str
) -> list[dict[str, Any]]:
    """One row per content sold: money, accesses, bytes (its size per sale) and the consumers (per report type)."""
    rows = []
    for cid, payers in sorted(sold.items()):
        size, chunk = sizes.get(cid, (0, 0))
        total = _sum(payers.values())
        consumers = []
        for key, t in sorted(payers.items()):
            entry: dict[str, Any] = {"identity_key": key, "accesses": t.payments, "bytes": size * t.payments}
            if report_type != "usage":
                entry |= t.money()
            if report_type == "access":
                entry |= {"first": t.first, "last": t.last}
            consumers.append(entry)
        rows.append(
            {
                "hash": cid,
                "size": size,
                **total.money(),
                "accesses": total.payments,
                "bytes": size * total.payments,
                "packets": (-(-size // chunk) if chunk else 0) * total.payments,
                "consumers": consumers,
            }
        )
    return rows
