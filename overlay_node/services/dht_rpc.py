"""The DHT's datagram layer on trio: signing (or MACs), verification, per-source rate limits, and requests with
retries.

Theory of operation: :meth:`DhtRpc.serve` is the one task that reads the UDP endpoint. For each datagram it
checks the source's rate budget (before any parsing, so a flood costs a dictionary lookup per datagram), decodes it
(``wire.dht.decode``: size, canonical CBOR, fields, timestamp; the signature is checked last, here), and then

- an answer (PONG, NODES, VALUES, STORE_ACK) resolves the pending request with its rpc id, if it came from the
  node asked and is the answer type the request expects (otherwise it is dropped, ``unexpected``/``bad_node_id``,
  before its signature is checked) and its signature verifies;
- a request (PING, FIND_NODE, FIND_VALUE, STORE) takes one signature check from the node-wide budget
  (``max_verifies_per_second``; over it the request is dropped, ``overloaded``), and if its signature verifies goes
  to the handler, whose answer is signed and sent back. Answers to our own requests do not take from that budget:
  their number is bounded by the requests we send, and a flood of requests must not stop our own lookups.

Every verified sender is reported to the handler (``on_heard``), which feeds the routing table. A dropped datagram
is counted in ``overlay_dht_drops{reason}`` and changes nothing else.

MACs instead of signatures (``dht.mac_datagrams``, on by default; ``docs/protocol.md`` section 10): a signature
costs the sender one curve operation and the receiver another, per datagram, and a lookup sends dozens. Two nodes
that both take version-2 datagrams authenticate them with an HMAC under a key only they can make (ECDH of their
identity keys, computed once per peer and kept by node id, the peers heard from longest ago forgotten first when
there are too many), so a datagram between them costs microseconds. We mark
our rpc ids (``wire.dht.RPC_MARK``); a peer that takes version 2 is learned from a verified version-2 datagram of
its own, or from a verified request of it with a marked rpc id. Requests to it and answers to it are MAC'd from
then on; everyone else gets signed datagrams, so a node that speaks version 1 only sees nothing new. A MAC'd
request that goes unanswered forgets the peer's mark (it may have been replaced by a node that does not take
them), and its next request is signed again.

Invariants:

1. Every datagram we send is signed with our identity over SHA-256 of ``SIGNING_DOMAIN + inner`` (in
   ``wire.dht``), or MAC'd under the key we share with its receiver, only to a peer we learned takes that; every one
   we accept carries a valid signature of the key its sender id derives from, or a valid MAC under the key we share
   with that key. A curve operation (a signature check, or the ECDH of a peer's first MAC) on a request takes one
   from the node-wide budget; a MAC under a key we hold does not.
2. A request is outstanding under a fresh random rpc id until answered or given up, after at most
   ``request_retries + 1`` sends of the same bytes, ``request_timeout`` apart. A retry reuses the rpc id, so an
   answer to any of the sends completes the request.
3. The rate limiter gives each source address ``(ip, port)`` and each source IP a smooth rate with bursts of
   :data:`BURST_SECONDS` worth (the generic cell rate algorithm: one float per address); a datagram over either is
   dropped, so many ports of one IP share the IP's budget. The per-IP rate is kept well below what the node can
   check and answer, so that the rest of a flood from one IP is dropped for the price of a dictionary lookup and
   others are answered meanwhile. Its memory is bounded by the addresses heard from in the last
   ``BURST_SECONDS + 1`` seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, NoReturn, Protocol, TypeVar

import trio
from coincurve import PublicKey

from overlay_node.config import DhtSection
from overlay_node.crypto.keys import Identity, ecdsa_verify_digest, parse_public_key
from overlay_node.errors import BadRequest, DialError, LocalProtocolError, PeerTimeout, TransportError
from overlay_node.lru import LruMap
from overlay_node.metrics import Metrics
from overlay_node.net.udp import Address, UdpEndpoint, format_address
from overlay_node.wire.dht import (
    BodyCache,
    DhtDropped,
    Envelope,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Store,
    StoreAck,
    Values,
    decode,
    encode,
    new_rpc_id,
    node_id_of,
    takes_macs,
)

__all__ = ["BURST_SECONDS", "Deliver", "DhtHandler", "DhtRpc", "RateLimit", "RpcStats", "Signer", "SourceRateLimiter"]

logger = logging.getLogger(__name__)

#: public keys parsed and kept for verification (parsing costs about a sixth of a verify); as many MAC keys
_KEY_CACHE: Final = 4096
#: what a pair's MAC key is derived for, hashed with their ECDH secret
MAC_KEY_DOMAIN: Final = b"overlay-node/dht/v2 mac key\n"
K = TypeVar("K")

#: the rate limits allow bursts of this many seconds' worth of their rate at once (a lookup's fan-out, many nodes
#: joining through one bootstrap address), then the rate itself, spread evenly
BURST_SECONDS: Final = 0.5
#: datagrams taken off the socket per wakeup of the receiving task
RECEIVE_BATCH: Final = 64
#: how often a rate limiter forgets the addresses whose budget is whole again
_SWEEP_INTERVAL: Final = 1.0

#: the answer each request expects
_ANSWER: Final[dict[type[Message], type[Message]]] = {
    Ping: Pong,
    FindNode: Nodes,
    FindValue: Values,
    Store: StoreAck,
}
_METHOD: Final[dict[type[Message], str]] = {
    Ping: "ping",
    FindNode: "find_node",
    FindValue: "find_value",
    Store: "store",
}


def mac(key: bytes, message: bytes) -> bytes:
    """The version-2 MAC of ``message`` under a pair's key: HMAC-SHA256."""
    return hmac.digest(key, message, "sha256")


