"""Payments as data and the pure pieces around them: quotes and receipts (signing bytes, signatures, wire
parsing), the payee's output check, BEEF V2 writing and payment BEEF checks, coin selection and fees, and how
the settlement queue reads ARC's answers (``settlement.decide``)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.chain.blocks import block_merkle_paths, merkle_root, txid_of
from overlay_node.chain.formats import BeefEntry, SourceOutput, atomic_beef, encode_beef_v2, parse_submission
from overlay_node.chain.validation import Policy, fast_check
from overlay_node.config import WalletSection
from overlay_node.crypto.brc29 import payee_locking_script, payer_locking_script
from overlay_node.crypto.brc42 import child_secret, own_child_key, own_child_public, sign_for_anyone, verify_for_anyone
from overlay_node.crypto.brc42 import derive_child_public_key as their_child_public
from overlay_node.crypto.keys import SECP256K1_N, Identity
from overlay_node.crypto.scripts import p2pkh_for_key
from overlay_node.errors import (
    BadRequest,
    InsufficientFunds,
    InsufficientPayment,
    InvalidPayment,
    PaymentError,
)
from overlay_node.protocol.payments import (
    MAX_RECEIPT_BATCH,
    RECEIPT_PROTOCOL,
    PaymentMessage,
    Quote,
    Receipt,
    batch_signing_bytes,
    check_payment_output,
    check_resource,
    next_by_mac,
    next_field,
)
from overlay_node.services.arc import ArcOutcome, ArcResult, interpret, transport_failure
from overlay_node.services.settlement import backoff, decide
from overlay_node.services.wallet_beef import beef_entries, check_payment_beef, parse_payment_beef
from overlay_node.services.wallet_build import (
    CoinSet,
    build_transaction,
    estimate_size,
    required_fee,
    select_coins,
)
from overlay_node.store.records import UtxoRecord
from overlay_node.store.settlement import SettlementJob
from overlay_node.store.wallet import TxRecord

PAYEE, PAYER = Identity.generate(), Identity.generate()
NOW_MS = 1_800_000_000_000


def _quote(**overrides: Any) -> Quote:
    kwargs: dict[str, Any] = {
        "payer": PAYER.public_key_hex,
        "resource": "file:data.csv",
        "amount": 1_000,
        "now_ms": NOW_MS,
        "ttl_ms": 60_000,
    }
    kwargs.update(overrides)
    return Quote.issue(PAYEE, **kwargs)


# -- quotes, receipts, messages ------------------------------------------------------------------------------


def test_quote_is_signed_by_the_payee_and_round_trips() -> None:
    quote = _quote()
    assert quote.payee == PAYEE.public_key_hex
    assert quote.verify()
    again = Quote.from_wire(cbor2.loads(cbor2.dumps(quote.to_wire())))
    assert again == quote
    assert again.verify()
    assert not quote.expired(NOW_MS + 59_999)
    assert quote.expired(NOW_MS + 60_000)
    assert quote.as_json()["sig"] == quote.sig.hex()


def test_quotes_issued_together_have_ids_and_prefixes_that_sort_together() -> None:
    # the time of issue leads (the payee's unique indexes of quote ids and prefixes then take a batch of payments on
    # their last pages, not on one random page each); the random rest keeps them unique
    quotes = [_quote(now_ms=NOW_MS + i // 100) for i in range(200)]
    assert len({q.quote_id for q in quotes}) == len({q.prefix for q in quotes}) == 200
    assert all(q.quote_id.startswith(f"{NOW_MS + i // 100:012x}") for i, q in enumerate(quotes))
    assert all(base64.b64decode(q.prefix)[:6] == (NOW_MS + i // 100).to_bytes(6, "big") for i, q in enumerate(quotes))
    assert all(len(base64.b64decode(q.prefix)) == 16 and re.fullmatch("[0-9a-f]{32}", q.quote_id) for q in quotes)
    given = _quote(quote_id="ab" * 16, prefix="AAAAAAAA")
    assert (given.quote_id, given.prefix) == ("ab" * 16, "AAAAAAAA")


def test_a_macd_quote_checks_out_only_under_the_payee_s_key_and_round_trips_without_a_signature() -> None:
    key, other = b"k" * 32, b"o" * 32
    quote = _quote(mac_key=key)
    assert len(quote.mac) == 32
    assert quote.sig == b""
    assert quote.mac_ok(key)
    assert not quote.mac_ok(other)
    assert not quote.verify()
    wire = quote.to_wire()
    assert "sig" not in wire
    again = Quote.from_wire(cbor2.loads(cbor2.dumps(wire)))
    assert again == quote
    assert again.mac_ok(key)
    assert quote.as_json()["mac"] == quote.mac.hex()
    for change in ({"amount": 1}, {"resource": "file:other"}, {"expires_ms": NOW_MS + 10**9}):
        assert not dataclasses.replace(quote, **change).mac_ok(key)
    assert not _quote().mac_ok(key)  # a signed quote has no MAC
    assert next_field("r", None) == {"resource": "r", "mac": True}
    assert next_by_mac({"next": next_field("r", 5)})
    assert not next_by_mac({"next": {"resource": "r"}})


@pytest.mark.parametrize(
    "change",
    [
        {"amount": 1},
        {"resource": "file:other"},
        {"prefix": "AAAAAAAA"},
        {"expires_ms": NOW_MS + 10**9},
        {"payer": Identity.generate().public_key_hex},
    ],
)
def test_a_tampered_quote_fails_its_signature(change: dict[str, Any]) -> None:
    assert not dataclasses.replace(_quote(), **change).verify()


def test_a_quote_signed_by_someone_else_fails() -> None:
    other = Quote.issue(Identity.generate(), payer=PAYER.public_key_hex, resource="r", amount=5, now_ms=0, ttl_ms=1)
    assert not dataclasses.replace(other, payee=PAYEE.public_key_hex).verify()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (None, "must be a map"),
        ({}, "quote id"),
        ({**_quote().to_wire(), "amount": 0}, "price"),
        ({**_quote().to_wire(), "amount": True}, "price"),
        ({**_quote().to_wire(), "payee": "zz"}, "public key"),
        ({**_quote().to_wire(), "payee": _quote().payee + "\n"}, "public key"),
        ({**_quote().to_wire(), "quote_id": _quote().quote_id + "\n"}, "quote id"),
        ({**_quote().to_wire(), "resource": "a\nb"}, "resource"),
        ({**_quote().to_wire(), "prefix": "has space"}, "derivation prefix"),
        ({**_quote().to_wire(), "sig": "nope"}, "sig"),
        ({**_quote(mac_key=b"k" * 32).to_wire(), "mac": b"short"}, "'mac' must be 32 bytes"),
        ({**_quote(signed=False).to_wire()}, "sig"),
        ({**_quote().to_wire(), "expires_ms": -1}, "expires_ms"),
    ],
)
def test_malformed_quotes_are_bad_requests(body: Any, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        Quote.from_wire(body)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*_quote().to_wire(), "mac", "x"]),
        st.one_of(st.none(), st.integers(), st.text(), st.binary()),
    )
)
def test_quote_parser_never_crashes(body: dict[str, Any]) -> None:
    try:
        Quote.from_wire(body)
    except BadRequest:
        pass


def test_receipt_signature_binds_every_field() -> None:
    quote = _quote()
    txid = "ab" * 32
    receipt = Receipt.issue(PAYEE, quote, txid=txid, amount=1_200, paid_ms=NOW_MS + 5)
    assert receipt.verify()
    assert receipt.matches(quote, txid)
    assert Receipt.from_bytes(receipt.to_bytes()) == receipt
    assert not receipt.matches(quote, "cd" * 32)
    for change in ({"amount": 1_201}, {"txid": "cd" * 32}, {"payer": PAYEE.public_key_hex}, {"paid_ms": 1}):
        assert not dataclasses.replace(receipt, **change).verify()


def test_a_receipt_signs_the_next_quote_by_its_digest() -> None:
    paid, txid = _quote(), "ab" * 32
    following = _quote(signed=False)
    assert following.sig == b""
    assert "sig" not in following.to_wire()
    assert not following.verify()
    with pytest.raises(BadRequest, match="sig"):
        Quote.from_wire(following.to_wire())  # a quote on its own must be signed
    assert Quote.from_wire(cbor2.loads(cbor2.dumps(following.to_wire())), signed=False) == following
    receipt = Receipt.issue(PAYEE, paid, txid=txid, amount=1_000, paid_ms=NOW_MS, next_quote=following)
    again = Receipt.from_bytes(receipt.to_bytes())
    assert again == receipt
    assert again.verify()
    assert again.signs_quote(following)
    assert receipt.as_json()["next_quote"] == following.digest().hex()
    # any change to the quote, or to the digest the receipt names, breaks the chain
    for change in ({"amount": 2_000}, {"prefix": "AAAAAAAA"}, {"expires_ms": NOW_MS + 10**9}):
        assert not receipt.signs_quote(dataclasses.replace(following, **change))
    assert not dataclasses.replace(receipt, next_quote=_quote(signed=False).digest()).verify()
    # a quote issued to another payer, even with the same fields otherwise, is not the one signed
    assert not receipt.signs_quote(dataclasses.replace(following, payer=PAYEE.public_key_hex))
    # a receipt without a next quote signs none, and keeps the signing bytes receipts always had
    plain = Receipt.issue(PAYEE, paid, txid=txid, amount=1_000, paid_ms=NOW_MS)
    assert not plain.signs_quote(following)
    assert "next_quote" not in plain.to_wire()
    assert cbor2.loads(plain.signing_bytes()) == cbor2.loads(receipt.signing_bytes())[:-1]
    with pytest.raises(BadRequest, match="next_quote"):
        Receipt.from_wire({**receipt.to_wire(), "next_quote": b"short"})


def test_a_receipt_may_be_signed_with_a_key_id_of_its_own() -> None:
    quote, txid = _quote(), "ab" * 32
    receipt = Receipt.issue(PAYEE, quote, txid=txid, amount=1_000, paid_ms=NOW_MS, key_id="stream:news")
    assert receipt.signing_key_id == "stream:news"
    assert receipt.to_wire()["key_id"] == "stream:news"
    again = Receipt.from_bytes(receipt.to_bytes())
    assert again == receipt
    assert again.verify()
    # the key id selects the signing key: another one (or none: the quote id) does not verify
    assert not dataclasses.replace(receipt, key_id="stream:other").verify()
    assert not dataclasses.replace(receipt, key_id="").verify()
    plain = Receipt.issue(PAYEE, quote, txid=txid, amount=1_000, paid_ms=NOW_MS)
    assert plain.signing_key_id == quote.quote_id
    assert "key_id" not in plain.to_wire()
    assert plain.verify()
    assert plain.sig != receipt.sig
    for bad in ("", "a\nb", 7, "x" * 513):
        with pytest.raises(BadRequest, match="key id"):
            Receipt.from_wire({**receipt.to_wire(), "key_id": bad})


def _batch(n: int, *, key_id: str = "stream:news") -> list[tuple[Quote, str, Receipt]]:
    """``n`` payments' quotes, txids and receipts signed with one batch signature."""
    items = [(_quote(), f"{i:02x}" * 32) for i in range(n)]
    receipts = [
        Receipt.issue(
            PAYEE,
            quote,
            txid=txid,
            amount=1_000,
            paid_ms=NOW_MS,
            next_quote=_quote(signed=False),
            key_id=key_id,
            signed=False,
        )
        for quote, txid in items
    ]
    Receipt.sign_batch(PAYEE, receipts)
    return [(quote, txid, receipt) for (quote, txid), receipt in zip(items, receipts, strict=True)]


