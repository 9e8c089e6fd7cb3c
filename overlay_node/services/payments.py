"""Payments over peer links: quotes, BRC-29 payments and signed receipts (docs/design.md, Payments), the engine
paid content and paid streams use.

Peer methods (request/response over an authenticated link; the peer's identity is the link's key):

- ``pay.quote`` ``{resource, amount?}`` -> ``{quote}``: the payee prices the resource (a registered pricer,
  else the amount asked) and signs a quote with a fresh derivation prefix, bound to the asking peer.
- ``pay.submit`` ``{quote, derivation_prefix, derivation_suffix, sender_identity_key, transaction}`` ->
  ``{receipt}``: the payee checks the payment (:meth:`Payments.accept_payment`), commits it durably with its
  settlement job and its signed receipt, and only then returns the receipt. With ``next: {resource, amount?}``
  (what the payer pays for next) the answer also holds ``next_quote``, the quote ``pay.quote`` would have issued
  for it (left out when it cannot be issued): a payer paying one payee again and again saves a round trip each.
  That quote is issued before the receipt is signed, and the receipt names its digest (``protocol/payments.py``,
  invariant 5): the payer checks it by that digest, one signature check less per payment. The quote keeps its own
  signature (an older payer checks that, and this node vouches for it by it after a restart).
- ``pay.receipt`` ``{quote_id}`` -> ``{receipt}``: a receipt already issued to the asking peer (for a payer
  whose link broke before the answer came). A payment of that quote still being checked is waited for; when
  there is none, the answer is ``not_found`` and the quote becomes void (a late copy of the payment is refused),
  so the payer may safely take its coins back.

In-process API: :meth:`Payments.request_quote`, :meth:`Payments.pay` (payer), :meth:`Payments.issue_quote`,
:meth:`Payments.accept_payment` and :meth:`Payments.accept_payments` (payee), :meth:`Payments.register_pricer`.

BRC-105 over HTTP (``protocol/http_payment.py``) uses the same engine: :meth:`Payments.http_prefix` issues the
derivation prefix of a 402, :meth:`Payments.accept_http_payment` turns the retry's ``x-bsv-payment`` into a quote
for the request (its id derived from the prefix, so a prefix pays once) and checks and records it through
:meth:`Payments.accept_payment`; :meth:`Payments.pay_over_http` pays a 402 from the wallet, written ahead like
:meth:`Payments.send_payment`.

Hot path (a paid stream may pay every packet): quotes issued are kept in memory (an LRU) and checked by
identity, so a payment costs one parse of its BEEF, one script check per unproven transaction (the P2PKH fast
path of ``wallet_beef``, else bsv-sdk's interpreter), one key derivation, and a share of a signature and of a group
commit: accepted payments waiting to be recorded are written together in one durable transaction
(``wallet.record_batch`` at most), so many payments share one fsync, and the receipts of the single payments in it
(``pay.submit``, HTTP 402, whoever their payers) share one signature per :data:`MAX_RECEIPT_BATCH`, made just before
the commit (``protocol/payments.py``, invariant 6: each carries a salt, or the next quote's digest, so the receipt
of a payment the database refuses cannot be shown; all signed with the BRC-3 key id :data:`RECEIPTS_KEY_ID`);
a stream's batch of payments is checked in order, its receipts signed together, and waits for the group commit
once (:meth:`Payments.accept_payments`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar

import trio

from overlay_node.chain.formats import SourceOutput
from overlay_node.chain.spv import claims
from overlay_node.clock import wall_time
from overlay_node.config import WalletSection
from overlay_node.crypto.brc29 import new_nonce, payee_locking_script, payer_locking_script
from overlay_node.crypto.brc42 import checked_key_hex, derive_symmetric_key
from overlay_node.crypto.keys import Identity, public_key_hex
from overlay_node.errors import (
    BadRequest,
    ConnectionLost,
    DialError,
    InvalidPayment,
    NotFound,
    OverlayError,
    PaymentError,
    PaymentReplayed,
    PeerTimeout,
    QuoteExpired,
    RemoteProtocolError,
    TransportError,
)
from overlay_node.lru import LruMap
from overlay_node.metrics import Metrics, instrument
from overlay_node.net.peers import PeerLink, PeerManager
from overlay_node.protocol.http_auth import create_nonce
from overlay_node.protocol.http_payment import (
    H_PAID,
    PaymentRequest,
    check_prefix,
    issue_prefix,
    parse_payment_header,
    payment_header,
    payment_quote_id,
)
from overlay_node.protocol.payments import (
    QUOTE_PROTOCOL,
    PaymentMessage,
    Quote,
    Receipt,
    check_amount,
    check_next,
    check_payment_output,
    check_resource,
    next_by_mac,
    next_field,
    next_request,
)
from overlay_node.services.group_commit import GroupCommit
from overlay_node.services.wallet import PreparedTx, Wallet
from overlay_node.services.wallet_beef import CheckedPayment, check_payment_beef, parse_payment_beef
from overlay_node.store.db import Store
from overlay_node.store.payments import IncomingRecord, RecordOutcome
from overlay_node.store.records import NewJob, UtxoRecord
from overlay_node.store.wallet import HistoryRecord

__all__ = ["RECEIPTS_KEY_ID", "HttpAnswer", "Payments", "Pricer"]

logger = logging.getLogger(__name__)

#: the BRC-3 key id of the receipts of single payments (one derived key for all, so that a batch shares a signature
#: and a payer derives the payee's receipt key once)
RECEIPTS_KEY_ID: Final = "receipts"

#: ``await pricer(resource, payer, amount_asked)`` -> the price in satoshis (raise an OverlayError to refuse)
Pricer = Callable[[str, str, int | None], Awaitable[int]]


class HttpAnswer(Protocol):
    """What :meth:`Payments.pay_over_http` needs of the answer to a paid HTTP request (headers: lower-case)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def body(self) -> bytes: ...


