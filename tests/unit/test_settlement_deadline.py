"""A watched payment (the payee never answered) is resolved at its deadline, not a whole backoff later: with the
default intervals, the polls of a transaction ARC never sees are scheduled up to the deadline and no further."""

from __future__ import annotations

import dataclasses

from overlay_node.config import WalletSection
from overlay_node.services.arc import interpret, transport_failure
from overlay_node.services.settlement import decide
from overlay_node.store.settlement import SettlementJob

TXID = "ab" * 32
T0 = 1_800_000_000.0


def _watch(config: WalletSection) -> SettlementJob:
    """The job the payer writes ahead of a payment (services/wallet.py): polled first a poll interval later."""
    return SettlementJob(
        id=1,
        txid=TXID,
        beef=b"x",
        kind="watch",
        state="pending",
        attempts=0,
        next_at=T0 + config.settle_poll_interval,
        deadline=T0 + config.unanswered_timeout,
        arc_status=None,
        detail="",
        created_at=T0,
    )


def test_an_unknown_payment_is_abandoned_at_its_deadline_with_the_default_intervals() -> None:
    config = WalletSection()  # poll 5 s, retry 1 s doubling up to 300 s, deadline 600 s
    job = _watch(config)
    deadline = job.deadline
    assert deadline is not None
    missing = interpret(404, {"status": 404}, txid=TXID, query=True)
    wakeups = []
    while not job.done:
        now = job.next_at  # the queue wakes when the job is due
        wakeups.append(now - T0)
        update = decide(job, missing, now=now, config=config)
        assert update.state == "abandoned" or update.next_at <= deadline
        job = dataclasses.replace(job, state=update.state, attempts=update.attempts, next_at=update.next_at)
    assert job.state == "abandoned"
    # resolved at the deadline itself (the backoff would have slept until 824 s: 3.7 minutes more in limbo)
    assert wakeups[-1] == config.unanswered_timeout
    assert wakeups == sorted(wakeups)


def test_a_retry_is_cut_at_the_deadline_but_not_once_past_it() -> None:
    config = WalletSection()
    job = dataclasses.replace(_watch(config), attempts=12)  # backoff at its ceiling
    assert job.deadline is not None
    unreachable = transport_failure(OSError("refused"), txid=TXID)
    before = decide(job, unreachable, now=job.deadline - 10, config=config)
    assert before.state == "pending"
    assert before.next_at == job.deadline
    # past the deadline with ARC unreachable nothing can be decided: back off as usual (no busy loop)
    after = decide(job, unreachable, now=job.deadline + 1, config=config)
    assert after.state == "pending"
    assert after.next_at == job.deadline + 1 + config.settle_retry_max
    # a submission has no deadline and keeps its backoff
    submit = dataclasses.replace(job, kind="submit", deadline=None)
    assert decide(submit, unreachable, now=T0, config=config).next_at == T0 + config.settle_retry_max