def _salted_batch(n: int) -> list[Receipt]:
    """``n`` single payments' receipts (no next quote) signed together, as a payee's group commit signs them."""
    receipts = [
        Receipt.issue(
            PAYEE,
            _quote(),
            txid=f"{i:02x}" * 32,
            amount=1_000,
            paid_ms=NOW_MS,
            key_id="receipts",
            signed=False,
            salted=True,
        )
        for i in range(n)
    ]
    Receipt.sign_batch(PAYEE, receipts)
    return receipts


def test_a_salted_receipt_signs_its_salt_and_keeps_the_bytes_of_unsalted_ones() -> None:
    first, second = _salted_batch(2)
    assert len(first.salt) == 16
    assert first.salt != second.salt
    assert not first.next_quote
    for receipt in (first, second):
        assert receipt.verify()
        assert Receipt.from_bytes(receipt.to_bytes()).verify()
        assert receipt.as_json()["salt"] == receipt.salt.hex()
    # the body without its salt is not the one listed: a refused payment's body cannot be rebuilt from its fields
    assert not dataclasses.replace(first, salt=b"").verify()
    assert not dataclasses.replace(first, salt=second.salt).verify()
    # the fields signed: an unsalted receipt's as they always were; a salt follows the next quote's place (kept, empty)
    fields = cbor2.loads(first.body_bytes())
    assert fields[-2:] == [b"", first.salt]
    assert cbor2.loads(dataclasses.replace(first, salt=b"").body_bytes()) == fields[:-2]
    assert cbor2.loads(dataclasses.replace(first, next_quote=b"y" * 32).body_bytes())[-2:] == [b"y" * 32, first.salt]
    for bad in (b"x" * 15, b"x" * 17, "ab" * 8):
        with pytest.raises(BadRequest, match="salt"):
            Receipt.from_wire({**first.to_wire(), "salt": bad})