class Signer:
    """Signs with our identity and verifies others' signatures: ECDSA over SHA-256 of the message; derives the MAC
    key we share with a peer."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        self._keys: OrderedDict[bytes, PublicKey] = OrderedDict()

    def sign(self, message: bytes) -> bytes:
        """Our DER signature over SHA-256(message)."""
        return self._identity.sign_digest(hashlib.sha256(message).digest())

    def verify(self, pubkey: bytes, message: bytes, signature: bytes) -> bool:
        """True if ``signature`` is ``pubkey``'s over SHA-256(message); False for any malformed input."""
        return self.verify_digest(pubkey, hashlib.sha256(message).digest(), signature)

    def verify_digest(self, pubkey: bytes, digest: bytes, signature: bytes) -> bool:
        """True if ``signature`` is ``pubkey``'s over the 32-byte ``digest``; False for any malformed input."""
        key = self._keys.get(pubkey)
        if key is None:
            try:
                key = parse_public_key(pubkey)
            except BadRequest:
                return False
            self._keys[pubkey] = key
            if len(self._keys) > _KEY_CACHE:
                self._keys.popitem(last=False)
        return ecdsa_verify_digest(key, signature, digest)

    def mac_key(self, pubkey: bytes) -> bytes | None:
        """The key of our MACs with the node of ``pubkey``: SHA-256 of :data:`MAC_KEY_DOMAIN` and our ECDH secret
        (libsecp256k1's: SHA-256 of the compressed shared point), the same from either side. None for a malformed
        key. One curve operation: the caller keeps it."""
        try:
            shared = self._identity.private_key.ecdh(pubkey)
        except ValueError:
            return None
        return hashlib.sha256(MAC_KEY_DOMAIN + shared).digest()


