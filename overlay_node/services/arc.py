"""Our ARC client on trio (httpx): submit raw/EF/BEEF transactions, query their status, and read ARC's answers
with the semantics in docs/design.md, Payments (:func:`interpret`, a pure function). :class:`DevnetClient` adds the
devnet-only routes (faucet, mine, headers, BEEF) and :class:`DevnetChainTracker` checks merkle roots against
the devnet's headers for bsv-sdk's SPV verification.

Status semantics (what :attr:`ArcResult.outcome` says):

- ``MINED``: in a block, and only with a merkle path that proves the txid (``merkle_path`` is then set).
- ``SEEN``: SEEN_ON_NETWORK, accepted into mempools; wait for a block.
- ``PROGRESSING``: ARC holds it but the network has not confirmed it yet (QUEUED ... ACCEPTED_BY_NETWORK, and
  SEEN_IN_ORPHAN_MEMPOOL and MINED_IN_STALE_BLOCK, which are not failures); poll again.
- ``FAILED``: will not settle as submitted: REJECTED, DOUBLE_SPEND_ATTEMPTED (even with HTTP 200;
  ``competing_txs`` names the rivals), ERROR/INVALID/MALFORMED, and every 4xx refusal (ARC's 460-473 codes,
  400, 401, 413 ...).
- ``RETRY``: nothing was learnt: network errors, timeouts, 5xx, 408, 429 and ARC's 409 "generic error"; send
  the same request again later (the caller owns backoff).
- ``NOT_FOUND``: a status query for a txid ARC does not know (submit it again).

The client never raises for a transaction's fate: every answer, including network failures, becomes an
:class:`ArcResult`. The devnet-only calls raise ``ApiError``/``DialError`` instead.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import httpx
import trio
from bsv.chaintracker import ChainTracker
from bsv.merkle_path import MerklePath

from overlay_node.chain.formats import parse_stream
from overlay_node.chain.refusals import Refusal
from overlay_node.crypto.bump import path_root
from overlay_node.errors import ApiError, DialError

logger = logging.getLogger(__name__)

#: ARC statuses of a transaction ARC holds that the network has not confirmed yet (none of them is a failure)
PROGRESSING_STATUSES = frozenset(
    {
        "UNKNOWN",
        "QUEUED",
        "RECEIVED",
        "STORED",
        "ANNOUNCED_TO_NETWORK",
        "REQUESTED_BY_NETWORK",
        "SENT_TO_NETWORK",
        "ACCEPTED_BY_NETWORK",
        "SEEN_IN_ORPHAN_MEMPOOL",
        "MINED_IN_STALE_BLOCK",
    }
)
#: ARC statuses after which the transaction will not settle as submitted
FAILED_STATUSES = frozenset({"REJECTED", "DOUBLE_SPEND_ATTEMPTED", "ERROR", "INVALID", "MALFORMED"})
#: HTTP statuses that say "try again later" rather than "no"
RETRY_HTTP = frozenset({408, 409, 425, 429})

SubmitFormat = Literal["binary", "json", "text"]


class ArcOutcome(enum.Enum):
    """What an ARC answer means for settlement (see the module docstring)."""

    MINED = "mined"
    SEEN = "seen"
    PROGRESSING = "progressing"
    FAILED = "failed"
    RETRY = "retry"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True, kw_only=True)
class ArcResult:
    """ARC's answer about one transaction, interpreted.

    Attributes:
        txid: the transaction (from ARC's answer, else the one we sent or asked about; None if unknown).
        outcome: what it means (see :class:`ArcOutcome`).
        tx_status: ARC's ``txStatus``, when the answer had one.
        http_status: the HTTP status (None when no answer came).
        arc_code: ARC's error ``status`` for refusals (e.g. 465 fee too low), else None.
        extra_info: ARC's ``extraInfo``.
        detail: a one-line explanation for logs and users.
        block_hash, block_height, merkle_path: set when mined (``merkle_path`` as BUMP hex).
        competing_txs: the rivals named with DOUBLE_SPEND_ATTEMPTED (or a later REJECTED).
    """

    txid: str | None
    outcome: ArcOutcome
    tx_status: str | None = None
    http_status: int | None = None
    arc_code: int | None = None
    extra_info: str = ""
    detail: str = ""
    block_hash: str | None = None
    block_height: int | None = None
    merkle_path: str | None = None
    competing_txs: tuple[str, ...] = ()

    @property
    def retryable(self) -> bool:
        """Nothing was decided: send the same request again later."""
        return self.outcome is ArcOutcome.RETRY

    @property
    def failed(self) -> bool:
        """The transaction will not settle as submitted."""
        return self.outcome is ArcOutcome.FAILED

    @property
    def accepted(self) -> bool:
        """ARC holds the transaction (progressing, seen or mined)."""
        return self.outcome in (ArcOutcome.PROGRESSING, ArcOutcome.SEEN, ArcOutcome.MINED)

    @property
    def mined(self) -> bool:
        return self.outcome is ArcOutcome.MINED


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _proves(merkle_path: str, txid: str | None) -> str | None:
    """Why ``merkle_path`` (BUMP hex) does not prove ``txid``, or None when it does (it holds the transaction
    and a root can be computed from it; the root is checked against the chain where the path is used)."""
    try:
        if txid is not None:
            path_root(bytes.fromhex(merkle_path), txid)
        else:
            MerklePath.from_hex(merkle_path).compute_root()
    except (ValueError, IndexError, KeyError, TypeError, StopIteration) as exc:
        return f"merkle path unusable: {exc}"
    return None


def _http_outcome(status: int, *, query: bool) -> tuple[ArcOutcome, str]:
    if status == 404:
        if query:
            return ArcOutcome.NOT_FOUND, "ARC does not know this transaction"
        return ArcOutcome.FAILED, "ARC endpoint not found (check the ARC URL)"
    if status >= 500 or status in RETRY_HTTP:
        return ArcOutcome.RETRY, f"ARC answered HTTP {status}; try again later"
    if status in (401, 403):
        return ArcOutcome.FAILED, f"ARC refused the credentials (HTTP {status}); check the API key"
    if 400 <= status < 500:
        return ArcOutcome.FAILED, f"ARC refused the transaction (HTTP {status})"
    return ArcOutcome.RETRY, f"unexpected HTTP {status} from ARC"


def interpret(http_status: int, body: object, *, txid: str | None = None, query: bool = False) -> ArcResult:
    """What one ARC answer means (pure; the heart of the settlement semantics).

    Args:
        http_status: the HTTP status of the answer (use 200 for an item of a ``/v1/txs`` answer).
        body: the decoded JSON of the answer (or of one item), or None when it was not JSON.
        txid: the transaction we sent or asked about, used when the answer does not name one.
        query: the answer is to a status query (``GET /v1/tx/{txid}``): 404 then means NOT_FOUND.

    Returns:
        The interpreted result; see the module docstring for the rules.
    """
    data: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
    named = _text(data.get("txid")) or txid
    extra = _text(data.get("extraInfo"))
    tx_status = _text(data.get("txStatus")).upper() or None
    competing = data.get("competingTxs")
    rivals = tuple(t for t in competing if isinstance(t, str)) if isinstance(competing, list) else ()
    code = _int(data.get("status"))
    common: dict[str, Any] = {"txid": named, "http_status": http_status, "extra_info": extra}

    if 200 <= http_status < 300 and tx_status is not None:
        common["tx_status"] = tx_status
        common["competing_txs"] = rivals
        if tx_status in FAILED_STATUSES:
            why = "double spend: a competing transaction holds an input" if rivals else "refused by the network"
            return ArcResult(outcome=ArcOutcome.FAILED, detail=f"{tx_status}: {extra or why}", **common)
        if tx_status == "MINED":
            path = _text(data.get("merklePath"))
            problem = _proves(path, named) if path else "ARC reported MINED without a merkle path"
            if problem is None:
                return ArcResult(
                    outcome=ArcOutcome.MINED,
                    detail="mined",
                    block_hash=_text(data.get("blockHash")) or None,
                    block_height=_int(data.get("blockHeight")),
                    merkle_path=path,
                    **common,
                )
            return ArcResult(outcome=ArcOutcome.SEEN, detail=f"{problem}; poll again", **common)
        if tx_status == "SEEN_ON_NETWORK":
            return ArcResult(outcome=ArcOutcome.SEEN, detail="seen on the network", **common)
        if tx_status in PROGRESSING_STATUSES:
            return ArcResult(outcome=ArcOutcome.PROGRESSING, detail=f"{tx_status}: in progress", **common)
        return ArcResult(
            outcome=ArcOutcome.PROGRESSING,
            detail=f"unknown ARC status {tx_status}; treated as progressing",
            **common,
        )

    # a refusal: ARC's problem object carries its code as "status" (for /v1/txs items, inside an HTTP 200)
    effective = code if code is not None and code >= 400 else http_status
    if 200 <= effective < 300:
        return ArcResult(outcome=ArcOutcome.RETRY, detail="ARC answer without a txStatus", **common)
    outcome, why = _http_outcome(effective, query=query)
    title = _text(data.get("title"))
    detail = "; ".join(p for p in (why, title, extra or _text(data.get("detail"))) if p)
    return ArcResult(outcome=outcome, arc_code=effective if effective >= 400 else None, detail=detail, **common)


def transport_failure(exc: BaseException, *, txid: str | None) -> ArcResult:
    """The result for a request that got no answer (connection refused, timeout, broken response)."""
    return ArcResult(txid=txid, outcome=ArcOutcome.RETRY, detail=f"ARC unreachable: {type(exc).__name__}: {exc}")


# -- the client ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ArcPolicy:
    """ARC's ``/v1/policy``: the fee rate (``satoshis`` per ``bytes``) and size limits."""

    mining_fee_satoshis: int
    mining_fee_bytes: int
    max_tx_size: int | None

    def required_fee(self, size: int) -> int:
        """The smallest fee ARC accepts for ``size`` bytes (rounded up)."""
        return -(-size * self.mining_fee_satoshis // self.mining_fee_bytes)


def _payload(tx: bytes | Any) -> bytes:
    """The bytes to send for ``tx``: bytes as given (raw, EF or BEEF); a bsv Transaction as Extended Format
    when every input has its source transaction, else raw."""
    if isinstance(tx, bytes | bytearray | memoryview):
        return bytes(tx)
    if all(i.source_transaction is not None for i in tx.inputs):
        return bytes(tx.to_ef())
    return bytes(tx.serialize())


class ArcClient:
    """An ARC endpoint. Use as ``async with ArcClient(url) as arc:`` (or call :meth:`aclose`).

    Args:
        url: ARC's base URL (``https://arc.taal.com``, or the devnet's ``http://127.0.0.1:4762``).
        api_key: sent as ``Authorization: Bearer <api_key>`` when not empty.
        timeout: seconds for each request.
        deployment_id: sent as ``XDeployment-ID`` (a random one by default).
        transport: an httpx transport (for tests or proxies).
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str = "",
        timeout: float = 30.0,
        deployment_id: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"XDeployment-ID": deployment_id or f"overlay-node-{secrets.token_hex(8)}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, payloads: Sequence[bytes], fmt: SubmitFormat) -> httpx.Response:
        if fmt == "binary":
            return await self._http.post(
                path, content=b"".join(payloads), headers={"Content-Type": "application/octet-stream"}
            )
        if fmt == "text":
            body = "\n".join(p.hex() for p in payloads).encode()
            return await self._http.post(path, content=body, headers={"Content-Type": "text/plain"})
        items = [{"rawTx": p.hex()} for p in payloads]
        return await self._http.post(path, json=items if path.endswith("txs") else items[0])

    async def submit(self, tx: bytes | Any, *, format: SubmitFormat = "binary", txid: str | None = None) -> ArcResult:
        """Submit one transaction: raw, Extended Format or BEEF bytes, or a bsv ``Transaction``.

        Args:
            tx: the transaction; bytes are sent as they are.
            format: how to encode the body: ``binary`` (application/octet-stream), ``json``
                (``{"rawTx": hex}``) or ``text`` (hex).
            txid: the transaction's id when the caller knows it (the settlement queue): the bytes are then sent
                unparsed, as :meth:`submit_many` sends them.

        Returns:
            The interpreted answer; a transport failure is a RETRY result, bytes that are not a transaction a
            FAILED one (nothing is sent then).
        """
        (result,) = await self._submit("/v1/tx", [tx], format, None if txid is None else [txid])
        return result

    async def submit_many(
        self,
        txs: Sequence[bytes | Any],
        *,
        format: SubmitFormat = "binary",
        txids: Sequence[str] | None = None,
    ) -> list[ArcResult]:
        """Submit several transactions in one ``POST /v1/txs``; one result per transaction, in order.

        ``txids``: the transactions' ids when the caller knows them (e.g. the settlement queue); the bytes are
        then sent as they are, unparsed (a parse per transaction costs more than the rest of the submission).

        A transport failure makes every result RETRY; one item that is not a transaction makes every result
        FAILED (nothing is sent).
        """
        return await self._submit("/v1/txs", txs, format, txids)

    async def _submit(
        self, path: str, txs: Sequence[bytes | Any], format: SubmitFormat, known: Sequence[str] | None = None
    ) -> list[ArcResult]:
        if known is not None:
            if len(known) != len(txs) or not all(isinstance(tx, bytes) for tx in txs):
                raise ValueError("txids must name each transaction, given as bytes")
            payloads, txids = list(txs), list(known)
        else:
            try:
                payloads, txids = await _identify(txs)
            except Refusal as exc:
                return [
                    ArcResult(txid=None, outcome=ArcOutcome.FAILED, detail=f"not a transaction: {exc}") for _ in txs
                ]
        if not payloads:
            return []
        try:
            response = await self._post(path, payloads, format)
        except httpx.HTTPError as exc:
            logger.info("ARC %s unreachable for %s: %s", self.url, txids[0], exc)
            return [transport_failure(exc, txid=t) for t in txids]
        body = _json(response)
        if not isinstance(body, list) or not 200 <= response.status_code < 300:
            return [interpret(response.status_code, body, txid=t) for t in txids]
        # ARC lists refusals after the accepted transactions, so match the answers by txid, not position
        by_txid: dict[str, ArcResult] = {}
        for i, item in enumerate(body):
            await _share_the_loop(i)
            result = interpret(200, item)
            if result.txid is not None:
                by_txid.setdefault(result.txid, result)
        missing = "ARC's answer does not mention this transaction"
        return [by_txid.get(t) or ArcResult(txid=t, outcome=ArcOutcome.RETRY, detail=missing) for t in txids]

    async def status(self, txid: str) -> ArcResult:
        """``GET /v1/tx/{txid}``, interpreted (404 is NOT_FOUND; a transport failure is RETRY)."""
        try:
            response = await self._http.get(f"/v1/tx/{txid}")
        except httpx.HTTPError as exc:
            return transport_failure(exc, txid=txid)
        return interpret(response.status_code, _json(response), txid=txid, query=True)

    async def policy(self) -> ArcPolicy:
        """ARC's fee policy.

        Raises:
            ApiError: ARC answered with an error or an unexpected shape.
            DialError: ARC could not be reached.
        """
        data = await self._get_json("/v1/policy")
        policy = data.get("policy")
        fee = policy.get("miningFee") if isinstance(policy, Mapping) else None
        sats = _int(fee.get("satoshis")) if isinstance(fee, Mapping) else None
        size = _int(fee.get("bytes")) if isinstance(fee, Mapping) else None
        if sats is None or size is None or size < 1 or sats < 0 or not isinstance(policy, Mapping):
            raise ApiError("ARC policy has no usable miningFee", code="bad_answer", status=200)
        return ArcPolicy(
            mining_fee_satoshis=sats, mining_fee_bytes=size, max_tx_size=_int(policy.get("maxtxsizepolicy"))
        )

    async def _request_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DialError(f"ARC at {self.url} unreachable: {type(exc).__name__}: {exc}") from exc
        body = _json(response)
        if not 200 <= response.status_code < 300 or not isinstance(body, dict):
            data: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
            message = _text(data.get("message")) or _text(data.get("extraInfo")) or _text(data.get("detail"))
            code = _text(data.get("code")) or f"http_{response.status_code}"
            raise ApiError(
                f"{method} {path}: {message or f'HTTP {response.status_code}'}",
                code=code,
                status=response.status_code,
            )
        return body

    async def _get_json(self, path: str) -> dict[str, Any]:
        return await self._request_json("GET", path)


async def _identify(txs: Sequence[bytes | Any]) -> tuple[list[bytes], list[str]]:
    """The bytes to send and the txid of each transaction.

    Raises:
        Refusal: one of them is not a transaction.
    """
    payloads: list[bytes] = []
    txids: list[str] = []
    for i, tx in enumerate(txs):
        await _share_the_loop(i)
        payload = _payload(tx)
        (item,) = parse_stream(payload, max_items=1)
        payloads.append(payload)
        txids.append(item.subject.txid)
    return payloads, txids


async def _share_the_loop(i: int) -> None:
    """Let other tasks run every few items of a batch: parsing a BEEF or checking a merkle path takes a tenth of a
    millisecond or more, and a batch of a hundred must not hold a paid stream's packets back for tens of ms."""
    if i % 8 == 7:
        await trio.lowlevel.checkpoint()


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


# -- devnet extras -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FaucetPayment:
    """A devnet faucet payment: output ``vout`` of ``txid`` pays ``satoshis`` to ``locking_script``; ``beef``
    holds the transaction with its ancestors down to mined ones (with merkle paths)."""

    txid: str
    vout: int
    satoshis: int
    locking_script: bytes
    raw: bytes
    beef: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockHeaderInfo:
    """A devnet block header."""

    height: int
    hash: str
    prev_hash: str
    merkle_root: str
    time: int
    tx_count: int
    header: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MinedBlockInfo:
    """What ``POST /v1/mine`` made."""

    height: int
    hash: str
    txids: tuple[str, ...]


def _header(data: Mapping[str, Any]) -> BlockHeaderInfo:
    try:
        return BlockHeaderInfo(
            height=int(data["height"]),
            hash=str(data["hash"]),
            prev_hash=str(data["prevHash"]),
            merkle_root=str(data["merkleRoot"]),
            time=int(data["time"]),
            tx_count=int(data["txCount"]),
            header=bytes.fromhex(str(data["header"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ApiError(f"devnet header answer is malformed: {exc}", code="bad_answer", status=200) from exc


class DevnetClient(ArcClient):
    """An :class:`ArcClient` for the devnet ledger, with its devnet-only routes.

    The extra methods raise ``ApiError`` (the devnet refused; ``code`` is its error code, ``http_status`` its
    status) or ``DialError`` (unreachable).
    """

    async def faucet(self, satoshis: int, *, address: str | None = None, pubkey: str | None = None) -> FaucetPayment:
        """Have the devnet faucet pay ``satoshis`` to a P2PKH ``address`` or public key (hex)."""
        body: dict[str, Any] = {"satoshis": satoshis}
        if address is not None:
            body["address"] = address
        if pubkey is not None:
            body["pubkey"] = pubkey
        data = await self._request_json("POST", "/v1/faucet", json=body)
        try:
            return FaucetPayment(
                txid=str(data["txid"]),
                vout=int(data["vout"]),
                satoshis=int(data["satoshis"]),
                locking_script=bytes.fromhex(str(data["lockingScript"])),
                raw=bytes.fromhex(str(data["rawTx"])),
                beef=bytes.fromhex(str(data["beef"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(f"faucet answer is malformed: {exc}", code="bad_answer", status=200) from exc

    async def mine(self) -> MinedBlockInfo:
        """Make a block of the devnet's whole mempool now."""
        data = await self._request_json("POST", "/v1/mine")
        txids = data.get("txids")
        height, block_hash = _int(data.get("blockHeight")), _text(data.get("blockHash"))
        if height is None or not block_hash or not isinstance(txids, list):
            raise ApiError("mine answer is malformed", code="bad_answer", status=200)
        return MinedBlockInfo(height=height, hash=block_hash, txids=tuple(str(t) for t in txids))

    async def header(self, height: int) -> BlockHeaderInfo:
        """The devnet block header at ``height`` (ApiError with status 404 when there is none)."""
        return _header(await self._get_json(f"/v1/headers/{int(height)}"))

    async def chaintip(self) -> BlockHeaderInfo:
        return _header(await self._get_json("/v1/chaintip"))

    async def beef(self, txid: str) -> bytes:
        """A BEEF V1 of ``txid`` with its unmined ancestors down to mined ones with their merkle paths."""
        data = await self._get_json(f"/v1/tx/{txid}/beef")
        try:
            return bytes.fromhex(str(data["beef"]))
        except (KeyError, ValueError) as exc:
            raise ApiError(f"beef answer is malformed: {exc}", code="bad_answer", status=200) from exc


class DevnetChainTracker(ChainTracker):  # type: ignore[misc]  # bsv-sdk is untyped
    """bsv-sdk's ChainTracker over the devnet's block headers, for ``Transaction.verify`` /
    ``MerklePath.verify`` under trio.

    Raises (from its methods): ``DialError`` when the devnet cannot be reached.
    """

    def __init__(self, client: DevnetClient) -> None:
        self._client = client

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        try:
            header = await self._client.header(height)
        except ApiError as exc:
            if exc.http_status == 404:
                return False
            raise
        return header.merkle_root == root

    async def current_height(self) -> int:
        return (await self._client.chaintip()).height