def test_receipts_of_a_batch_share_one_signature_and_each_verifies_on_its_own() -> None:
    batch = _batch(5)
    sigs = {receipt.sig for _, _, receipt in batch}
    assert len(sigs) == 1
    for quote, txid, receipt in batch:
        assert len(receipt.batch) == 5
        assert receipt.matches(quote, txid)
        # as a third party holds it: the stored bytes alone, checked without any memory of the batch
        stored = Receipt.from_bytes(receipt.to_bytes())
        assert stored == receipt
        assert verify_for_anyone(
            PAYEE.public_key_hex, RECEIPT_PROTOCOL, "stream:news", batch_signing_bytes(stored.batch), stored.sig
        )
        assert hashlib.sha256(stored.body_bytes()).digest() in stored.batch
        assert stored.verify()
        assert receipt.as_json()["batch"] == [d.hex() for d in receipt.batch]
    # a receipt alone signs its body; one of a batch signs the list (a different message: never interchangeable)
    single = Receipt.issue(PAYEE, batch[0][0], txid=batch[0][1], amount=1_000, paid_ms=NOW_MS, key_id="stream:news")
    assert single.signing_bytes() == single.body_bytes() != batch[0][2].signing_bytes()


def test_a_receipt_s_stored_bytes_are_its_canonical_cbor_whatever_fields_it_carries() -> None:
    # to_bytes writes the keys in canonical order itself instead of having cbor2 sort them: the same bytes
    quote = _quote()
    alone = Receipt.issue(PAYEE, quote, txid="ab" * 32, amount=1_000, paid_ms=NOW_MS)
    keyed = Receipt.issue(PAYEE, quote, txid="ab" * 32, amount=1_001, paid_ms=NOW_MS, next_quote=_quote(), key_id="k")
    salted = _salted_batch(2)
    for receipt in [alone, keyed, *(r for _, _, r in _batch(3)), *salted]:
        assert receipt.to_bytes() == cbor2.dumps(receipt.to_wire(), canonical=True)
        assert Receipt.from_bytes(receipt.to_bytes()) == receipt


