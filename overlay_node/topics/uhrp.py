"""BRC-26 UHRP advertisement tokens, the topic manager ``tm_uhrp`` and the lookup service ``ls_uhrp``, behaving as
the reference uhrp-services backend does.

1. A token is a lock-before PushDrop script (:mod:`overlay_node.crypto.pushdrop`) with six fields: the host's
   identity key (33 bytes), the SHA-256 of the content (32 bytes), the UTF-8 URL the content downloads from, the
   expiry time (Unix seconds) and the content size (bytes) as Bitcoin VarInts, and the BRC-3 signature over the
   first five, protocol ``[2, "uhrp advertisement"]``, key id ``"1"``, counterparty ``anyone``; it is locked to the
   host's own child key for ``anyone``.
2. Admission, per output: the script decodes as PushDrop with at least six fields, the last being a signature
   linked to the identity key in field 0 over all the others; field 1 is 32 bytes; field 2 parses as an
   ``https:`` URL (``http:`` too when the node allows http); the expiry and the size read as VarInts (as
   @bsv/sdk's ``readVarIntNum``: a ``0xff`` VarInt is signed, more than 2**53 is refused) and are at least 1.
   When any output is admitted the spent topical predecessors are all retained (``coinsToRetain`` =
   ``previousCoins``); otherwise nothing is admitted or retained.

   The reference's check counts five fields, but it removes the signature from the list before reading the size,
   so a five-field token has no size field and passes only because JavaScript compares ``undefined < 1`` as
   false; here a token needs its size field. Likewise a truncated VarInt, which the JavaScript reader turns into
   whatever the missing bytes make of it, is refused here.
3. ``ls_uhrp`` indexes each output ``tm_uhrp`` admitted under ``uhrpUrl`` (the bare UHRP URL of field 1),
   ``hostIdentityKey`` (field 0 in hex) and ``expiryTime`` (decimal), and answers ``{"outpoint": "txid.vout"}``
   or a query naming at least one of those three (every one given must match; ``uhrpUrl`` may be given in any
   accepted form: bare, ``uhrp:``, ``uhrp://`` or ``web+uhrp://``), in admission order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from overlay_node.crypto import pushdrop
from overlay_node.crypto.brc42 import ProtocolID
from overlay_node.crypto.bump import varint_bytes
from overlay_node.crypto.keys import Identity
from overlay_node.crypto.uhrp import hash_from_url, url_for_hash
from overlay_node.errors import BadRequest
from overlay_node.topics.plugins import (
    Admittance,
    AdmittedOutput,
    FormulaItem,
    LookupIndex,
    LookupService,
    Metadata,
    Outpoint,
    PluginContext,
    TaggedTx,
    TopicManager,
)
from overlay_node.topics.ship import js_truthy, parse_url, to_utf8

__all__ = [
    "FACTORIES",
    "UHRP_PROTOCOL",
    "UhrpLookupService",
    "UhrpToken",
    "UhrpTopicManager",
    "admissible",
    "decode_uhrp_token",
    "is_download_url",
    "read_varint_num",
    "uhrp_fields",
    "uhrp_token",
]

UHRP_PROTOCOL: Final[ProtocolID] = (2, "uhrp advertisement")
TOPIC: Final = "tm_uhrp"
#: the largest VarInt @bsv/sdk's readVarIntNum returns (it throws beyond, to keep a JavaScript number exact)
MAX_VARINT_NUM: Final = 2**53


def _varint_field(value: int) -> bytes:
    """``value`` as a VarInt field. 16 is written in the three-byte form: its one-byte form would be pushed as
    ``OP_16``, which @bsv/sdk's PushDrop decoder reads back as an empty field (and the reference then fails the
    signature); every VarInt reader reads the longer form as 16."""
    return b"\xfd\x10\x00" if value == 16 else varint_bytes(value)


def uhrp_fields(host_identity_key: bytes, content_hash: bytes, url: str, expiry: int, size: int) -> list[bytes]:
    """The five signed fields of an advertisement."""
    return [bytes(host_identity_key), bytes(content_hash), url.encode(), _varint_field(expiry), _varint_field(size)]


def uhrp_token(identity: Identity, content_hash: bytes, url: str, expiry: int, size: int) -> bytes:
    """The locking script of a signed advertisement: ``identity`` hosts the content of SHA-256 ``content_hash`` at
    ``url`` until ``expiry`` (Unix seconds); it is ``size`` bytes.

    Raises:
        ValueError: a hash that is not 32 bytes, or an expiry or size outside 1..2**53. The URL is not judged here
            (see :func:`is_download_url`).
    """
    if len(content_hash) != 32:
        raise ValueError(f"a UHRP content hash is 32 bytes, got {len(content_hash)}")
    for what, value in (("expiry", expiry), ("size", size)):
        if isinstance(value, bool) or not 1 <= value <= MAX_VARINT_NUM:
            raise ValueError(f"{what} must be 1..2**53, got {value!r}")
    return pushdrop.lock(identity, uhrp_fields(identity.public_key, content_hash, url, expiry, size), UHRP_PROTOCOL)


def read_varint_num(data: bytes) -> int:
    """The VarInt at the start of ``data`` as @bsv/sdk's ``Reader.readVarIntNum()`` reads it (``0xff``: a signed
    64-bit value; bytes after the VarInt are ignored).

    Raises:
        ValueError: empty or truncated, or beyond 2**53.
    """
    if not data:
        raise ValueError("no VarInt: empty field")
    first = data[0]
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}.get(first)
    if size is None:
        return first
    if len(data) < 1 + size:
        raise ValueError("truncated VarInt")
    value = int.from_bytes(data[1 : 1 + size], "little", signed=size == 8)
    if value > MAX_VARINT_NUM:
        raise ValueError("VarInt too large to read as a JavaScript number")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class UhrpToken:
    """A decoded advertisement. ``url`` is read as @bsv/sdk reads it; ``fields`` are the raw signed fields (every
    field but the last, the signature)."""

    host_identity_key: bytes
    content_hash: bytes
    url: str
    expiry: int
    size: int
    locking_key: bytes
    signature: bytes
    fields: tuple[bytes, ...]

    @property
    def uhrp_url(self) -> str:
        """The bare UHRP URL of the content."""
        return url_for_hash(self.content_hash)

    def is_linked(self) -> bool:
        """The reference linkage check: the signature is the host's, and so is the locking key."""
        return pushdrop.is_linked(self.host_identity_key, self.locking_key, self.fields, self.signature, UHRP_PROTOCOL)


