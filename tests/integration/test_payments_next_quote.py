"""The next quote of a ``pay.submit`` (``next``: the payer's next resource; ``next_quote``: its quote, beside the
receipt) between real nodes: peer managers on 127.0.0.1, wallets on real SQLite files, a real devnet ledger.
The harness is ``test_payments.py``'s. A pricer registered on the payee counts how often it prices: a quote asked
with ``pay.quote`` is priced once more, one that came with a receipt is not.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio

from overlay_node.clock import wall_time
from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest, InvalidPayment, PaymentError, RemoteProtocolError
from overlay_node.protocol.payments import Quote, Receipt

from .test_payments import (
    LIMIT,
    DevnetFactory,
    PayNode,
    _link_to,
    funded_pair,
    link,
    start_devnet,
    start_paynode,
)

__all__ = ["start_devnet"]  # a fixture, imported to be used here


def _count_prices(node: PayNode, prefix: str, price: int | None = None) -> list[str]:
    """Register a pricer for ``prefix`` on ``node`` (the amount asked, or ``price``); returns the resources priced."""
    priced: list[str] = []

    async def pricer(resource: str, _payer: str, amount: int | None) -> int:
        priced.append(resource)
        if price is not None:
            return price
        if amount is None:
            raise BadRequest(f"{resource} has no price without an amount")
        return amount

    node.payments.register_pricer(prefix, pricer)
    return priced


async def test_the_next_quote_comes_with_the_receipt_and_is_handed_out_without_asking(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 100_000)
        priced = _count_prices(b, "row:")

        quotes = [await a.payments.request_quote(b.key, "row:0", 700)]
        receipts = []
        for i in range(3):
            then = (f"row:{i + 1}", 700) if i < 2 else None
            receipts.append(await a.payments.pay(quotes[i], then=then))
            if then is not None:
                quotes.append(await a.payments.request_quote(b.key, *then))
        # one pricing per payment: the quotes of rows 1 and 2 came with the receipts of rows 0 and 1
        assert priced == ["row:0", "row:1", "row:2"]
        assert len({q.quote_id for q in quotes}) == 3
        assert len({q.prefix for q in quotes}) == 3
        for i, (quote, receipt) in enumerate(zip(quotes, receipts, strict=True)):
            if i == 0:
                assert quote.verify()  # asked with pay.quote: signed by the payee
            else:  # came with a receipt: MAC'd by the payee (which alone can check it), the receipt signs it
                assert quote.mac
                assert not quote.sig
                assert not quote.verify()
            assert (quote.payee, quote.payer, quote.resource, quote.amount) == (b.key, a.key, f"row:{i}", 700)
            assert b.payments.issued(quote.quote_id) == quote
            assert receipt.verify()
            assert receipt.matches(quote, receipt.txid)
            # the receipt names the quote that came beside it (the payer checks that one by its digest); the last
            # payment asked for none
            if i < 2:
                assert receipt.signs_quote(quotes[i + 1])
            else:
                assert receipt.next_quote == b""
        assert b.wallet.balance().satoshis == 2_100
        for quote in quotes:
            assert (await b.store.payments.get(quote.quote_id)) is not None

        # a quote handed out is gone: the same resource asked again is priced (and quoted) anew
        again = await a.payments.request_quote(b.key, "row:3", 700)
        assert priced[-1] == "row:3"
        assert again.quote_id not in {q.quote_id for q in quotes}


async def test_a_next_quote_the_payee_cannot_issue_or_the_payer_refuses_leaves_the_payment_standing(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 100_000)
        unpriced = _count_prices(b, "ask:")
        fixed = _count_prices(b, "fixed:", price=900)

        # the payee cannot price the next one (no amount, and its pricer wants one): the receipt comes alone, and
        # pay.quote then says why
        first = await a.payments.request_quote(b.key, "ask:0", 500)
        receipt = await a.payments.pay(first, then=("ask:1", None))
        assert receipt.verify()
        assert unpriced == ["ask:0", "ask:1"]
        with pytest.raises(BadRequest, match="no price without an amount"):
            await a.payments.request_quote(b.key, "ask:1")
        assert unpriced == ["ask:0", "ask:1", "ask:1"]

        # the payee answers a quote for another amount than the payer asked for: the payer drops it and asks
        second = await a.payments.request_quote(b.key, "fixed:0")
        assert second.amount == 900
        receipt = await a.payments.pay(second, then=("fixed:1", 700))
        assert receipt.verify()
        assert fixed == ["fixed:0", "fixed:1"]
        with pytest.raises(RemoteProtocolError, match="another resource or amount"):
            await a.payments.request_quote(b.key, "fixed:1", 700)
        assert fixed == ["fixed:0", "fixed:1", "fixed:1"]  # asked with pay.quote, not handed out
        assert b.wallet.balance().satoshis == 1_400


async def test_a_malformed_next_is_refused_before_anything_changes(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 20_000)
        quote = await a.payments.request_quote(b.key, "file:z", 500)
        balance = a.wallet.balance()

        # the payer refuses a bad ``then`` before it reserves a coin
        for then in [("", 5), ("file:next", 0), ("bad\x00resource", 5)]:
            with pytest.raises(BadRequest):
                await a.payments.pay(quote, then=then)
            assert a.wallet.balance() == balance

        # the payee refuses a bad ``next`` before it checks the payment: nothing recorded, the quote still open
        message, prepared = await a.payments.prepare_payment(quote)
        for bad in [5, {"resource": ""}, {"resource": "file:n", "amount": -1}, {"amount": 5}]:
            with pytest.raises(BadRequest):
                await _link_to(a, b).request("pay.submit", {**message.to_wire(), "next": bad})
        assert b.wallet.balance().satoshis == 0
        assert await b.store.payments.get(quote.quote_id) is None
        a.wallet.release(prepared)
        assert a.wallet.balance() == balance
        receipt = await a.payments.pay(quote, then=("file:next", 300))
        assert receipt.verify()
        assert b.wallet.balance().satoshis == 500

        # and a price above the payer's maximum is refused for a handed-out quote as for an asked one
        with pytest.raises(PaymentError, match="above the maximum"):
            await a.payments.request_quote(b.key, "file:next", 300, max_price=299)


async def test_the_payer_takes_a_next_quote_on_the_strength_of_the_receipt_that_names_it(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    # the payer's check of a next quote, on answers a payee could send: one its receipt names needs no signature of
    # its own; one the receipt does not name needs its own, and one that has neither is refused
    # (a quote on a link always carries a signature: here a wrong one)
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 10_000)
        now_ms = int(wall_time() * 1000)
        paid = Quote.issue(b.identity, payer=a.key, resource="r:0", amount=500, now_ms=now_ms, ttl_ms=60_000)
        # a quote whose own signature is wrong (the payee's, over another quote)
        bare = dataclasses.replace(
            Quote.issue(
                b.identity, payer=a.key, resource="r:1", amount=500, now_ms=now_ms, ttl_ms=60_000, signed=False
            ),
            sig=paid.sig,
        )
        assert not bare.verify()
        signed = Quote.issue(b.identity, payer=a.key, resource="r:1", amount=500, now_ms=now_ms, ttl_ms=60_000)

        def receipt(next_quote: Quote | None) -> Receipt:
            return Receipt.issue(b.identity, paid, txid="ab" * 32, amount=500, paid_ms=now_ms, next_quote=next_quote)

        check = a.payments._quote_answer
        assert check(bare.to_wire(), b.key, "r:1", 500, receipt=receipt(bare)) == bare
        assert check(signed.to_wire(), b.key, "r:1", 500, receipt=receipt(signed)) == signed
        assert check(signed.to_wire(), b.key, "r:1", 500, receipt=receipt(None)) == signed
        with pytest.raises(RemoteProtocolError, match="not signed by the peer"):
            check(bare.to_wire(), b.key, "r:1", 500, receipt=receipt(None))
        with pytest.raises(RemoteProtocolError, match="not signed by the peer"):
            check(bare.to_wire(), b.key, "r:1", 500, receipt=receipt(signed))  # it names another quote
        with pytest.raises(RemoteProtocolError, match="not signed by the peer"):
            check(bare.to_wire(), b.key, "r:1", 500)


async def test_a_macd_next_quote_is_paid_after_the_payee_restarts_and_a_payer_that_asks_no_mac_gets_it_signed(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    # the payee's MAC vouches for a next quote it no longer remembers (its key comes from the identity); a changed
    # quote keeps a MAC that no longer matches and is refused; a ``next`` without ``mac`` (an older payer) is answered
    # with a signed quote, as before
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a = await start_paynode(nursery, tmp_path, "a", devnet.url)
        b_identity = Identity.generate()
        b = await start_paynode(nursery, tmp_path, "b", devnet.url, identity=b_identity)
        await link(a, b)
        await a.fund(20_000)
        _count_prices(b, "row:")
        first = await a.payments.request_quote(b.key, "row:0", 700)
        await a.payments.pay(first, then=("row:1", 700))
        held = await a.payments.request_quote(b.key, "row:1", 700)  # handed out, not asked
        assert held.mac
        assert not held.sig

        await b.stop()
        b2 = await start_paynode(nursery, tmp_path, "b", devnet.url, identity=b_identity)
        priced = _count_prices(b2, "row:")
        await link(a, b2)
        assert b2.payments.issued(held.quote_id) is None  # forgotten with the restart
        balance = a.wallet.balance()
        with pytest.raises(InvalidPayment, match="signature or MAC"):
            await a.payments.pay(dataclasses.replace(held, amount=600))
        assert a.wallet.balance() == balance
        receipt = await a.payments.pay(held)
        assert receipt.verify()
        assert receipt.matches(held, receipt.txid)
        assert (await b2.store.payments.get(held.quote_id)) is not None
        assert b2.wallet.balance().satoshis == 1_400

        quote = await a.payments.request_quote(b2.key, "row:2", 700)
        message, _ = await a.payments.prepare_payment(quote)
        answer = await _link_to(a, b2).request(
            "pay.submit", {**message.to_wire(), "next": {"resource": "row:3", "amount": 700}}
        )
        offered = Quote.from_wire(answer["next_quote"])
        assert offered.verify()
        assert not offered.mac
        assert Receipt.from_wire(answer["receipt"]).signs_quote(offered)
        assert priced == ["row:2", "row:3"]