_A = TypeVar("_A", bound=HttpAnswer)


@dataclass(slots=True)
class _Issued:
    quote: Quote
    state: Literal["open", "inflight", "used", "void"] = "open"
    # made by a pay.receipt that waits for a payment being checked, set (and dropped) when it is accepted or refused:
    # a payment nobody asks about costs no event (a paid stream's payee keeps an entry per quote)
    checked: trio.Event | None = None


@dataclass(slots=True)
class _Checked:
    """A payment that passed every check but the database's: its receipt (unsigned while it waits for its batch's
    signature), the outputs it adds, and what its record is made of once the receipt is signed (:meth:`seal`).
    (Fields, not a closure over :meth:`Payments._verify`'s locals: a closure's cells were a dozen more objects per
    payment for the garbage collector.)"""

    receipt: Receipt
    message: PaymentMessage
    payer: str
    payment: CheckedPayment
    coin: UtxoRecord
    accepted_at: float
    outputs: list[SourceOutput]

    @property
    def prefix(self) -> str:
        return self.message.quote.prefix

    def seal(self) -> IncomingRecord:
        """The record to write, with the signed receipt's stored bytes."""
        quote, payment, now = self.message.quote, self.payment, self.accepted_at
        record = IncomingRecord(
            quote_id=quote.quote_id,
            prefix=quote.prefix,
            suffix=self.message.derivation_suffix,
            payer=self.payer,
            resource=quote.resource,
            price=quote.amount,
            amount=payment.output_satoshis,
            txid=payment.txid,
            receipt=self.receipt.to_bytes(),
            accepted_at=now,
            spends=payment.spends,
            txs=payment.txs,
            utxo=self.coin,
            # the receipt is kept once, in the payment's row (a stream's is about 1 KB: half the bytes written)
            history=HistoryRecord(
                txid=payment.txid,
                direction="in",
                kind="payment",
                amount=payment.output_satoshis,
                counterparty=self.payer,
                quote_id=quote.quote_id,
                resource=quote.resource,
            ),
            job=NewJob(txid=payment.txid, beef=self.message.transaction, next_at=now),
        )
        return record


def _refusal(checked: _Checked, outcome: RecordOutcome | None) -> OverlayError | None:
    """The error for a payment the database refused to record (None: recorded)."""
    assert outcome is not None
    if outcome.result == "replayed":
        quote_id, prefix = checked.receipt.quote_id, checked.prefix
        return PaymentReplayed(f"quote {quote_id} (prefix {prefix}) was already paid")
    if outcome.result == "double_spend":
        assert outcome.conflict is not None
        txid, vout = outcome.conflict
        return InvalidPayment(f"double spend: output {txid}:{vout} was already spent by payment {outcome.other_txid}")
    return None