def decode_uhrp_token(script: bytes) -> UhrpToken:
    """Read an advertisement: a PushDrop script of at least six fields (the signature last) with a 32-byte hash
    and readable VarInts. The URL, the values and the signature are not judged (see :func:`admissible`).

    Raises:
        ValueError: not such a script.
    """
    token = pushdrop.decode(script)
    fields = token.fields
    if len(fields) < 6:
        raise ValueError(f"a UHRP advertisement has 6 fields, this script has {len(fields)}")
    if len(fields[1]) != 32:
        raise ValueError(f"a UHRP content hash is 32 bytes, got {len(fields[1])}")
    return UhrpToken(
        host_identity_key=fields[0],
        content_hash=fields[1],
        url=to_utf8(fields[2]),
        expiry=read_varint_num(fields[3]),
        size=read_varint_num(fields[4]),
        locking_key=token.locking_key,
        signature=fields[-1],
        fields=fields[:-1],
    )


def is_download_url(url: str, *, allow_http: bool = False) -> bool:
    """``url`` parses (WHATWG) as an ``https:`` URL, or ``http:`` with ``allow_http``."""
    parsed = parse_url(url)
    return parsed is not None and (parsed.scheme == "https" or (allow_http and parsed.scheme == "http"))


def admissible(script: bytes, *, allow_http: bool = False) -> bool:
    """Whether ``tm_uhrp`` admits an output with this locking script (see the module docstring)."""
    try:
        token = decode_uhrp_token(script)
    except ValueError:
        return False
    return (
        token.expiry >= 1
        and token.size >= 1
        and is_download_url(token.url, allow_http=allow_http)
        and token.is_linked()
    )


_TM_DOCS: Final = """# tm_uhrp: UHRP content advertisements (BRC-26)

Admits **UHRP advertisement tokens**: a host's signed promise to serve a piece of content, named by its SHA-256
hash, at a URL until a given time.

A token is a PushDrop output (`<locking key> OP_CHECKSIG <fields> OP_2DROP… [OP_DROP]`) with six fields:

1. the host's identity key (33-byte compressed public key);
2. the SHA-256 hash of the content (32 bytes);
3. the download URL (UTF-8), `https://…`;
4. the expiry time, Unix seconds, as a Bitcoin VarInt;
5. the content size in bytes, as a Bitcoin VarInt;
6. a signature over fields 1-5, made with BRC-42 protocol `[2, "uhrp advertisement"]`, key id `1`, counterparty
   `anyone`.

An output is admitted when the locking key is the host's child key for `anyone` under that protocol and the
signature verifies under it, the hash is 32 bytes, the URL is an `https:` URL, and the expiry and the size are at
least 1. When a transaction has admissible outputs, the advertisements it spends stay in history.
"""

_LS_DOCS: Final = """# ls_uhrp: find UHRP content hosts

Answers with the unspent UHRP advertisements admitted by `tm_uhrp`, oldest first.

Queries (JSON objects):

- `{"outpoint": "<txid>.<output index>"}`: that advertisement, if it is known;
- otherwise at least one of these, and every one given must match:
  - `uhrpUrl`: the content's UHRP URL (bare, `uhrp:`, `uhrp://` or `web+uhrp://`);
  - `hostIdentityKey`: the host's identity key, lower-case hex;
  - `expiryTime`: the exact expiry time (Unix seconds) the advertisement states.

Each answer is the advertisement's output; read its fields (field 3 is the download URL, field 4 the expiry) and
check that the downloaded content hashes to the URL's hash.
"""