def test_a_forged_or_mismatched_batch_receipt_fails() -> None:
    (quote, _, receipt), (_, other_txid, other) = _batch(2)
    # any change to the body: its digest is no longer in the signed list
    for change in ({"amount": 1_201}, {"txid": other_txid}, {"payer": PAYEE.public_key_hex}, {"paid_ms": 1}):
        assert not dataclasses.replace(receipt, **change).verify()
    # a receipt's body with another batch's list and signature (both genuine) does not verify
    (_, _, elsewhere), _ = _batch(2)
    assert not dataclasses.replace(receipt, batch=elsewhere.batch, sig=elsewhere.sig).verify()
    # a list with a digest added or swapped is not the one signed
    forged_digest = hashlib.sha256(dataclasses.replace(receipt, amount=9_999).body_bytes()).digest()
    assert not dataclasses.replace(receipt, amount=9_999, batch=(*receipt.batch, forged_digest)).verify()
    assert not dataclasses.replace(receipt, batch=(forged_digest, receipt.batch[1])).verify()
    # signed by someone else over the same list, or with another key id
    stranger = Identity.generate()
    foreign = sign_for_anyone(stranger, RECEIPT_PROTOCOL, "stream:news", batch_signing_bytes(receipt.batch))
    assert not dataclasses.replace(receipt, sig=foreign).verify()
    assert not dataclasses.replace(receipt, key_id="stream:other").verify()
    # the genuine receipt acknowledges its own payment, not its neighbour's
    assert receipt.verify()
    assert other.verify()
    assert not receipt.matches(quote, other_txid)
    assert not other.matches(quote, other_txid)
    # wire limits
    for bad in ([], [b"x" * 31], "ab", [b"x" * 32] * (MAX_RECEIPT_BATCH + 1)):
        with pytest.raises(BadRequest, match="batch"):
            Receipt.from_wire({**receipt.to_wire(), "batch": bad})


def test_a_batch_is_signed_only_as_the_payee_s_unsigned_receipts_with_next_quotes() -> None:
    quote = _quote()
    plain = Receipt.issue(PAYEE, quote, txid="ab" * 32, amount=1_000, paid_ms=NOW_MS, key_id="k", signed=False)
    with pytest.raises(ValueError, match="next quote or carries a salt"):
        Receipt.sign_batch(PAYEE, [plain])
    with pytest.raises(ValueError, match="1-16"):
        Receipt.sign_batch(PAYEE, [])
    with pytest.raises(ValueError, match="one payee"):
        Receipt.sign_batch(PAYER, [dataclasses.replace(plain, next_quote=b"x" * 32)])
    _, _, signed = _batch(1)[0]
    with pytest.raises(ValueError, match="one payee"):
        Receipt.sign_batch(PAYEE, [dataclasses.replace(signed, batch=())])


def test_payment_message_names_its_quote_by_id_for_a_payee_that_keeps_its_quotes() -> None:
    quote = _quote()
    message = PaymentMessage(
        quote=quote,
        derivation_prefix=quote.prefix,
        derivation_suffix="c3VmZml4",
        sender_identity_key=PAYER.public_key_hex,
        transaction=b"\x01" * 100,
    )
    wire = message.to_wire(quote_by_id=True)
    assert "quote" not in wire
    assert wire["quote_id"] == quote.quote_id
    kept = {quote.quote_id: quote}
    assert PaymentMessage.from_wire(wire, max_bytes=100, quotes=kept.get) == message
    with pytest.raises(InvalidPayment, match="not a quote of this node"):
        PaymentMessage.from_wire(wire, max_bytes=100, quotes=lambda _: None)
    with pytest.raises(BadRequest, match="quote must be a map"):
        PaymentMessage.from_wire(wire, max_bytes=100)  # a payee without quotes to look up needs the quote
    with pytest.raises(BadRequest, match="quote id"):
        PaymentMessage.from_wire({**wire, "quote_id": "zz"}, max_bytes=100, quotes=kept.get)
    # the quote itself still works with a payee that keeps quotes
    assert PaymentMessage.from_wire(message.to_wire(), max_bytes=100, quotes=lambda _: None) == message


def test_payment_message_limits() -> None:
    message = PaymentMessage(
        quote=_quote(),
        derivation_prefix=_quote().prefix,
        derivation_suffix="c3VmZml4",
        sender_identity_key=PAYER.public_key_hex,
        transaction=b"\x01" * 100,
    )
    assert PaymentMessage.from_wire(message.to_wire(), max_bytes=100) == message
    with pytest.raises(BadRequest, match="limit is 99"):
        PaymentMessage.from_wire(message.to_wire(), max_bytes=99)
    with pytest.raises(BadRequest, match="Atomic BEEF"):
        PaymentMessage.from_wire({**message.to_wire(), "transaction": "text"}, max_bytes=100)