class Payments:
    """Quotes, payments and receipts over peer links. Start it with ``await nursery.start(payments.run)``.

    The peer handlers are registered at construction, so a payee answers as soon as its peer manager runs;
    recording accepted payments needs :meth:`run` (the group-commit task).

    Args:
        identity: the node's key (payee of its quotes, signer of its receipts, payer of its payments).
        config: the ``[wallet]`` section.
        store: the node's store.
        metrics: the node's metrics.
        peers: the peer manager (links to payers and payees).
        wallet: the running wallet.
    """

    def __init__(
        self,
        identity: Identity,
        config: WalletSection,
        store: Store,
        metrics: Metrics,
        peers: PeerManager,
        wallet: Wallet,
        *,
        wall_clock: Callable[[], float] = wall_time,
    ) -> None:
        self._identity = identity
        self._wall = wall_clock
        self._me = identity.public_key_hex
        self._config = config
        self._store = store
        self._peers = peers
        self._wallet = wallet
        self._issued: LruMap[str, _Issued] = LruMap(config.max_quotes)  # by quote id
        self._received: LruMap[str, Quote] = LruMap(config.max_quotes)  # by quote id (quotes we were given)
        # (payee, resource, amount asked) -> a quote answered along with a receipt (pay(then=...)), not handed out yet
        self._next_quotes: LruMap[tuple[str, str, int | None], Quote] = LruMap(config.max_quotes)
        # quote id -> True: asked for by pay.receipt, never paid
        self._voided: LruMap[str, bool] = LruMap(config.max_quotes)
        self._pricers: dict[str, Pricer] = {}
        # the key of the MAC a next quote carries in place of a signature (protocol/payments.py, invariant 5): derived
        # from the identity, so that a quote issued before a restart still checks out
        self._quote_mac = derive_symmetric_key(identity, QUOTE_PROTOCOL, "next quote mac", "self")
        # batched by its own task (not by the store's writer thread, as the payer's write-ahead is): a busy payee's
        # event loop turn lets many payments gather, and each commit has a fixed cost (its statements are GIL
        # hand-offs with the loop); batched in the writer thread, the batches of 32 payers at once were a quarter
        # of the size and the payee's payments per core a quarter lower
        self._records = GroupCommit[_Checked, RecordOutcome](
            self._write_records, on_written=self._recorded, max_batch=config.record_batch
        )
        counter = _counter(metrics)
        self._accepted, self._refused = counter.labels("in", "accepted"), counter.labels("in", "refused")
        self._paid, self._unanswered = counter.labels("out", "paid"), counter.labels("out", "unanswered")
        self._declined = counter.labels("out", "refused")
        peers.on_request("pay.quote", self._serve_quote)
        peers.on_request("pay.submit", self._serve_submit)
        peers.on_request("pay.receipt", self._serve_receipt)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the group-commit task until cancelled."""
        await self._records.run(task_status=task_status)

    def _now_ms(self) -> int:
        return int(self._wall() * 1000)

    # -- pricing and quotes (payee) --------------------------------------------------------------------------

    def register_pricer(self, prefix: str, pricer: Pricer) -> None:
        """Price resources whose id starts with ``prefix`` (the longest matching prefix wins). Resources no
        pricer matches are sold at the amount the payer asks for (explicit payments)."""
        self._pricers[prefix] = pricer

    async def price(self, resource: str, payer: str, amount: int | None) -> int:
        """The price of ``resource`` for ``payer`` (asked ``amount``).

        Raises:
            BadRequest: no pricer takes the resource and no amount was given, or a bad price.
        """
        match = max((p for p in self._pricers if resource.startswith(p)), key=len, default=None)
        if match is None:
            if amount is None:
                raise BadRequest(f"resource {resource!r} has no price here: give the amount to pay")
            return check_amount(amount)
        return check_amount(await self._pricers[match](resource, payer, amount), "price")

    def issue_quote(self, payer: str, resource: str, amount: int, *, signed: bool = True, mac: bool = False) -> Quote:
        """Issue (sign and remember) a quote for ``payer`` to pay ``amount`` for ``resource``. ``signed=False``:
        unsigned, for the receipt of the payment before it to sign (pass it as that payment's ``next_quote``);
        ``mac``: with this node's MAC instead of its signature, for that receipt to sign too.

        Raises:
            BadRequest: a malformed payer key, resource or amount.
        """
        now_ms = self._now_ms()
        quote = Quote.issue(
            self._identity,
            payer=payer,
            resource=resource,
            amount=amount,
            now_ms=now_ms,
            ttl_ms=int(self._config.quote_ttl * 1000),
            signed=signed,
            mac_key=self._quote_mac if mac else None,
        )
        self._issued.put(quote.quote_id, _Issued(quote))
        return quote

    def issued(self, quote_id: str) -> Quote | None:
        """A quote this node issued and still remembers (open or not)."""
        entry: _Issued | None = self._issued.get(quote_id)
        return entry.quote if entry is not None else None

    async def _serve_quote(self, link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        resource = check_resource(body.get("resource"))
        asked = body.get("amount")
        amount = None if asked is None else check_amount(asked)
        return {"quote": (await self._quote_for(link.peer_key, resource, amount)).to_wire()}

    async def _quote_for(self, payer: str, resource: str, amount: int | None, *, mac: bool = False) -> Quote:
        """A signed quote for ``payer`` (``pay.quote``, and the next quote a ``pay.submit`` asks for; ``mac``: one
        MAC'd instead, for the receipt to sign)."""
        price = await self.price(resource, payer, amount)
        quote = self.issue_quote(payer, resource, price, mac=mac)
        logger.debug("quote %s to %s: %d satoshis for %s", quote.quote_id, payer[:16], price, resource)
        return quote

    # -- accepting payments (payee) --------------------------------------------------------------------------

    async def _serve_submit(self, link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        then = next_request(body)  # checked before the payment: a malformed one changes nothing
        message = PaymentMessage.from_wire(body, max_bytes=self._config.max_payment_bytes)
        ahead: Quote | None = None
        if then is not None:
            # the quote of the payer's next payment, issued as pay.quote issues it, saves it that round trip; one
            # that cannot be issued is left out (the payment stands), and pay.quote then says why. Issued first, so
            # that the receipt names it too (a refused payment leaves it open, as an unused pay.quote's)
            try:
                ahead = await self._quote_for(link.peer_key, *then, mac=next_by_mac(body))
            except OverlayError as exc:
                logger.debug("no next quote for %s: %s", link.peer_key[:16], exc)
        receipt = await self.accept_payment(link.peer_key, message, next_quote=ahead)
        answer: dict[str, Any] = {"receipt": receipt.to_wire()}
        if ahead is not None:
            answer["next_quote"] = ahead.to_wire()
        return answer

    async def _serve_receipt(self, link: PeerLink, body: dict[str, Any]) -> dict[str, Any]:
        quote_id = body.get("quote_id")
        if not isinstance(quote_id, str) or len(quote_id) > 64:
            raise BadRequest("'quote_id' must be a quote id")
        entry: _Issued | None = self._issued.get(quote_id)
        if entry is not None and entry.state == "inflight":
            if entry.checked is None:
                entry.checked = trio.Event()
            await entry.checked.wait()  # a payment of it is being checked: its outcome decides the answer
        payment = await self._store.payments.get(quote_id)
        if payment is None or payment.payer != link.peer_key:
            # the payer asks because it never got an answer: from now on the quote cannot be paid, so "not
            # found" is final and the payer may take its coins back
            self._voided.put(quote_id, True)
            if entry is not None and entry.state == "open":
                entry.state = "void"
            raise NotFound(f"no payment of quote {quote_id} by this peer (the quote is void now)")
        return {"receipt": Receipt.from_bytes(payment.receipt).to_wire(), "status": payment.status}

    async def accept_payment(self, payer: str, message: PaymentMessage, *, next_quote: Quote | None = None) -> Receipt:
        """Check a payment from ``payer`` (an authenticated identity key), record it durably with its
        settlement job, and return the signed receipt (which signs ``next_quote`` too when given).

        Checks, in order: the quote is ours, issued to ``payer``, unexpired and unused, and the message uses
        its prefix; the Atomic BEEF parses; every merkle path matches the chain; every unproven transaction
        is valid (inputs resolved in the BEEF or from transactions we hold, scripts, amounts, fee); output 0
        pays our key derived for the prefix, suffix and payer at least the price; no input was already spent
        by a payment we accepted.

        Raises:
            InvalidPayment, InsufficientPayment, PaymentReplayed, QuoteExpired: the payment is refused;
                nothing was recorded and the quote stays open (except for a replay).
            StoreError: the database failed (nothing recorded).
        """
        (outcome,) = await self.accept_payments(payer, [(message, next_quote)])
        if isinstance(outcome, OverlayError):
            raise outcome
        return outcome

    async def accept_payments(
        self,
        payer: str,
        items: Sequence[tuple[PaymentMessage, Quote | None]],
        *,
        key_id: str = "",
        batched: bool = False,
        before_commit: Callable[[], Awaitable[OverlayError | None]] | None = None,
    ) -> list[Receipt | OverlayError]:
        """:meth:`accept_payment` for several payments of ``payer`` (each with its ``next_quote``): checked in
        order, the accepted ones recorded together (one wait for the group commit, not one per payment). One
        outcome each: the receipt, or the error that refused that payment. ``key_id``: the BRC-3 key id the
        receipts are signed with (default: :data:`RECEIPTS_KEY_ID`). ``batched``: the receipts of the payments that
        pass the checks share one signature per :data:`MAX_RECEIPT_BATCH`, made here (``protocol/payments.py``,
        invariant 6); else they are signed with the other single payments of the
        group commit that records them, just before it commits (each salted unless it names a next quote).
        ``before_commit``: awaited once the checks are done (and a batch's receipts signed), before the commit (a
        paid stream holds a payment there until its window begins); an error it returns refuses every payment that
        passed the checks, and nothing is recorded."""
        outcomes: list[Receipt | OverlayError] = []
        ready: list[tuple[int, _Issued, _Checked]] = []
        entry: _Issued | None = None
        try:
            for message, next_quote in items:
                entry = None
                try:
                    entry = self._check_quote(payer, message)
                    entry.state = "inflight"
                    checked = await self._verify(payer, message, next_quote, key_id or RECEIPTS_KEY_ID)
                except OverlayError as exc:
                    if entry is not None:
                        self._settle(entry, "open")
                    self._refused.inc()
                    outcomes.append(exc)
                    continue
                ready.append((len(outcomes), entry, checked))
                outcomes.append(checked.receipt)
            entry = None
            if batched:
                Receipt.sign_batches(self._identity, [c.receipt for _, _, c in ready])
            refusal = await before_commit() if before_commit is not None and ready else None
            if refusal is not None:
                for i, waiting, _ in ready:
                    self._settle(waiting, "open")
                    self._refused.inc()
                    outcomes[i] = refusal
                return outcomes
            slots = await self._records.submit_many([c for _, _, c in ready])
        except BaseException:
            # cancelled (or a bug) before the outcomes were known: the quotes stay open for a correct payment
            for _, waiting, _ in ready:
                self._settle(waiting, "open")
            if entry is not None:
                self._settle(entry, "open")
            raise
        for (i, waiting, checked), slot in zip(ready, slots, strict=True):
            refusal = slot.error or _refusal(checked, slot.outcome)
            if refusal is None:
                self._settle(waiting, "used")
                self._accepted.inc()
                logger.debug(
                    "payment %s accepted from %s: %d satoshis for %s",
                    checked.receipt.txid,
                    payer[:16],
                    checked.receipt.amount,
                    checked.receipt.resource,
                )
                continue
            # a replay: the database knew better than our memory (a restart in between)
            self._settle(waiting, "used" if isinstance(refusal, PaymentReplayed) else "open")
            self._refused.inc()
            outcomes[i] = refusal
        return outcomes

    # -- BRC-105 over HTTP (payee) ----------------------------------------------------------------------------

    def http_prefix(self, payer: str) -> str:
        """A derivation prefix for a 402 answered to ``payer`` (an authenticated identity key): a nonce bound to the
        payer and stamped with its issue time (``protocol/http_payment.py``, invariant 2); nothing is kept."""
        return issue_prefix(self._identity, payer, self._now_ms())

    async def accept_http_payment(self, payer: str, resource: str, price: int, header: str) -> Receipt:
        """Check and record the BRC-105 payment in ``header`` (``x-bsv-payment``) by ``payer`` (the request's
        authenticated identity) of ``price`` satoshis for ``resource``, as :meth:`accept_payment` does for a quote:
        the quote is the one the prefix stands for (issued by this node to ``payer`` less than ``quote_ttl`` ago, its
        id derived from the prefix), at the price of this request.

        Raises:
            MalformedPayment: the header is not the JSON it must be.
            InvalidDerivationPrefix: the prefix is not one this node issued to ``payer``, or has expired.
            PaymentReplayed: the prefix paid for a request already.
            InvalidPayment, InsufficientPayment: as :meth:`accept_payment` (nothing recorded).
        """
        now_ms = self._now_ms()
        ttl_ms = int(self._config.quote_ttl * 1000)
        issued: list[int] = []
        try:
            payment = parse_payment_header(
                header,
                max_bytes=self._config.max_payment_bytes,
                check=lambda prefix: issued.append(check_prefix(self._identity, payer, prefix, now_ms, ttl_ms)),
            )
            quote = Quote(
                quote_id=payment_quote_id(payment.prefix),
                payee=self._me,
                payer=payer,
                resource=check_resource(resource),
                amount=check_amount(price, "price"),
                prefix=payment.prefix,
                created_ms=issued[0],
                expires_ms=issued[0] + ttl_ms,
            )
            entry: _Issued | None = self._issued.get(quote.quote_id)
            if entry is not None and entry.state != "open":
                raise PaymentReplayed(f"the derivation prefix {payment.prefix[:16]}… paid for a request already")
            if entry is None or entry.quote != quote:  # first use (or the same prefix offered for another price)
                self._issued.put(quote.quote_id, _Issued(quote))
        except OverlayError:
            self._refused.inc()
            raise
        message = PaymentMessage(
            quote=quote,
            derivation_prefix=payment.prefix,
            derivation_suffix=payment.suffix,
            sender_identity_key=payer,
            transaction=payment.transaction,
        )
        return await self.accept_payment(payer, message)

    @staticmethod
    def _settle(entry: _Issued, state: Literal["open", "used"]) -> None:
        entry.state = state
        if entry.checked is not None:
            entry.checked.set()
            entry.checked = None  # a later payment of the quote (after a refusal) is waited for afresh

    def _check_quote(self, payer: str, message: PaymentMessage) -> _Issued:
        quote = message.quote
        if message.sender_identity_key != payer:
            raise InvalidPayment("sender_identity_key is not the key of the peer that sent the payment")
        if quote.payee != self._me:
            raise InvalidPayment("the quote was issued by another node")
        if quote.payer != payer:
            raise InvalidPayment("the quote was issued to another payer")
        if message.derivation_prefix != quote.prefix:
            raise InvalidPayment("the derivation prefix is not the one this quote issued")
        if quote.quote_id in self._voided:
            raise PaymentReplayed(f"quote {quote.quote_id} is void: the payer asked for its receipt before paying")
        entry: _Issued | None = self._issued.get(quote.quote_id)
        if entry is not None:
            if entry.quote is not quote and entry.quote != quote:
                raise InvalidPayment("the quote differs from the one issued")
            if entry.state != "open":
                raise PaymentReplayed(f"quote {quote.quote_id} (prefix {quote.prefix}) was already paid")
        elif quote.mac_ok(self._quote_mac) or quote.verify():
            # issued before a restart, or forgotten by the LRU: our own MAC or signature vouches for it
            entry = _Issued(quote)
            self._issued.put(quote.quote_id, entry)
        else:
            raise InvalidPayment("the quote does not carry this node's signature or MAC")
        if quote.expired(self._now_ms()):
            raise QuoteExpired(f"quote {quote.quote_id} expired: ask for a new one")
        return entry

    async def _verify(self, payer: str, message: PaymentMessage, next_quote: Quote | None, key_id: str) -> _Checked:
        """Check a payment (all but what the database decides) and make its receipt, unsigned (it is signed with
        its batch: a stream's in :meth:`accept_payments`, the others in :meth:`_write_records`; salted when it names
        no next quote) and how to make its record."""
        quote = message.quote
        submission = parse_payment_beef(message.transaction, max_txs=self._config.max_beef_txs)
        claimed = claims(submission)
        roots = await self._wallet.tracker.roots(claimed) if claimed else {}
        inside = {t.txid for t in submission.txs}
        outside = {i.txid for t in submission.txs if t.bump is None for i in t.inputs} - inside
        needed = set(submission.txid_only) | outside
        held = await self._wallet.held_outputs(needed) if needed else {}
        checked = check_payment_beef(submission, roots=roots, held=held, policy=self._wallet.policy)
        expected = payee_locking_script(self._identity, payer, quote.prefix, message.derivation_suffix)
        check_payment_output(
            checked.output_script, checked.output_satoshis, expected_script=expected, price=quote.amount
        )
        now = self._wall()
        receipt = Receipt.issue(
            self._identity,
            quote,
            txid=checked.txid,
            amount=checked.output_satoshis,
            paid_ms=int(now * 1000),
            next_quote=next_quote,
            key_id=key_id,
            signed=False,
            salted=next_quote is None,
        )
        coin = self._wallet.payment_coin(
            txid=checked.txid,
            satoshis=checked.output_satoshis,
            script=checked.output_script,
            prefix=quote.prefix,
            suffix=message.derivation_suffix,
            payer=payer,
        )
        outputs = [SourceOutput(satoshis=o.satoshis, locking_script=o.script) for o in submission.subject.outputs]
        return _Checked(receipt, message, payer, checked, coin, now, outputs)

    async def _write_records(self, items: list[_Checked]) -> list[RecordOutcome]:
        """Sign the receipts still unsigned (single payments: invariant 6 of ``protocol/payments.py``), then record
        the batch in one durable transaction; nothing leaves before the commit."""
        Receipt.sign_batches(self._identity, [c.receipt for c in items if not c.receipt.sig])
        return await self._store.payments.record([c.seal() for c in items])

    def _recorded(self, checked: _Checked, outcome: RecordOutcome) -> None:
        if outcome.result == "recorded":
            self._wallet.note_received(checked.coin, checked.payment.txs, checked.outputs)

    # -- paying (payer) --------------------------------------------------------------------------------------

    def received_quote(self, quote_id: str) -> Quote:
        """A quote this node received (from :meth:`request_quote`).

        Raises:
            QuoteExpired: unknown here (never asked, or forgotten after a restart).
        """
        quote: Quote | None = self._received.get(quote_id)
        if quote is None:
            raise QuoteExpired(f"no quote {quote_id} here: request a new quote")
        return quote

    def _payee_key(self, peer_key: str) -> str:
        # a key of the right length is parsed once per payee (the identity's cache), not twice per payment; any
        # other is refused by public_key_hex, with its message
        key = checked_key_hex(self._identity, peer_key) if len(peer_key) == 66 else public_key_hex(peer_key)
        if key == self._me:
            raise BadRequest("a node cannot pay itself")
        return key

    async def _link(self, peer_key: str) -> PeerLink:
        """The link to the payee, dialled by its identity key alone if need be (``PeerManager.reach``)."""
        key = self._payee_key(peer_key)
        link = self._peers.link(key)  # the live link, as reach() would find first (without parsing the key again)
        return link if link is not None else await self._peers.reach(key)

    async def request_quote(
        self, peer_key: str, resource: str, amount: int | None = None, *, max_price: int | None = None
    ) -> Quote:
        """Ask ``peer_key`` for a quote for ``resource`` (at ``amount``, if given). A quote for exactly that which
        the payee answered along with a receipt (:meth:`pay` with ``then``) is handed out instead, without asking
        again, while it has not expired.

        Raises:
            NotFound, DialError: the peer cannot be reached.
            RemoteProtocolError: the answer is not a valid quote of that peer for this request.
            PaymentError: the price is above ``max_price``.
            OverlayError: the peer refused (its error, rebuilt).
        """
        resource = check_resource(resource)
        if amount is not None:
            check_amount(amount)
        quote = self._next_quotes.pop((self._payee_key(peer_key), resource, amount), None)
        if quote is None or quote.expired(self._now_ms()):
            link = await self._link(peer_key)
            answer = await link.request("pay.quote", {"resource": resource, "amount": amount})
            quote = self._quote_answer(answer.get("quote"), link.peer_key, resource, amount)
        if max_price is not None and quote.amount > max_price:
            raise PaymentError(f"the price {quote.amount} is above the maximum {max_price}")
        self._received.put(quote.quote_id, quote)
        return quote

    def _quote_answer(
        self, body: object, payee: str, resource: str, amount: int | None, *, receipt: Receipt | None = None
    ) -> Quote:
        """The quote ``payee`` answered for ``resource`` (at ``amount``), checked; one that ``receipt`` (checked
        already) names as the next quote is vouched for by that receipt's signature, and its own is not checked.

        Raises:
            RemoteProtocolError: it is malformed, not signed by ``payee``, for another payer, resource or amount, or
                expired.
        """
        try:
            quote = Quote.from_wire(body)
        except BadRequest as exc:
            raise RemoteProtocolError(f"the peer's quote is malformed: {exc}", reason="bad_quote") from None
        problem = None
        if not (receipt is not None and receipt.signs_quote(quote)) and not quote.verify():
            problem = "it is not signed by the peer"
        elif quote.payee != payee or quote.payer != self._me:
            problem = "it names another payee or payer"
        elif quote.resource != resource or (amount is not None and quote.amount != amount):
            problem = "it is for another resource or amount"
        elif quote.expired(self._now_ms()):
            problem = "it has expired already"
        if problem is not None:
            raise RemoteProtocolError(f"the peer's quote is invalid: {problem}", reason="bad_quote")
        return quote

    async def prepare_payment(
        self, quote: Quote, *, amount: int | None = None, change_parts: int = 1, change_key: str | None = None
    ) -> tuple[PaymentMessage, PreparedTx]:
        """Build (and reserve the coins of) a payment for ``quote``, paying ``amount`` (default: the price),
        its change split into ``change_parts`` coins, to the key ``change_key`` names if given (see
        ``Wallet.prepare``).

        The caller sends it with :meth:`send_payment` or gives the coins back with ``wallet.release``.

        Raises:
            BadRequest: the quote is not for this node to pay.
            QuoteExpired: the quote has expired.
            InsufficientFunds: the wallet cannot pay it.
        """
        if quote.payer != self._me:
            raise BadRequest("the quote was issued to another payer")
        if quote.expired(self._now_ms()):
            raise QuoteExpired(f"quote {quote.quote_id} expired: request a new one")
        suffix = new_nonce()
        script = payer_locking_script(self._identity, quote.payee, quote.prefix, suffix)
        prepared = await self._wallet.prepare(
            [(script, amount or quote.amount)], recipient=quote.payee, change_parts=change_parts, change_key=change_key
        )
        message = PaymentMessage(
            quote=quote,
            derivation_prefix=quote.prefix,
            derivation_suffix=suffix,
            sender_identity_key=self._me,
            transaction=prepared.beef,
        )
        return message, prepared

    async def pay(self, quote: Quote | str, *, then: tuple[str, int | None] | None = None) -> Receipt:
        """Pay a quote (or a quote id this node received) and return the payee's receipt.

        ``then``: the ``(resource, amount or None)`` this node will pay the same payee for next. The payee answers its
        quote along with the receipt (checked as :meth:`request_quote` checks one), and :meth:`request_quote` for
        exactly that hands it out without asking: one round trip per payment instead of two. A payee that does not
        offer it (an older one, or one that cannot price it) changes nothing: the quote is asked for as usual.

        Outcomes: a receipt -> our coins are spent and the change is ours (committed); a refusal -> nothing
        changed (the coins are released) and the payee's error is raised; no answer (link lost, timeout,
        cancellation) -> the payment is committed as ``unknown`` and watched: if ARC never sees it by
        ``unanswered_timeout``, the coins come back.

        Raises:
            QuoteExpired, InsufficientFunds, PaymentError (and subclasses): refused here or by the payee.
            ConnectionLost, PeerTimeout: no answer (see above).
            RemoteProtocolError: the payee answered with an invalid receipt (the payment is committed).
        """
        if isinstance(quote, str):
            quote = self.received_quote(quote)
        _next_wanted(then)  # a bad one is refused before any coin is reserved
        link = await self._link(quote.payee)
        message, prepared = await self.prepare_payment(quote)
        return await self.send_payment(link, message, prepared, then=then)

    async def send_payment(
        self,
        link: PeerLink,
        message: PaymentMessage,
        prepared: PreparedTx,
        *,
        then: tuple[str, int | None] | None = None,
    ) -> Receipt:
        """Send a prepared payment over ``link`` and commit or release it (see :meth:`pay`, and ``then`` there)."""
        quote = message.quote
        try:
            wanted = _next_wanted(then)
        except BadRequest:
            self._wallet.release(prepared)
            raise
        body = message.to_wire()
        if wanted is not None:
            body["next"] = next_field(*wanted)
        history = HistoryRecord(
            txid=prepared.txid,
            direction="out",
            kind="payment",
            amount=prepared.amount,
            fee=prepared.fee,
            counterparty=quote.payee,
            quote_id=quote.quote_id,
            resource=quote.resource,
            status="sending",  # what begin writes it as (made so here, not copied there)
        )
        await self._wallet.begin(prepared, history)
        try:
            answer = await link.request("pay.submit", body)
        except (ConnectionLost, PeerTimeout) as exc:
            self._unanswered.inc()
            self._wallet.unanswered(prepared, str(exc))
            raise
        except trio.Cancelled:
            self._wallet.unanswered(prepared, "cancelled while waiting for the payee")
            raise
        except BaseException:
            self._declined.inc()
            await self._wallet.abort(prepared)  # shielded inside
            raise
        try:
            receipt = Receipt.from_wire(answer.get("receipt"))
            valid = receipt.verify() and receipt.matches(quote, prepared.txid)
        except BadRequest:
            valid = False
        if not valid:
            self._wallet.sent(prepared, None, detail="the payee's receipt is invalid")
            raise RemoteProtocolError("the payee accepted the payment with an invalid receipt", reason="bad_receipt")
        self._wallet.sent(prepared, receipt.to_bytes())
        self._paid.inc()
        offered = answer.get("next_quote")
        if wanted is not None and offered is not None:
            try:
                ahead = self._quote_answer(offered, link.peer_key, *wanted, receipt=receipt)
            except RemoteProtocolError as exc:  # the payment stands; the next quote is asked for as usual
                logger.debug("the next quote of %s is left out: %s", link.peer_key[:16], exc)
            else:
                self._next_quotes.put((link.peer_key, *wanted), ahead)
        logger.debug(
            "paid %d satoshis to %s in %s for %s",
            receipt.amount,
            quote.payee[:16],
            receipt.txid,
            quote.resource,
        )
        return receipt

    # -- BRC-105 over HTTP (payer) ----------------------------------------------------------------------------

    async def pay_over_http(
        self, payee: str, request: PaymentRequest, resource: str, send: Callable[[str], Awaitable[_A]]
    ) -> tuple[_A, str]:
        """Pay what a 402 of ``payee`` (the authenticated server) asks for ``resource``: build the payment (output 0
        to the BRC-29 key of the 402's prefix and a fresh suffix), write it ahead, ``send(x-bsv-payment header)``
        (the retried request) and commit or release it by the answer. Returns the answer and the payment's txid.

        Outcomes: ``x-bsv-payment-satoshis-paid`` in the answer -> paid (the change is ours); a 400 or 402 without
        it -> refused, nothing changed (the coins are released) and PaymentError is raised with the server's code;
        the request never reached the server -> released, and the error is raised; no answer, or one that does
        not verify or says neither -> the payment stays written as ``unknown`` and the settlement queue watches it
        (the coins come back if ARC never sees it), the error (if any) is raised.

        Raises:
            BadRequest: paying ourselves. InsufficientFunds: the wallet cannot pay it.
            PaymentError: the server refused the payment.
            TransportError, RemoteProtocolError: see the outcomes.
        """
        payee = public_key_hex(payee)
        if payee == self._me:
            raise BadRequest("a node cannot pay itself")
        amount = check_amount(request.satoshis, "price")
        suffix = create_nonce(self._identity)
        script = payer_locking_script(self._identity, payee, request.prefix, suffix)
        prepared = await self._wallet.prepare([(script, amount)], recipient=payee)
        history = HistoryRecord(
            txid=prepared.txid,
            direction="out",
            kind="payment",
            amount=prepared.amount,
            fee=prepared.fee,
            counterparty=payee,
            quote_id=payment_quote_id(request.prefix),
            resource=resource,
        )
        await self._wallet.begin(prepared, history)
        try:
            answer = await send(payment_header(request.prefix, suffix, prepared.beef))
        except DialError:
            self._declined.inc()
            await self._wallet.abort(prepared)  # never reached the server
            raise
        except (TransportError, RemoteProtocolError) as exc:
            self._unanswered.inc()
            self._wallet.unanswered(prepared, str(exc))
            raise
        except trio.Cancelled:
            self._wallet.unanswered(prepared, "cancelled while waiting for the payee")
            raise
        except BaseException:
            self._declined.inc()
            await self._wallet.abort(prepared)  # shielded inside
            raise
        if answer.headers.get(H_PAID) is not None:
            self._wallet.sent(prepared, None)
            self._paid.inc()
            logger.debug("paid %d satoshis over HTTP to %s in %s for %s", amount, payee[:16], prepared.txid, resource)
            return answer, prepared.txid
        if answer.status in (400, 402):
            self._declined.inc()
            await self._wallet.abort(prepared)
            code, description = _refusal_of(answer.body)
            raise PaymentError(f"the server refused the payment ({code}): {description}")
        self._unanswered.inc()
        self._wallet.unanswered(prepared, f"HTTP {answer.status} without x-bsv-payment-satoshis-paid")
        return answer, prepared.txid


def _next_wanted(then: tuple[str, int | None] | None) -> tuple[str, int | None] | None:
    """``then`` of :meth:`Payments.pay`, checked (BadRequest: a bad resource or amount)."""
    return None if then is None else check_next(*then)


def _refusal_of(body: bytes) -> tuple[str, str]:
    """The BRC-105 code and description of a refusal body (best effort)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "ERR_PAYMENT_FAILED", body[:200].decode("utf-8", "replace")
    if not isinstance(data, dict):
        return "ERR_PAYMENT_FAILED", ""
    return str(data.get("code", "ERR_PAYMENT_FAILED"))[:64], str(data.get("description", data.get("message", "")))[:500]


def _counter(metrics: Metrics) -> Any:
    from prometheus_client import Counter

    return instrument(
        metrics, Counter, "overlay_payments", "Payments, by direction and outcome", ["direction", "outcome"]
    )