_NEEDS_A_KEY: Final = "Lookup must specify either outpoint, or at least one of (uhrpUrl, expiryTime, hostIdentityKey)"
_TXID_RE: Final = re.compile(r"[0-9a-f]{64}\Z")


class UhrpTopicManager:
    """``tm_uhrp``: admits linked UHRP advertisements and keeps the ones they spend in history."""

    def __init__(self, *, allow_http: bool = False) -> None:
        self.allow_http = allow_http

    def admissible_outputs(self, tx: TaggedTx, previous_coins: Sequence[int]) -> Admittance:
        admit = tuple(
            i for i, output in enumerate(tx.tx.outputs) if admissible(output.script, allow_http=self.allow_http)
        )
        if not admit:
            return Admittance()
        return Admittance(outputs_to_admit=admit, coins_to_retain=tuple(previous_coins))

    def needed_inputs(self, _tx: TaggedTx) -> Sequence[Outpoint]:
        return ()

    def documentation(self) -> str:
        return _TM_DOCS

    def metadata(self) -> Metadata:
        return Metadata(
            name="Universal Hash Resolution Protocol",
            short_description="Manages UHRP content availability advertisements.",
        )


def _outpoint(text: str) -> Outpoint | None:
    """``txid.vout`` as the reference splits it (parts after a second dot are ignored); None when it can name no
    stored output."""
    parts = text.split(".")
    if len(parts) < 2 or not _TXID_RE.match(parts[0]):
        return None
    index = parts[1].strip()
    if not index:
        return (parts[0], 0)  # JavaScript's Number("") is 0
    if not (index.isascii() and index.isdigit()) or len(index.lstrip("0")) > 10:
        return None
    return (parts[0], int(index))


def _filter(key: str, value: Any) -> str | None:
    """The index value a query parameter asks for; None when it can match nothing.

    Raises:
        BadRequest: a value of the wrong type.
    """
    if key == "expiryTime":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequest("query.expiryTime must be a number if provided")
        return str(int(value)) if float(value).is_integer() else None
    if not isinstance(value, str):
        raise BadRequest(f"query.{key} must be a string if provided")
    if key == "uhrpUrl":
        try:
            return url_for_hash(hash_from_url(value))
        except BadRequest:
            return None
    return value


class UhrpLookupService:
    """``ls_uhrp``: finds advertisements by outpoint, UHRP URL, host or expiry time."""

    keeps_spent = False

    def index(self, output: AdmittedOutput) -> Mapping[str, Sequence[str]] | None:
        if output.topic != TOPIC:
            return None
        try:
            token = decode_uhrp_token(output.script)
        except ValueError:
            return None
        return {
            "uhrpUrl": [token.uhrp_url],
            "hostIdentityKey": [token.host_identity_key.hex()],
            "expiryTime": [str(token.expiry)],
        }

    async def lookup(self, query: Any, index: LookupIndex) -> Sequence[FormulaItem]:
        if isinstance(query, list):
            query = {}  # a JavaScript array is an object without any of the parameters
        if not isinstance(query, dict):
            raise BadRequest("Lookup must include a valid query!")
        outpoint = query.get("outpoint")
        if js_truthy(outpoint):
            if not isinstance(outpoint, str):
                raise BadRequest('query.outpoint must be a string "txid.vout"')
            found = _outpoint(outpoint)
            if found is None or await index.fields(found) is None:
                return []
            return [FormulaItem(txid=found[0], vout=found[1])]
        if not any(js_truthy(query.get(key)) for key in ("uhrpUrl", "expiryTime", "hostIdentityKey")):
            raise BadRequest(_NEEDS_A_KEY)
        where: dict[str, Sequence[str]] = {}
        for key in ("uhrpUrl", "expiryTime", "hostIdentityKey"):
            if key in query:
                value = _filter(key, query[key])
                if value is None:
                    return []
                where[key] = [value]
        return [FormulaItem(txid=t, vout=v) for t, v in await index.find(where, newest_first=False)]

    def documentation(self) -> str:
        return _LS_DOCS

    def metadata(self) -> Metadata:
        return Metadata(
            name="UHRP Lookup Service", short_description="Lookup Service for User file hosting commitment tokens"
        )


def tm_uhrp(ctx: PluginContext) -> UhrpTopicManager:
    return UhrpTopicManager(allow_http=ctx.allow_http)


def ls_uhrp(_ctx: PluginContext) -> UhrpLookupService:
    return UhrpLookupService()


#: plug-in factories by name, each taking the :class:`PluginContext`
FACTORIES: Final[Mapping[str, Callable[[PluginContext], TopicManager | LookupService]]] = {
    "tm_uhrp": tm_uhrp,
    "ls_uhrp": ls_uhrp,
}
