"""A BRC-29 payment whose derivation suffix is not exactly a nonce (a trailing line break) is refused by a real
payee over a real peer link, before anything is recorded (the harness of ``test_payments.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from overlay_node.crypto import brc42
from overlay_node.crypto.brc29 import BRC29_PROTOCOL
from overlay_node.crypto.scripts import p2pkh_for_key
from overlay_node.errors import BadRequest
from overlay_node.protocol.payments import PaymentMessage
from tests.integration.test_payments import LIMIT, DevnetFactory, funded_pair, start_devnet

__all__ = ["start_devnet"]


async def test_a_suffix_with_a_trailing_newline_is_refused_and_nothing_is_recorded(
    tmp_path: Path, nursery: trio.Nursery, start_devnet: DevnetFactory
) -> None:
    with trio.fail_after(LIMIT):
        devnet = await start_devnet()
        a, b = await funded_pair(nursery, tmp_path, devnet.url, 20_000)
        quote = await a.payments.request_quote(b.key, "file:x", 500)
        suffix = "c3VmZml4\n"
        # output 0 really pays the key that prefix and suffix derive (with the newline), so only the nonce check
        # stands between this payment and the payee's books
        version, name = BRC29_PROTOCOL
        invoice = f"{version}-{name}-{quote.prefix} {suffix}"
        script = p2pkh_for_key(brc42.derive_child_public_key(a.identity, b.key, invoice))
        prepared = await a.wallet.prepare([(script, quote.amount)], recipient=b.key)
        message = PaymentMessage(
            quote=quote,
            derivation_prefix=quote.prefix,
            derivation_suffix=suffix,
            sender_identity_key=a.key,
            transaction=prepared.beef,
        )
        link = a.peers.link(b.key)
        assert link is not None
        with pytest.raises(BadRequest, match="derivation suffix must be 4-64 base64 characters"):
            await link.request("pay.submit", message.to_wire())
        a.wallet.release(prepared)
        assert b.wallet.balance().satoshis == 0
        assert await b.store.payments.recent() == []
        assert await b.store.payments.get(quote.quote_id) is None
        assert [h.kind for h in await b.wallet.history()] == []