def test_output_check() -> None:
    prefix, suffix = "cHJlZml4", "c3VmZml4"
    script = payer_locking_script(PAYER, PAYEE.public_key_hex, prefix, suffix)
    assert script == payee_locking_script(PAYEE, PAYER.public_key_hex, prefix, suffix)
    check_payment_output(script, 500, expected_script=script, price=500)
    with pytest.raises(InsufficientPayment, match="pays 499 satoshis, the quoted price is 500"):
        check_payment_output(script, 499, expected_script=script, price=500)
    other = payer_locking_script(PAYER, PAYEE.public_key_hex, prefix, "b3RoZXI=")
    with pytest.raises(InvalidPayment, match="does not pay the key derived"):
        check_payment_output(other, 10**6, expected_script=script, price=500)


# -- BEEF ----------------------------------------------------------------------------------------------------


def _coin(txid: str, vout: int, satoshis: int, owner: Identity, *, proven: bool = False) -> UtxoRecord:
    return UtxoRecord(
        txid=txid,
        vout=vout,
        satoshis=satoshis,
        script=p2pkh_for_key(owner.public_key),
        protocol="2-test wallet",
        key_id="k",
        counterparty="self",
        origin="test",
        proven=proven,
    )


def _root_key(_: UtxoRecord) -> bytes:
    return PAYER.private_bytes


def _chain() -> tuple[TxRecord, TxRecord, TxRecord, dict[int, str | None]]:
    """A proven funding transaction (in block 7 next to another one), an unproven child, and a payment."""
    seed = _coin("11" * 32, 0, 10_000, PAYER)
    funding = build_transaction([seed], [(seed.script, 9_999)], _root_key, fee=1)
    paths = block_merkle_paths([funding.txid, "22" * 32], 7)
    root = merkle_root([funding.txid, "22" * 32])
    f_rec = TxRecord(txid=funding.txid, raw=funding.raw, parents=(seed.txid,), merkle_path=paths[0], block_height=7)
    mid = build_transaction([_coin(funding.txid, 0, 9_999, PAYER)], [(seed.script, 9_998)], _root_key, fee=1)
    m_rec = TxRecord(txid=mid.txid, raw=mid.raw, parents=(funding.txid,))
    out = payer_locking_script(PAYER, PAYEE.public_key_hex, "cHJlZml4", "c3VmZml4")
    pay = build_transaction([_coin(mid.txid, 0, 9_998, PAYER)], [(out, 1_000), (seed.script, 8_997)], _root_key, fee=1)
    p_rec = TxRecord(txid=pay.txid, raw=pay.raw, parents=(mid.txid,))
    return f_rec, m_rec, p_rec, {7: root}


def test_beef_entries_stop_at_proven_and_known_transactions() -> None:
    f, m, p, _ = _chain()
    txs = {t.txid: t for t in (f, m, p)}
    assert beef_entries(p.txid, txs) == [
        BeefEntry(f.txid, f.raw, f.merkle_path),
        BeefEntry(m.txid, m.raw),
        BeefEntry(p.txid, p.raw),
    ]
    assert beef_entries(p.txid, txs, known={m.txid}) == [BeefEntry(m.txid), BeefEntry(p.txid, p.raw)]
    with pytest.raises(PaymentError, match=f"ancestor {m.txid} is not in the wallet"):
        beef_entries(p.txid, {p.txid: p})


def test_atomic_beef_v2_round_trips_through_the_parser() -> None:
    f, m, p, _ = _chain()
    data = atomic_beef(p.txid, beef_entries(p.txid, {t.txid: t for t in (f, m, p)}, known={f.txid}))
    parsed = parse_payment_beef(data, max_txs=10)
    assert [t.txid for t in parsed.txs] == [m.txid, p.txid]
    assert parsed.txid_only == {f.txid}
    with pytest.raises(InvalidPayment, match="more than 2"):
        parse_payment_beef(data, max_txs=2)
    with pytest.raises(InvalidPayment, match="Atomic BEEF"):
        parse_payment_beef(encode_beef_v2([BeefEntry(p.txid, p.raw)]), max_txs=10)
    with pytest.raises(InvalidPayment, match="malformed"):
        parse_payment_beef(data[:-3], max_txs=10)
    assert parse_submission(data).subject.txid == txid_of(p.raw)


def test_payment_beef_checks() -> None:
    f, m, p, roots = _chain()
    txs = {t.txid: t for t in (f, m, p)}
    full = parse_payment_beef(atomic_beef(p.txid, beef_entries(p.txid, txs)), max_txs=10)
    policy = Policy()
    checked = check_payment_beef(full, roots=roots, held={}, policy=policy)
    assert checked.txid == p.txid
    assert checked.output_satoshis == 1_000
    assert checked.fee == 1
    assert checked.spends == ((m.txid, 0),)
    assert [t.txid for t in checked.txs] == [f.txid, m.txid, p.txid]
    assert checked.txs[0].block_height == 7
    # a merkle path the chain does not know
    with pytest.raises(InvalidPayment, match="does not match block 7"):
        check_payment_beef(full, roots={7: "00" * 32}, held={}, policy=policy)
    # a fee policy the payment does not meet
    with pytest.raises(InvalidPayment, match="fee 1 is below"):
        check_payment_beef(full, roots=roots, held={}, policy=Policy(mining_fee_satoshis=50))
    # a txid-only entry: fine when we hold that transaction, refused when we do not
    short = parse_payment_beef(atomic_beef(p.txid, beef_entries(p.txid, txs, known={m.txid})), max_txs=10)
    with pytest.raises(InvalidPayment, match="by txid only, and this node does not hold it"):
        check_payment_beef(short, roots=roots, held={}, policy=policy)
    held = {m.txid: [SourceOutput(satoshis=9_998, locking_script=p2pkh_for_key(PAYER.public_key))]}
    assert check_payment_beef(short, roots=roots, held=held, policy=policy).txid == p.txid
    # an ancestor missing altogether
    gap = parse_payment_beef(atomic_beef(p.txid, [BeefEntry(p.txid, p.raw)]), max_txs=10)
    with pytest.raises(InvalidPayment, match="spends unknown output"):
        check_payment_beef(gap, roots=roots, held={}, policy=policy)


