"""Which of a batch's submissions a later one stands for (``covered_by``), and what the answer about that later one
says about them (``implied``): point 6 of ``services/settlement.py``."""

from __future__ import annotations

from overlay_node.services.settlement import covered_by, implied
from overlay_node.store.settlement import JobUpdate, SettlementJob

T0 = 1_800_000_000.0


def tx(n: int) -> str:
    return f"{n:064x}"


def job(n: int, *, state: str = "pending", attempts: int = 0) -> SettlementJob:
    return SettlementJob(
        id=n,
        txid=tx(n),
        beef=b"x",
        kind="submit",
        state=state,  # type: ignore[arg-type]  # the test's states are JobState values
        attempts=attempts,
        next_at=T0,
        deadline=None,
        arc_status=None,
        detail="",
        created_at=T0,
    )


def test_a_run_of_payments_spending_each_others_change_is_stood_for_by_its_last() -> None:
    due = {tx(1), tx(2), tx(3)}
    coins = [
        (tx(1), "spent", tx(2)),  # 1's change, spent by 2
        (tx(2), "spent", tx(3)),
        (tx(3), "spendable", None),  # the last one's change is ours still
    ]
    assert covered_by(coins, due) == {tx(1): tx(2), tx(2): tx(3)}


def test_a_transaction_with_a_coin_left_or_spent_outside_the_batch_speaks_for_itself() -> None:
    due = {tx(1), tx(2), tx(3), tx(4)}
    coins = [
        (tx(1), "spent", tx(2)),
        (tx(1), "spendable", None),  # a second change coin (a stream's split change) still ours
        (tx(2), "spent", tx(9)),  # spent by a payment not in this batch
        (tx(3), "pending", None),
        (tx(3), "spent", tx(4)),
        (tx(4), "spent", tx(4)),  # nonsense: spent by itself
        (tx(8), "spent", tx(1)),  # not a submission of the batch
    ]
    assert covered_by(coins, due) == {}


def test_a_transaction_whose_coins_two_of_the_batch_spend_speaks_for_itself() -> None:
    """Were one of the two to fail, its coin would be ours again, and the transaction would need its own proof."""
    due = {tx(1), tx(2), tx(3)}
    coins = [(tx(1), "spent", tx(3)), (tx(1), "spent", tx(2)), (tx(2), "spent", tx(3)), (tx(2), "spent", tx(3))]
    assert covered_by(coins, due) == {tx(2): tx(3)}
    # a transaction that made no coin of ours (a payment without change) is never stood for
    assert covered_by([], due) == {}


def test_what_the_answer_about_the_spender_says_about_the_spent() -> None:
    spent = job(1, state="seen", attempts=0)
    mined = JobUpdate(state="mined", attempts=0, next_at=T0, merkle_path=b"path", block_height=7)
    out = implied(spent, tx(2), mined, now=T0 + 1)
    # mined too, without a merkle path of its own (the wallet keeps its transaction unproven)
    assert (out.state, out.merkle_path, out.block_height, out.attempts) == ("mined", None, None, 0)
    seen = JobUpdate(state="seen", attempts=0, next_at=T0 + 30, arc_status="SEEN_ON_NETWORK")
    out = implied(job(1), tx(2), seen, now=T0 + 1)
    assert (out.state, out.next_at, out.arc_status) == ("seen", T0 + 30, "SEEN_ON_NETWORK")
    # anything else says nothing about it: sent on its own at once, with one attempt more (so that nothing stands
    # in for it again); a spender in the orphan mempool may lack this very transaction
    for state in ("progressing", "failed", "pending"):
        other = JobUpdate(state=state, attempts=1, next_at=T0 + 5)
        out = implied(job(1, state="pending", attempts=0), tx(2), other, now=T0 + 1)
        assert (out.state, out.attempts, out.next_at) == ("pending", 1, T0 + 1), state