class RateLimit(Generic[K]):
    """``rate`` events per second per key, with bursts of up to ``burst`` seconds' worth: the generic cell rate
    algorithm, which keeps one float per key (when its budget will be whole again, less one burst) and no timers.
    Keys whose budget is whole again are forgotten about once a second."""

    __slots__ = ("_due", "_interval", "_sweep_at", "_tolerance")

    def __init__(self, rate: float, burst: float = BURST_SECONDS) -> None:
        self._interval = 1.0 / rate
        #: how far ahead of now a key's next slot may be: ``burst * rate`` events at once (at least one)
        self._tolerance = max(burst * rate - 1.0, 0.0) * self._interval
        self._due: dict[K, float] = {}
        self._sweep_at = -math.inf

    def allow(self, key: K, now: float) -> bool:
        """Take one event of ``key``'s budget at ``now``; False (and nothing taken) when it is spent."""
        due = self._due.get(key, now)
        if due < now:
            due = now
        elif due - now > self._tolerance:
            return False
        self._due[key] = due + self._interval
        if now >= self._sweep_at:
            self._sweep_at = now + _SWEEP_INTERVAL
            self._due = {k: t for k, t in self._due.items() if t > now}
        return True

    def __len__(self) -> int:
        return len(self._due)


class SourceRateLimiter:
    """At most ``per_second`` datagrams a second per source address ``(ip, port)``, and at most ``per_ip`` from all
    the ports of one IP together, each with bursts of :data:`BURST_SECONDS` worth. A datagram its address's budget
    drops takes nothing from its IP's: a flood from one port uses up nothing of its neighbours' budget."""

    def __init__(self, per_second: int, per_ip: int | None = None, *, burst: float = BURST_SECONDS) -> None:
        self.per_second = per_second
        self.per_ip = per_ip if per_ip is not None else per_second
        self._sources: RateLimit[Address] = RateLimit(per_second, burst)
        self._ips: RateLimit[str] = RateLimit(self.per_ip, burst)

    def allow(self, source: Address, now: float) -> bool:
        """Count one datagram from ``source`` at ``now``; False when its address's or its IP's budget is spent."""
        return self._sources.allow(source, now) and self._ips.allow(source[0], now)