# -- coins and fees ------------------------------------------------------------------------------------------


def test_fee_estimate_covers_the_real_size() -> None:
    coins = [_coin(f"{i:02x}" * 32, 0, 5_000, PAYER) for i in range(3)]
    lens = [25, 25]
    built = build_transaction(coins, [(coins[0].script, 10_000), (coins[0].script, 4_000)], _root_key, fee=1_000)
    assert len(built.raw) <= estimate_size(3, lens)
    assert required_fee(1000, 1) == 1
    assert required_fee(1001, 1) == 2
    assert required_fee(250, 0) == 0
    with pytest.raises(ValueError, match="do not balance"):
        build_transaction(coins, [(coins[0].script, 1)], _root_key, fee=0)


def test_coin_selection() -> None:
    small, mid = _coin("aa" * 32, 0, 1_000, PAYER), _coin("bb" * 32, 0, 5_000, PAYER)
    big = _coin("cc" * 32, 0, 9_000, PAYER, proven=True)
    # a proven coin first, then the smallest that covers it
    picked, fee, change = select_coins([small, mid, big], 800, [25], 1)
    assert picked == [big]
    assert fee == 1
    assert change == 9_000 - 800 - 1
    picked, _, _ = select_coins([small, mid], 800, [25], 1)
    assert picked == [small]
    # no single coin is enough: the largest ones together
    picked, fee, change = select_coins([small, mid, big], 13_000, [25], 1)
    assert picked == [big, mid]
    assert fee == 1
    assert change == 999
    picked, fee, change = select_coins([small, mid, big], 14_000, [25], 1)
    assert picked == [big, mid, small]
    assert sum(c.satoshis for c in picked) == 14_000 + fee + change
    # an exact coin needs no change
    picked, fee, change = select_coins([small], 999, [25], 1)
    assert picked == [small]
    assert fee == 1
    assert change == 0
    with pytest.raises(InsufficientFunds, match="has 6000 spendable satoshis, 7001 are needed"):
        select_coins([small, mid], 7_000, [25], 1)


# -- settlement: ARC's answers -> job states -----------------------------------------------------------------

CFG = WalletSection(settle_retry_min=1.0, settle_retry_max=60.0, settle_poll_interval=5.0)
TXID = "ab" * 32
NOW = 1_000.0


def _job(
    state: str = "pending", kind: str = "submit", attempts: int = 0, deadline: float | None = None
) -> SettlementJob:
    return SettlementJob(
        id=1,
        txid=TXID,
        beef=b"x",
        kind=kind,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        attempts=attempts,
        next_at=0.0,
        deadline=deadline,
        arc_status=None,
        detail="",
        created_at=0.0,
    )


def _arc(status: str, **extra: Any) -> ArcResult:
    return interpret(200, {"txid": TXID, "txStatus": status, "extraInfo": "", **extra}, txid=TXID)


def test_mined_stores_the_merkle_path() -> None:
    paths = block_merkle_paths([TXID, "cd" * 32], 12)
    result = _arc("MINED", merklePath=paths[0].hex(), blockHeight=12, blockHash="ef" * 32)  # type: ignore[union-attr]
    assert result.outcome is ArcOutcome.MINED
    update = decide(_job("seen"), result, now=NOW, config=CFG)
    assert update.state == "mined"
    assert update.merkle_path == paths[0]
    assert update.block_height == 12


def test_seen_settles_and_polls_again_later() -> None:
    update = decide(_job(), _arc("SEEN_ON_NETWORK"), now=NOW, config=CFG)
    assert update.state == "seen"
    assert update.next_at == NOW + 5.0
    assert update.attempts == 0


@pytest.mark.parametrize("status", ["SEEN_IN_ORPHAN_MEMPOOL", "QUEUED", "STORED", "ACCEPTED_BY_NETWORK"])
def test_progressing_is_kept_and_polled(status: str) -> None:
    assert decide(_job(), _arc(status), now=NOW, config=CFG).state == "progressing"
    # a transaction the network has seen does not fall back
    assert decide(_job("seen"), _arc(status), now=NOW, config=CFG).state == "seen"


def test_double_spend_with_http_200_fails_and_loses_the_inputs() -> None:
    update = decide(_job(), _arc("DOUBLE_SPEND_ATTEMPTED", competingTxs=["cd" * 32]), now=NOW, config=CFG)
    assert update.state == "failed"
    assert update.double_spend
    assert update.arc_status == "DOUBLE_SPEND_ATTEMPTED"


