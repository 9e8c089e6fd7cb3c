"""The transaction formats ARC takes, parsed with hard bounds: raw (BRC-12), Extended Format (BRC-30), BEEF
V1/V2 (BRC-62/96) and Atomic BEEF (BRC-95); plus a BEEF V1 writer. Pure functions, no I/O.

Every byte is read here with explicit bounds, so that any byte string gives either a parsed value or a
:class:`~overlay_node.chain.refusals.Refusal`, never a crash. A transaction is read into plain tuples
(:class:`TxInput`, :class:`TxOutput`): the ledger and the payee read every payment, often several times over
(each settlement resubmission is parsed again), and bsv-sdk's ``Transaction`` objects cost several times the
parse itself. :meth:`ParsedTx.sdk_tx` builds one on demand for the script interpreter (and refuses bytes
bsv-sdk does not read back identically). Merkle paths are checked with :func:`overlay_node.crypto.bump.path_root`
(held byte-for-byte equal to bsv-sdk's ``MerklePath`` by its tests). The py-sdk BEEF readers are not used:
``parse_beef`` drops V1 ancestors and ``Transaction.from_beef`` reads V1 only (BRC.md section 2).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from bsv.transaction import Transaction

from overlay_node.chain.blocks import txid_of
from overlay_node.chain.refusals import ArcCode, Refusal
from overlay_node.crypto.bump import path_root, varint_bytes

EF_MARKER = b"\x00\x00\x00\x00\x00\xef"
BEEF_V1 = bytes.fromhex("0100beef")
BEEF_V2 = bytes.fromhex("0200beef")
ATOMIC_BEEF = b"\x01\x01\x01\x01"

#: what bsv-sdk raises on bytes it cannot make sense of
_SDK_ERRORS = (ValueError, IndexError, KeyError, TypeError, OverflowError, StopIteration, AttributeError)

Format = Literal["raw", "ef", "beef"]

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceOutput:
    """The output an input spends: its value and locking script."""

    satoshis: int
    locking_script: bytes


class TxInput(NamedTuple):
    """An input: the output it spends (``txid`` in display hex, ``vout``), its unlocking script, its sequence."""

    txid: str
    vout: int
    script: bytes
    sequence: int


class TxOutput(NamedTuple):
    """An output: its value and locking script."""

    satoshis: int
    script: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedTx:
    """One transaction of a submission.

    ``raw`` is the plain serialization (what the txid hashes), even when the transaction came in Extended
    Format; ``ef_sources`` then holds the source outputs the submitter claimed. ``bump`` is the merkle path
    (BRC-74 bytes) a BEEF gave it, ``block_height`` the height that path names, and ``bump_root`` the merkle
    root that path computes for this txid.
    """

    txid: str
    raw: bytes
    inputs: tuple[TxInput, ...]
    outputs: tuple[TxOutput, ...]
    ef_sources: tuple[SourceOutput, ...] | None = None
    bump: bytes | None = None
    bump_root: str | None = None
    block_height: int | None = None

    def spends(self) -> list[tuple[str, int]]:
        """The outpoints the inputs spend, in input order."""
        return [(i.txid, i.vout) for i in self.inputs]

    def sdk_tx(self) -> Any:
        """A bsv-sdk ``Transaction`` of these bytes (a new one per call), for the script interpreter.

        Raises:
            Refusal: MALFORMED when bsv-sdk cannot read the bytes, or does not write them back identically.
        """
        try:
            tx = Transaction.from_hex(self.raw)
            same = tx is not None and tx.serialize() == self.raw
        except _SDK_ERRORS as exc:
            raise Refusal(ArcCode.MALFORMED, f"transaction cannot be parsed: {exc}", txid=self.txid) from exc
        if not same:
            raise Refusal(ArcCode.MALFORMED, "transaction does not re-serialize to the same bytes", txid=self.txid)
        return tx


@dataclass(frozen=True, slots=True, kw_only=True)
class Submission:
    """One item of a request body: a transaction, or a BEEF of a subject transaction with its ancestors.

    ``txs`` are in dependency order (parents first), the subject last. ``txid_only`` are the BEEF V2 entries
    that name a transaction without carrying it.
    """

    format: Format
    txs: tuple[ParsedTx, ...]
    txid_only: frozenset[str] = frozenset()

    @property
    def subject(self) -> ParsedTx:
        return self.txs[-1]


class Cursor:
    """A bounded reader: every read past the end is a MALFORMED refusal."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def peek(self, n: int) -> bytes:
        return self.data[self.pos : self.pos + n]

    def take(self, n: int) -> bytes:
        pos = self.pos
        if n > len(self.data) - pos:
            raise Refusal(ArcCode.MALFORMED, f"truncated data: {n} bytes needed at offset {pos}")
        self.pos = pos + n
        return self.data[pos : pos + n]

    def u8(self) -> int:
        pos = self.pos
        if pos >= len(self.data):
            raise Refusal(ArcCode.MALFORMED, f"truncated data: 1 bytes needed at offset {pos}")
        self.pos = pos + 1
        return self.data[pos]

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def varint(self) -> int:
        first = self.u8()
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        value = int.from_bytes(self.take(size), "little")
        if value < (0xFD, 0x10000, 0x100000000)[size // 4]:
            raise Refusal(ArcCode.MALFORMED, f"non-canonical varint at offset {self.pos - size - 1}")
        return value

    def count(self, what: str, min_size: int) -> int:
        """A varint item count, refused when that many items of ``min_size`` bytes cannot fit."""
        n = self.varint()
        if n * min_size > len(self.data) - self.pos:
            raise Refusal(ArcCode.MALFORMED, f"{what} count {n} at offset {self.pos} exceeds the data")
        return n


# -- transactions --------------------------------------------------------------------------------------------


def _plain_tx(data: bytes, pos: int) -> tuple[ParsedTx, int] | None:
    """The plain transaction at ``pos`` and where it ends, read with index arithmetic alone (every payment and
    overlay submission goes through here); None for anything unusual (an EF marker's place is not checked here,
    a count or script length of 253 or more, truncated data): :func:`_read_tx` then reads it the careful way,
    which accepts or refuses it with the reason."""
    end = len(data)
    p = pos + 4
    if p >= end or (n_in := data[p]) >= 0xFD:
        return None
    p += 1
    u32 = _U32.unpack_from
    inputs: list[TxInput] = []
    for _ in range(n_in):
        if p + 37 > end or (size := data[p + 36]) >= 0xFD:
            return None
        at = p
        p += 41 + size
        if p > end:
            return None
        script = data[at + 37 : p - 4]
        inputs.append(TxInput(data[at : at + 32][::-1].hex(), u32(data, at + 32)[0], script, u32(data, p - 4)[0]))
    if p >= end or (n_out := data[p]) >= 0xFD:
        return None
    p += 1
    u64 = _U64.unpack_from
    outputs: list[TxOutput] = []
    for _ in range(n_out):
        if p + 9 > end or (size := data[p + 8]) >= 0xFD:
            return None
        at = p + 9
        p = at + size
        if p > end:
            return None
        outputs.append(TxOutput(u64(data, at - 9)[0], data[at:p]))
    p += 4
    if p > end:
        return None
    raw = data[pos:p]
    return ParsedTx(txid=txid_of(raw), raw=raw, inputs=tuple(inputs), outputs=tuple(outputs)), p


def _read_tx(cur: Cursor, *, allow_ef: bool, fast: bool = True) -> ParsedTx:
    """Read one raw or Extended Format transaction (``raw`` is its plain serialization either way); ``fast=False``
    skips :func:`_plain_tx` (its tests compare the two)."""
    start = cur.pos
    if fast and not (allow_ef and cur.data[start + 4 : start + 10] == EF_MARKER):
        quick = _plain_tx(cur.data, start)
        if quick is not None:
            cur.pos = quick[1]
            return quick[0]
    version = cur.take(4)
    ef = allow_ef and cur.peek(6) == EF_MARKER
    if ef:
        cur.take(6)
    n_in = cur.count("input", 41)
    inputs: list[TxInput] = []
    frames: list[bytes] = []  # EF: the inputs as the plain serialization has them
    sources: list[SourceOutput] = []
    for _ in range(n_in):
        at = cur.pos
        outpoint = cur.take(36)
        script = cur.take(cur.varint())
        inputs.append(TxInput(outpoint[31::-1].hex(), int.from_bytes(outpoint[32:], "little"), script, cur.u32()))
        if ef:
            frames.append(cur.data[at : cur.pos])
            satoshis = cur.u64()
            sources.append(SourceOutput(satoshis=satoshis, locking_script=cur.take(cur.varint())))
    outputs_at = cur.pos
    outputs: list[TxOutput] = []
    for _ in range(cur.count("output", 9)):
        satoshis = cur.u64()
        outputs.append(TxOutput(satoshis, cur.take(cur.varint())))
    cur.take(4)
    if ef:
        raw = version + varint_bytes(n_in) + b"".join(frames) + cur.data[outputs_at : cur.pos]
    else:
        raw = cur.data[start : cur.pos]
    return ParsedTx(
        txid=txid_of(raw),
        raw=raw,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        ef_sources=tuple(sources) if ef else None,
    )


def parse_transaction(data: bytes) -> ParsedTx:
    """One raw or Extended Format transaction filling ``data`` exactly.

    Raises:
        Refusal: MALFORMED (463) for truncated, trailing or unparseable bytes.
    """
    cur = Cursor(data)
    ptx = _read_tx(cur, allow_ef=True)
    if cur.remaining:
        raise Refusal(ArcCode.MALFORMED, f"{cur.remaining} unexpected bytes after the transaction")
    return ptx


# -- BEEF ----------------------------------------------------------------------------------------------------


def _read_bump(cur: Cursor) -> tuple[bytes, int]:
    """One BUMP's bytes and the block height it names (its leaves are checked where a transaction uses it)."""
    start = cur.pos
    height = cur.varint()
    tree_height = cur.u8()
    if not 1 <= tree_height <= 64:
        raise Refusal(ArcCode.CALCULATING_MERKLE_ROOTS, f"BUMP tree height {tree_height} is not possible")
    for _ in range(tree_height):
        for _ in range(cur.count("BUMP leaf", 2)):
            cur.varint()
            flags = cur.u8()
            if flags > 3:
                raise Refusal(ArcCode.CALCULATING_MERKLE_ROOTS, f"BUMP leaf flags {flags} are not defined")
            if not flags & 1:
                cur.take(32)
    return cur.data[start : cur.pos], height


def _with_bump(ptx: ParsedTx, bump: tuple[bytes, int]) -> ParsedTx:
    blob, height = bump
    try:
        root = path_root(blob, ptx.txid)
    except ValueError as exc:
        raise Refusal(
            ArcCode.CALCULATING_MERKLE_ROOTS,
            f"the BUMP given for {ptx.txid} does not prove it: {exc}",
            txid=ptx.txid,
        ) from exc
    return ParsedTx(
        txid=ptx.txid,
        raw=ptx.raw,
        inputs=ptx.inputs,
        outputs=ptx.outputs,
        ef_sources=ptx.ef_sources,
        bump=blob,
        bump_root=root,
        block_height=height,
    )


def _read_beef(cur: Cursor) -> Submission:
    magic = cur.take(4)
    atomic_subject: str | None = None
    if magic == ATOMIC_BEEF:
        atomic_subject = cur.take(32)[::-1].hex()
        magic = cur.take(4)
    if magic not in (BEEF_V1, BEEF_V2):
        raise Refusal(ArcCode.MALFORMED, f"unknown BEEF version {magic.hex()}")
    v2 = magic == BEEF_V2
    bumps = [_read_bump(cur) for _ in range(cur.count("BUMP", 2))]
    txs: list[ParsedTx] = []
    seen: set[str] = set()
    txid_only: set[str] = set()
    for _ in range(cur.count("BEEF transaction", 1 if v2 else 10)):
        bump_index: int | None = None
        if v2:
            kind = cur.u8()
            if kind == 2:
                txid_only.add(cur.take(32)[::-1].hex())
                continue
            if kind not in (0, 1):
                raise Refusal(ArcCode.MALFORMED, f"unknown BEEF V2 entry format {kind}")
            if kind == 1:
                bump_index = cur.varint()
            ptx = _read_tx(cur, allow_ef=False)
        else:
            ptx = _read_tx(cur, allow_ef=False)
            has_bump = cur.u8()
            if has_bump not in (0, 1):
                raise Refusal(ArcCode.MALFORMED, f"BEEF has-BUMP flag {has_bump} is not 0 or 1")
            if has_bump:
                bump_index = cur.varint()
        if bump_index is not None:
            if bump_index >= len(bumps):
                raise Refusal(ArcCode.CALCULATING_MERKLE_ROOTS, f"BUMP index {bump_index} is out of range")
            ptx = _with_bump(ptx, bumps[bump_index])
        if ptx.txid in txid_only or ptx.txid in seen:
            raise Refusal(ArcCode.MALFORMED, f"BEEF holds {ptx.txid} twice", txid=ptx.txid)
        seen.add(ptx.txid)
        txs.append(ptx)
    if not txs:
        raise Refusal(ArcCode.MALFORMED, "BEEF holds no transaction")
    _check_order(txs)
    if atomic_subject is not None:
        _check_atomic(txs, atomic_subject)
    return Submission(format="beef", txs=tuple(txs), txid_only=frozenset(txid_only))


def _check_order(txs: Sequence[ParsedTx]) -> None:
    position = {t.txid: i for i, t in enumerate(txs)}
    for i, t in enumerate(txs):
        for tx_in in t.inputs:
            j = position.get(tx_in.txid)
            if j is not None and j >= i:
                raise Refusal(ArcCode.MALFORMED, f"BEEF lists {t.txid} before its parent {tx_in.txid}")


def _check_atomic(txs: Sequence[ParsedTx], subject: str) -> None:
    if txs[-1].txid != subject:
        raise Refusal(ArcCode.MALFORMED, f"Atomic BEEF subject {subject} is not its last transaction")
    by_id = {t.txid: t for t in txs}
    needed = {subject}
    todo = [subject]
    while todo:
        t = by_id[todo.pop()]
        if t.bump is not None:
            continue
        for tx_in in t.inputs:
            parent = tx_in.txid
            if parent in by_id and parent not in needed:
                needed.add(parent)
                todo.append(parent)
    extra = [t.txid for t in txs if t.txid not in needed]
    if extra:
        raise Refusal(ArcCode.MALFORMED, f"Atomic BEEF holds transactions that are not ancestors: {extra[0]}")


def parse_stream(data: bytes, *, max_items: int) -> list[Submission]:
    """Every item of a request body: raw, Extended Format or BEEF, one after another (ARC's ``/v1/txs`` form).

    Raises:
        Refusal: BAD_REQUEST (400) for an empty body or more than ``max_items`` items; MALFORMED (463) or an
            invalid-BUMP code (468) for bad bytes.
    """
    cur = Cursor(data)
    items: list[Submission] = []
    while cur.remaining:
        if len(items) >= max_items:
            raise Refusal(ArcCode.BAD_REQUEST, f"more than {max_items} transactions in one request")
        if cur.peek(4) in (BEEF_V1, BEEF_V2, ATOMIC_BEEF):
            items.append(_read_beef(cur))
        else:
            ptx = _read_tx(cur, allow_ef=True)
            items.append(Submission(format="raw" if ptx.ef_sources is None else "ef", txs=(ptx,)))
    if not items:
        raise Refusal(ArcCode.BAD_REQUEST, "no transaction found - empty request body")
    return items


def parse_submission(data: bytes) -> Submission:
    """Exactly one raw, Extended Format or BEEF item (ARC's ``/v1/tx`` form)."""
    items = parse_stream(data, max_items=1)
    return items[0]


def subject_txid(data: bytes) -> str:
    """The txid of the transaction a raw, EF or BEEF submission is about.

    Raises:
        Refusal: ``data`` is not one well-formed item.
    """
    return parse_submission(data).subject.txid


def encode_beef_v1(entries: Sequence[tuple[bytes, bytes | None]]) -> bytes:
    """A BEEF V1 of ``(raw transaction, serialized BUMP or None)`` entries, parents first, subject last.

    Identical BUMPs are written once.
    """
    bumps: list[bytes] = []
    body = bytearray()
    for raw, bump in entries:
        body += raw
        if bump is None:
            body += b"\x00"
        else:
            if bump not in bumps:
                bumps.append(bump)
            body += b"\x01" + varint_bytes(bumps.index(bump))
    head = BEEF_V1 + varint_bytes(len(bumps)) + b"".join(bumps) + varint_bytes(len(entries))
    return head + bytes(body)


@dataclass(frozen=True, slots=True)
class BeefEntry:
    """One BEEF V2 entry: a transaction (with its BUMP when proven), or a txid only (``raw`` None)."""

    txid: str
    raw: bytes | None = None
    bump: bytes | None = None


def encode_beef_v2(entries: Sequence[BeefEntry]) -> bytes:
    """A BEEF V2 of ``entries`` (parents first); identical BUMPs are written once."""
    bumps: list[bytes] = []
    body = bytearray()
    for entry in entries:
        if entry.raw is None:
            body += b"\x02" + bytes.fromhex(entry.txid)[::-1]
        elif entry.bump is None:
            body += b"\x00" + entry.raw
        else:
            if entry.bump not in bumps:
                bumps.append(entry.bump)
            body += b"\x01" + varint_bytes(bumps.index(entry.bump)) + entry.raw
    head = BEEF_V2 + varint_bytes(len(bumps)) + b"".join(bumps) + varint_bytes(len(entries))
    return head + bytes(body)


def atomic_beef(subject: str, entries: Sequence[BeefEntry]) -> bytes:
    """Atomic BEEF (BRC-95) of ``subject``: the marker, the subject txid, then a BEEF V2 of ``entries``."""
    return ATOMIC_BEEF + bytes.fromhex(subject)[::-1] + encode_beef_v2(entries)


def merge_entries(submissions: Sequence[Submission]) -> list[BeefEntry]:
    """One BEEF's entries holding every transaction of ``submissions``, each once, parents before children.

    A transaction some submission carries whole replaces a txid-only entry of another; txid-only entries no
    submission carries stay txid-only. The relative order of unrelated transactions follows ``submissions``, so
    the last submission's subject comes last when nothing spends it.
    """
    full: dict[str, ParsedTx] = {}
    order: list[str] = []
    named: list[str] = []
    for submission in submissions:
        for ptx in submission.txs:
            if ptx.txid not in full:
                full[ptx.txid] = ptx
                order.append(ptx.txid)
        named.extend(t for t in sorted(submission.txid_only) if t not in named)
    out: list[BeefEntry] = [BeefEntry(t) for t in named if t not in full]
    done: set[str] = set()
    for root in order:
        stack: list[tuple[str, bool]] = [(root, False)]
        while stack:
            txid, expanded = stack.pop()
            if txid in done:
                continue
            ptx = full[txid]
            if expanded:
                done.add(txid)
                out.append(BeefEntry(txid, ptx.raw, ptx.bump))
                continue
            stack.append((txid, True))
            stack.extend((i.txid, False) for i in reversed(ptx.inputs) if i.txid in full and i.txid not in done)
    return out


def encode_beef(entries: Sequence[BeefEntry], *, version: Literal[1, 2] = 1) -> bytes:
    """A BEEF of ``entries`` (parents first): V1 when asked and possible (V1 has no txid-only entries), else V2."""
    if version == 1 and all(e.raw is not None for e in entries):
        return encode_beef_v1([(e.raw, e.bump) for e in entries if e.raw is not None])
    return encode_beef_v2(entries)