class DhtHandler(Protocol):
    """What the DHT service provides to the datagram layer."""

    def handle_request(self, envelope: Envelope, source: Address) -> Message | None:
        """The answer to a verified request (None: no answer)."""

    def on_heard(self, envelope: Envelope, source: Address, *, answer: bool) -> None:
        """A verified datagram arrived: a request from ``source``, or an answer to a request we sent there."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcStats:
    """Datagram counters."""

    datagrams_in: int
    datagrams_out: int
    pending: int
    drops: dict[str, int]
    #: datagrams that came and went MAC'd (version 2), and the peers we know take them
    macs_in: int = 0
    macs_out: int = 0
    mac_peers: int = 0


#: receives the verified answer to a request
Deliver = Callable[[Envelope], None]


@dataclass(slots=True)
class _Pending:
    address: Address
    expect_id: bytes | None
    answer: type[Message]
    method: str
    deliver: Deliver
    mac: bool = False
    answered: bool = False


async def endpoint_closed() -> NoReturn:
    """What a request meets once the service stopped (the node is stopping while a task still uses the DHT): a task
    being cancelled for the stop ends with Cancelled, any other with TransportError; never an unexpected error that
    would crash the node's nursery.

    Raises:
        TransportError: always, after a checkpoint.
    """
    await trio.lowlevel.checkpoint()
    raise TransportError("the dht endpoint is closed")


class DhtRpc:
    """Datagrams in and out for one DHT node (see the module docstring).

    Args:
        identity: our identity; its public key is the sender key of every datagram.
        config: the ``[dht]`` section (timeouts, retries, skew, rate limit).
        metrics: the node's instruments (``overlay_dht_*``).
        handler: the DHT service.
        wall_clock: wall-clock seconds, for datagram timestamps.
    """

    def __init__(
        self,
        identity: Identity,
        config: DhtSection,
        metrics: Metrics,
        handler: DhtHandler,
        wall_clock: Callable[[], float],
    ) -> None:
        self._identity = identity
        self._pub = identity.public_key
        self._own_id = node_id_of(self._pub)
        self._config = config
        self._metrics = metrics
        self._handler = handler
        self._wall = wall_clock
        self.signer = Signer(identity)
        self._macs = config.mac_datagrams
        #: node id -> the MAC key we share, for the peers we learned take version-2 datagrams (module docstring)
        self._mac_peers: LruMap[bytes, bytes] = LruMap(_KEY_CACHE)
        # the bodies this node encodes and decodes again and again (answers repeat: wire/dht.py, invariant 7)
        self._bodies = BodyCache()
        self._limiter = SourceRateLimiter(config.max_datagrams_per_source, config.max_datagrams_per_ip)
        #: signature checks of requests, node-wide (a flood spread over many addresses)
        self._verifies: RateLimit[None] = RateLimit(config.max_verifies_per_second)
        #: what ``decode`` asked to verify, checked after it returns (see ``_defer_verify``)
        self._unverified: tuple[bytes, bytes, bytes] = (b"", b"", b"")
        self._verify_mac = self._defer_verify if self._macs else None
        self._pending: dict[bytes, _Pending] = {}
        self._endpoint: UdpEndpoint | None = None
        self._in = 0
        self._out = 0
        self._macs_in = 0
        self._macs_out = 0
        self._drops: dict[str, int] = {}
        # the hot counters, resolved once (a labels() lookup costs more than the increment)
        self._m_in = metrics.dht_datagrams.labels("in")
        self._m_out = metrics.dht_datagrams.labels("out")
        self._m_in_bytes = metrics.dht_bytes.labels("in")
        self._m_out_bytes = metrics.dht_bytes.labels("out")
        self._m_ok = {method: metrics.dht_requests.labels(method, "ok") for method in _METHOD.values()}
        self._m_rate_limited = metrics.dht_drops.labels("rate_limited")

    # -- counters --------------------------------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + 1
        self._metrics.dht_drops.labels(reason).inc()

    def statistics(self) -> RpcStats:
        """Datagrams in and out, requests outstanding, drops by reason."""
        return RpcStats(
            datagrams_in=self._in,
            datagrams_out=self._out,
            pending=len(self._pending),
            drops=dict(self._drops),
            macs_in=self._macs_in,
            macs_out=self._macs_out,
            mac_peers=len(self._mac_peers),
        )

    # -- sending ---------------------------------------------------------------------------------------------

    def new_rpc_id(self) -> bytes:
        """A fresh rpc id for a request of ours, marked when we take version-2 datagrams."""
        return new_rpc_id(takes_macs=self._macs)

    def encode(self, msg: Message, to: bytes | None = None) -> bytes:
        """``msg`` as a datagram stamped with our wall clock: MAC'd for ``to`` (a node id) if it takes that, else
        signed."""
        key = self._mac_peers.get(to) if to is not None else None
        if key is not None:
            data = encode(
                msg, sender_pub=self._pub, now=self._wall(), sign=lambda m: mac(key, m), mac=True, cache=self._bodies
            )
            self._macs_out += 1
            return data
        return encode(msg, sender_pub=self._pub, now=self._wall(), sign=self.signer.sign, cache=self._bodies)

    async def _send_bytes(self, data: bytes, address: Address) -> None:
        if self._endpoint is None:
            await endpoint_closed()
        await self._endpoint.send(data, address)
        self._out += 1
        self._m_out.inc()
        self._m_out_bytes.inc(len(data))

    async def start_request(
        self, address: Address, msg: Message, *, expect_id: bytes | None, deliver: Deliver
    ) -> bytes:
        """Send a request once and return its datagram (for :meth:`resend`); do not wait for the answer.

        The answer, once verified, goes to ``deliver`` (called once, from the receiving task). The caller owns the
        timeout: it calls :meth:`resend` or :meth:`finish_request`, and must call :meth:`finish_request` in the
        end whatever happened. :meth:`request` is the waiting form.

        Args:
            address: where to send it.
            msg: a PING, FIND_NODE, FIND_VALUE or STORE with a fresh rpc id.
            expect_id: the node id that must answer (None when bootstrapping from an address).
            deliver: called with the answer envelope; its message is of the type the request expects.

        Raises:
            DialError: the kernel refused the send (the request is forgotten).
        """
        if msg.rpc_id in self._pending:
            raise RuntimeError("rpc id already in use")
        method = _METHOD[type(msg)]
        data = self.encode(msg, expect_id)
        maced = expect_id is not None and expect_id in self._mac_peers
        self._pending[msg.rpc_id] = _Pending(address, expect_id, _ANSWER[type(msg)], method, deliver, maced)
        try:
            await self._send_bytes(data, address)
        except BaseException as exc:  # a refused send, or a cancellation: the request never started
            del self._pending[msg.rpc_id]
            if isinstance(exc, DialError):
                self._metrics.dht_requests.labels(method, "send_failed").inc()
            raise
        return data

    async def resend(self, data: bytes, address: Address) -> None:
        """Send a request's datagram again (same rpc id: an answer to either send completes it).

        Raises:
            DialError: the kernel refused the send.
        """
        await self._send_bytes(data, address)

    def finish_request(self, rpc_id: bytes, *, timed_out: bool) -> None:
        """Forget a request started with :meth:`start_request` (``timed_out``: it is given up as unanswered, and
        counted so; otherwise it was answered or is simply no longer wanted)."""
        pending = self._pending.pop(rpc_id, None)
        if pending is not None and timed_out and not pending.answered:
            self._metrics.dht_requests.labels(pending.method, "timeout").inc()
            if pending.mac and pending.expect_id is not None:
                # perhaps another node (one that does not take MACs) answers there now: sign the next request
                self._mac_peers.pop(pending.expect_id, None)

    async def request(self, address: Address, msg: Message, *, expect_id: bytes | None) -> Envelope:
        """Send a request and wait for its answer, sending it again after each ``request_timeout``.

        Args:
            address: where to send it.
            msg: a PING, FIND_NODE, FIND_VALUE or STORE with a fresh rpc id.
            expect_id: the node id that must answer (None when bootstrapping from an address).

        Returns:
            The verified answer envelope; its message is of the type the request expects.

        Raises:
            PeerTimeout: no answer after ``request_retries + 1`` sends.
            DialError: the kernel refused the first send (nothing was sent).
        """
        cfg = self._config
        done = trio.Event()
        answers: list[Envelope] = []

        def deliver(envelope: Envelope) -> None:
            answers.append(envelope)
            done.set()

        data = await self.start_request(address, msg, expect_id=expect_id, deliver=deliver)
        timed_out = False
        try:
            for attempt in range(cfg.request_retries + 1):
                if attempt:
                    try:
                        await self.resend(data, address)
                    except DialError:
                        pass  # counts as one more unanswered send
                with trio.move_on_after(cfg.request_timeout):
                    await done.wait()
                if answers:
                    return answers[0]
            timed_out = True
        finally:
            self.finish_request(msg.rpc_id, timed_out=timed_out)
        method = _METHOD[type(msg)]
        raise PeerTimeout(f"dht {method} to {format_address(address)}: no answer after {cfg.request_retries + 1} sends")

    # -- receiving -------------------------------------------------------------------------------------------

    async def serve(
        self, endpoint: UdpEndpoint, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read and handle datagrams from ``endpoint`` until cancelled; requests may be sent once started."""
        self._endpoint = endpoint
        task_status.started()
        allow = self._limiter.allow
        try:
            while True:
                batch = await endpoint.receive_batch(RECEIVE_BATCH)
                now = trio.current_time()
                self._in += len(batch)
                self._m_in.inc(len(batch))
                self._m_in_bytes.inc(sum(len(data) for data, _ in batch))
                # the rate limits come first: a flood's datagram costs a dictionary lookup (invariant 3); they are
                # counted before any datagram of the batch is answered
                admitted = [(data, source) for data, source in batch if allow(source, now)]
                limited = len(batch) - len(admitted)
                if limited:
                    self._drops["rate_limited"] = self._drops.get("rate_limited", 0) + limited
                    self._m_rate_limited.inc(limited)
                for i, (data, source) in enumerate(admitted):
                    if i:
                        # as with one datagram per wakeup: a task an answer woke (a lookup) runs before the next
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    await self._handle_datagram(data, source, now)
        finally:
            self._endpoint = None

    def _defer_verify(self, pubkey: bytes, message: bytes, signature: bytes) -> bool:
        """The ``verify`` (and ``verify_mac``) given to ``decode``, whose last check is the signature: it keeps what
        is to be verified and says yes, and :meth:`_verified` checks it once we know whether the datagram is worth a
        check (the envelope says which of the two it is)."""
        self._unverified = (pubkey, message, signature)
        return True

    def _verified(self, envelope: Envelope) -> bool:
        pubkey, message, signature = self._unverified
        self._unverified = (b"", b"", b"")
        if envelope.mac:
            key = self._mac_peers.get(envelope.sender_id)
            if key is None:
                key = self.signer.mac_key(pubkey)
            if key is not None and hmac.compare_digest(mac(key, message), signature):
                # it sent one: it takes them (kept, or kept longer: the least recently heard key goes first)
                self._mac_peers.put(envelope.sender_id, key)
                self._macs_in += 1
                return True
        else:
            try:
                if self.signer.verify(pubkey, message, signature):
                    return True
            except ValueError:  # pragma: no cover - the verifier returns False for malformed input
                pass
        self._drop("bad_signature")
        return False

    def _learn(self, envelope: Envelope) -> None:
        """A verified signed request whose rpc id is marked: its sender takes MACs (module docstring)."""
        if envelope.sender_id not in self._mac_peers:
            key = self.signer.mac_key(envelope.sender_pub)
            if key is not None:
                self._mac_peers.put(envelope.sender_id, key)

    async def _handle_datagram(self, data: bytes, source: Address, now: float) -> None:
        try:
            # everything but the signature; no field of the envelope is acted on before _verified() says yes
            envelope = decode(
                data,
                now=self._wall(),
                verify=self._defer_verify,
                max_skew=self._config.max_skew,
                verify_mac=self._verify_mac,
                cache=self._bodies,
            )
        except DhtDropped as exc:
            self._drop(exc.reason)
            logger.debug("dht: dropped datagram from %s: %s", format_address(source), exc)
            return
        if envelope.sender_id == self._own_id:
            self._drop("own_id")  # our own datagram reflected back at us
            return
        msg = envelope.message
        if isinstance(msg, Pong | Nodes | Values | StoreAck):
            self._resolve(envelope, msg)
            return
        # a MAC under a key we hold costs no curve operation, so it takes nothing from the budget (invariant 1)
        if not (envelope.mac and envelope.sender_id in self._mac_peers) and not self._verifies.allow(None, now):
            self._drop("overloaded")
            return
        if not self._verified(envelope):
            return
        if self._macs and not envelope.mac and takes_macs(msg.rpc_id):
            self._learn(envelope)
        self._handler.on_heard(envelope, source, answer=False)
        reply = self._handler.handle_request(envelope, source)
        if reply is None:
            return
        try:
            data = self.encode(reply, envelope.sender_id)
        except LocalProtocolError:
            # our bug (an answer that does not fit): this request goes unanswered, the node carries on
            logger.exception("dht: cannot encode the answer to %s", type(msg).__name__)
            self._drop("answer_too_large")
            return
        try:
            await self._send_bytes(data, source)
        except DialError as exc:
            self._drop("send_failed")
            logger.debug("dht: %s", exc)

    def _resolve(self, envelope: Envelope, msg: Message) -> None:
        pending = self._pending.get(msg.rpc_id)
        if pending is None or pending.answered:
            self._drop("unexpected")
            return
        if pending.expect_id is not None and envelope.sender_id != pending.expect_id:
            self._drop("bad_node_id")
            return
        if type(msg) is not pending.answer:
            self._drop("unexpected")
            return
        if not self._verified(envelope):
            return
        pending.answered = True
        self._m_ok[pending.method].inc()
        pending.deliver(envelope)
        self._handler.on_heard(envelope, pending.address, answer=True)