def test_rejected_and_refusals_fail() -> None:
    rejected = decide(_job(), _arc("REJECTED", extraInfo="script failed"), now=NOW, config=CFG)
    assert rejected.state == "failed"
    assert not rejected.double_spend
    assert "script failed" in rejected.detail
    refusal = interpret(465, {"status": 465, "title": "Fee too low", "extraInfo": "fee 0"}, txid=TXID)
    assert decide(_job(), refusal, now=NOW, config=CFG).state == "failed"


def test_retry_backs_off_exponentially_up_to_the_ceiling() -> None:
    job = _job()
    waits = []
    for _ in range(9):
        update = decide(job, transport_failure(OSError("refused"), txid=TXID), now=NOW, config=CFG)
        assert update.state == "pending"
        waits.append(update.next_at - NOW)
        job = dataclasses.replace(job, attempts=update.attempts)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    for status in (500, 503, 429, 409):
        assert decide(_job("seen"), interpret(status, None, txid=TXID), now=NOW, config=CFG).state == "seen"
    assert backoff(0, low=1, high=5) == 0
    assert backoff(100, low=1, high=5) == 5


def test_not_found_resubmits_or_abandons_a_watch() -> None:
    missing = interpret(404, {"status": 404}, txid=TXID, query=True)
    assert missing.outcome is ArcOutcome.NOT_FOUND
    again = decide(_job("seen"), missing, now=NOW, config=CFG)
    assert again.state == "pending"
    assert again.next_at == NOW
    watched = decide(_job("pending", kind="watch", deadline=NOW + 100), missing, now=NOW, config=CFG)
    assert watched.state == "pending"
    assert watched.next_at >= NOW + 5.0
    abandoned = decide(_job("pending", kind="watch", deadline=NOW), missing, now=NOW, config=CFG)
    assert abandoned.state == "abandoned"
    # a watched transaction ARC does know settles like any other
    assert decide(_job("pending", kind="watch"), _arc("SEEN_ON_NETWORK"), now=NOW, config=CFG).state == "seen"


# -- the P2PKH fast path only accepts what the interpreter accepts -------------------------------------------


def _signed(n_inputs: int = 2) -> tuple[bytes, dict[tuple[str, int], SourceOutput]]:
    coins = [_coin(f"{i + 1:02x}" * 32, i, 4_000, PAYER) for i in range(n_inputs)]
    out = payer_locking_script(PAYER, PAYEE.public_key_hex, "cHJlZml4", "c3VmZml4")
    built = build_transaction(coins, [(out, 1_000), (coins[0].script, 4_000 * n_inputs - 1_001)], _root_key, fee=1)
    sources = {c.outpoint: SourceOutput(satoshis=c.satoshis, locking_script=c.script) for c in coins}
    return built.raw, sources


def _interpreter_fee(raw: bytes, sources: dict[tuple[str, int], SourceOutput]) -> int | None:
    from overlay_node.chain.formats import parse_transaction
    from overlay_node.chain.refusals import Refusal
    from overlay_node.chain.validation import check_by_interpreter

    try:
        return check_by_interpreter(parse_transaction(raw), sources, Policy()).fee
    except Refusal:
        return None


def test_fast_path_agrees_with_the_interpreter_on_a_valid_payment() -> None:
    raw, sources = _signed()
    assert fast_check(raw, sources, Policy()) == _interpreter_fee(raw, sources) == 1


def test_fast_path_declines_what_it_does_not_check() -> None:
    raw, sources = _signed(1)
    policy = Policy()
    high_fee = Policy(mining_fee_satoshis=10_000)
    assert fast_check(raw, sources, high_fee) is None
    assert fast_check(raw, {}, policy) is None  # unknown source
    other_script = {op: SourceOutput(satoshis=s.satoshis, locking_script=b"\x51") for op, s in sources.items()}
    assert fast_check(raw, other_script, policy) is None  # not P2PKH: the interpreter decides
    poorer = {op: SourceOutput(satoshis=100, locking_script=s.locking_script) for op, s in sources.items()}
    assert fast_check(raw, poorer, policy) is None  # outputs above inputs
    assert fast_check(raw[:-1], sources, policy) is None  # truncated


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0, max_value=10_000), flip=st.integers(min_value=1, max_value=255))
def test_fast_path_never_accepts_a_mutated_transaction_the_interpreter_refuses(position: int, flip: int) -> None:
    raw, sources = _signed(1)
    mutated = bytearray(raw)
    mutated[position % len(raw)] ^= flip
    fast = fast_check(bytes(mutated), sources, Policy())
    if fast is not None:
        assert fast == _interpreter_fee(bytes(mutated), sources)


def test_high_s_signatures_go_to_the_interpreter() -> None:
    raw, sources = _signed(1)
    tx = bytearray(raw)
    sig_len = tx[42]  # version 4 + count 1 + outpoint 36 + script length 1 -> push length of the signature
    der = bytes(tx[43 : 43 + sig_len - 1])
    r_len = der[3]
    s_value = int.from_bytes(der[6 + r_len :], "big")
    high = (SECP256K1_N - s_value).to_bytes(33, "big").lstrip(b"\x00")
    if high[0] & 0x80:
        high = b"\x00" + high
    new_der = der[: 5 + r_len] + bytes([len(high)]) + high
    new_der = b"\x30" + bytes([len(new_der) - 2]) + new_der[2:]
    unlock = bytes([len(new_der) + 1]) + new_der + b"\x41" + bytes(tx[43 + sig_len :][:34])
    script_len_at = 41
    rebuilt = bytes(tx[:script_len_at]) + bytes([len(unlock)]) + unlock + bytes(tx[43 + sig_len + 34 :])
    assert fast_check(rebuilt, sources, Policy()) is None
    assert _interpreter_fee(rebuilt, sources) is None  # bsv-sdk requires low S too


def test_coin_set_keeps_running_totals() -> None:
    coins = CoinSet()
    a, b = _coin("aa" * 32, 0, 100, PAYER, proven=True), _coin("bb" * 32, 1, 50, PAYER)
    coins.add(a)
    coins.add(b)
    assert coins.totals() == (100, 50, 0)
    assert len(coins) == 2
    coins.reserve([a])
    assert coins.totals() == (0, 50, 100)
    assert coins.free() == [b]
    coins.mark_proven(b.txid)
    assert coins.totals() == (50, 0, 100)
    coins.release([a.outpoint])
    assert coins.totals() == (150, 0, 0)
    coins.reserve([b])
    assert coins.remove(b.outpoint) == dataclasses.replace(b, proven=True)
    assert coins.totals() == (100, 0, 0)
    assert b.outpoint not in coins
    assert coins.remove(b.outpoint) is None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "reserve", "release", "prove", "select"]),
            st.integers(0, 11),  # which coin (4 txids x 3 outputs)
            st.integers(1, 5_000),  # satoshis (add) or amount (select)
            st.booleans(),  # proven (add)
        ),
        max_size=60,
    )
)
def test_coin_set_agrees_with_a_plain_model(ops: list[tuple[str, int, int, bool]]) -> None:
    """free(), totals() and the coin select_coins picks, against dicts and a sort (what they replaced)."""
    coins = CoinSet()
    model: dict[tuple[str, int], UtxoRecord] = {}
    reserved: set[tuple[str, int]] = set()
    for op, which, number, proven in ops:
        txid, vout = f"{which // 3:02x}" * 32, which % 3
        if op == "add":
            coin = _coin(txid, vout, number, PAYER, proven=proven)
            coins.add(coin)
            model[coin.outpoint] = coin
        elif op == "remove":
            coins.remove((txid, vout))
            model.pop((txid, vout), None)
            reserved.discard((txid, vout))
        elif op == "reserve" and (txid, vout) in model:
            coins.reserve([model[(txid, vout)]])
            reserved.add((txid, vout))
        elif op == "release":
            coins.release([(txid, vout)])
            reserved.discard((txid, vout))
        elif op == "prove":
            coins.mark_proven(txid)
            for o, c in list(model.items()):
                if o[0] == txid:
                    model[o] = dataclasses.replace(c, proven=True)
        elif op == "select":
            free = [c for o, c in model.items() if o not in reserved]
            ordered = sorted(free, key=lambda c: (not c.proven, c.satoshis))
            want = next((c for c in ordered if c.satoshis >= number + 1), None)  # fee 1 at rate 1
            try:
                picked, _, _ = select_coins(coins.free(), number, [25], 1)
            except InsufficientFunds:
                picked = []
            if want is not None:
                assert picked[0].satoshis == want.satoshis
                assert picked[0].proven == want.proven
        unreserved = {o: c for o, c in model.items() if o not in reserved}
        assert sorted(coins.free(), key=lambda c: c.outpoint) == sorted(unreserved.values(), key=lambda c: c.outpoint)
        confirmed = sum(c.satoshis for c in unreserved.values() if c.proven)
        unconfirmed = sum(c.satoshis for c in unreserved.values() if not c.proven)
        held = sum(c.satoshis for o, c in model.items() if o in reserved)
        assert coins.totals() == (confirmed, unconfirmed, held)
        assert len(coins) == len(model)


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=40), st.booleans())
def test_own_child_key_is_the_public_derivation_of_the_same_key(key_id: str, with_self: bool) -> None:
    """The wallet makes its change keys from the private side (and remembers them for signing): the same key
    the public side derives, and the one the counterparty derives for us."""
    counterparty = PAYER.public_key if with_self else PAYEE.public_key
    invoice = f"2-wallet change-{key_id}"
    secret, public = own_child_key(PAYER, counterparty, invoice)
    assert secret == child_secret(PAYER, counterparty, invoice)
    assert public == own_child_public(PAYER, counterparty, invoice)
    if not with_self:
        assert public == their_child_public(PAYEE, PAYER.public_key, invoice)


def test_resources_are_printable_text_of_bounded_length() -> None:
    assert check_resource("stream:w1 é") == "stream:w1 é"
    assert check_resource("x" * 512) == "x" * 512
    for bad in ("", "x" * 513, "a\x00b", "tab\there", "del\x7f", b"bytes", None):
        with pytest.raises(BadRequest):
            check_resource(bad)
