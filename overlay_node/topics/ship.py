"""BRC-88 SHIP and SLAP: the advertisement tokens, the topic managers ``tm_ship`` / ``tm_slap`` and the lookup
services ``ls_ship`` / ``ls_slap``, behaving as the reference overlay-discovery-services do.

1. A token is a lock-before PushDrop script (:mod:`overlay_node.crypto.pushdrop`) with exactly five fields:
   ``SHIP`` or ``SLAP``, the advertiser's identity key (33 bytes), the advertised URI, the topic (``tm_*``) or
   service (``ls_*``) name, and the BRC-3 signature over the first four, made with protocol
   ``[2, "service host interconnect"]`` (SHIP) or ``[2, "service lookup availability"]`` (SLAP), key id ``"1"``,
   counterparty ``anyone``; the token is locked to the advertiser's own child key for ``anyone``.
2. Admission (per output, nothing retained): the script decodes as PushDrop, has exactly five fields, field 0 reads
   ``SHIP`` (``SLAP``), field 2 is an advertisable URI (:func:`is_advertisable_uri`), field 3 is a BRC-87 name
   with the ``tm_`` (``ls_``) prefix, and the signature is linked (:func:`overlay_node.crypto.pushdrop.is_linked`).
   Text fields are read as @bsv/sdk's ``Utils.toUTF8`` reads them (a leading BOM dropped, bad bytes replaced).
   The reference topic managers call their async linkage check without awaiting it, so in effect they skip it;
   this one applies it, as BRC-88 and the reference's own tests intend.
3. URIs are judged by the reference rules (``isAdvertisableURI``), with the WHATWG URL parsing the reference gets
   from ``new URL`` reproduced here for the special schemes (:func:`parse_url`): the host as the parser reads it
   (percent-decoded, IDNA-mapped, lower-cased, IPv4 numbers and IPv6 literals checked), the path with its dot
   segments resolved. ``https://`` and its ``+bsvauth``/``+smf``/``+scrypt-offchain``/``+rtt`` variants: a host
   that is not ``localhost`` and no path; ``wss://``: a host that is not ``localhost``; ``js8c+bsvauth+smf:``: a
   query with ``lat``, ``long``, ``freq`` and ``radius`` in range. With ``allow_http`` (nodes configured for local
   testing) ``http://`` is also accepted under the https rules. Hosts with non-ASCII labels are mapped with the
   standard library's IDNA 2003 nameprep, close to but not exactly UTS 46.
4. The lookup services index an output admitted by their topic under ``identityKey`` (hex of field 1),
   ``domain`` (field 2) and ``topic`` (SHIP) or ``service`` (SLAP) (field 3), and answer the reference's query
   shapes with its validation messages, newest first unless ``sortOrder`` is ``"asc"``.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

import idna

from overlay_node.crypto import pushdrop
from overlay_node.crypto.brc42 import ProtocolID
from overlay_node.crypto.keys import Identity
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

__all__ = [
    "FACTORIES",
    "NAME_RE",
    "SHIP_PROTOCOL",
    "SLAP_PROTOCOL",
    "Kind",
    "ParsedURL",
    "ShipLookupService",
    "ShipToken",
    "ShipTopicManager",
    "decode_ship_token",
    "is_advertisable_uri",
    "is_valid_name",
    "js_truthy",
    "page_arguments",
    "parse_url",
    "protocol_for",
    "ship_fields",
    "ship_is_linked",
    "ship_signature",
    "ship_token",
    "to_utf8",
]

Kind = Literal["SHIP", "SLAP"]

SHIP_PROTOCOL: Final[ProtocolID] = (2, "service host interconnect")
SLAP_PROTOCOL: Final[ProtocolID] = (2, "service lookup availability")
#: BRC-87 names as the reference SHIP/SLAP topic managers enforce them (letters and single underscores, no digits)
NAME_RE: Final = re.compile(r"(?=.{1,50}\Z)(?:tm_|ls_)[a-z]+(?:_[a-z]+)*\Z")
#: which topic manager admits a kind's tokens, and the index key its lookup service files the name under
TOPIC_OF: Final[dict[Kind, str]] = {"SHIP": "tm_ship", "SLAP": "tm_slap"}
NAME_KEY: Final[dict[Kind, str]] = {"SHIP": "topic", "SLAP": "service"}
_PREFIX: Final[dict[Kind, str]] = {"SHIP": "tm_", "SLAP": "ls_"}


def to_utf8(data: bytes) -> str:
    """Bytes as text the way @bsv/sdk's ``Utils.toUTF8`` (a default ``TextDecoder``) reads them: a leading BOM is
    dropped and each invalid sequence becomes U+FFFD."""
    return bytes(data).decode("utf-8-sig", errors="replace")


def is_valid_name(name: str) -> bool:
    """A BRC-87 topic or service name as the reference checks it (``tm_``/``ls_``, lower-case letters in words
    joined by single underscores, at most 50 characters)."""
    return isinstance(name, str) and NAME_RE.match(name) is not None


def protocol_for(kind: Kind) -> ProtocolID:
    """The BRC-43 protocol a kind's tokens are signed and locked under."""
    return SHIP_PROTOCOL if kind == "SHIP" else SLAP_PROTOCOL


# -- tokens ------------------------------------------------------------------------------------------------------


def ship_fields(kind: Kind, identity_key: bytes, uri: str, name: str) -> list[bytes]:
    """The four signed fields f0..f3 of a token."""
    return [kind.encode(), bytes(identity_key), uri.encode(), name.encode()]


def ship_signature(identity: Identity, kind: Kind, uri: str, name: str) -> bytes:
    """The token's BRC-88 signature (field 4) by ``identity``."""
    return pushdrop.token_signature(identity, ship_fields(kind, identity.public_key, uri, name), protocol_for(kind))


def ship_is_linked(kind: Kind, identity_key: bytes, uri: str, name: str, locking_key: bytes, signature: bytes) -> bool:
    """The reference linkage check of a token given by its values (the text fields UTF-8 encoded)."""
    fields = ship_fields(kind, identity_key, uri, name)
    return pushdrop.is_linked(identity_key, locking_key, fields, signature, protocol_for(kind))


def ship_token(identity: Identity, kind: Kind, uri: str, name: str) -> bytes:
    """The locking script of a signed SHIP or SLAP token advertising ``name`` at ``uri``.

    Raises:
        ValueError: an unknown kind, or a name that is not a BRC-87 name of that kind (``tm_`` for SHIP, ``ls_``
            for SLAP). The URI is not judged here (see :func:`is_advertisable_uri`).
    """
    if kind not in ("SHIP", "SLAP"):
        raise ValueError(f"token kind {kind!r} is neither SHIP nor SLAP")
    if not is_valid_name(name) or not name.startswith(_PREFIX[kind]):
        raise ValueError(f"{kind} tokens advertise {_PREFIX[kind]}* names (BRC-87), not {name!r}")
    return pushdrop.lock(identity, ship_fields(kind, identity.public_key, uri, name), protocol_for(kind))


@dataclass(frozen=True, slots=True, kw_only=True)
class ShipToken:
    """A decoded SHIP or SLAP token. ``uri`` and ``name`` are read as @bsv/sdk reads them; ``fields`` are the raw
    signed fields f0..f3 (what the signature covers)."""

    kind: Kind
    identity_key: bytes
    uri: str
    name: str
    locking_key: bytes
    signature: bytes
    fields: tuple[bytes, ...]

    def is_linked(self) -> bool:
        """The reference linkage check over the token's own bytes."""
        return pushdrop.is_linked(
            self.identity_key, self.locking_key, self.fields, self.signature, protocol_for(self.kind)
        )


def decode_ship_token(script: bytes) -> ShipToken:
    """Read a SHIP or SLAP token: a PushDrop script of exactly five fields whose first reads ``SHIP`` or ``SLAP``.
    Nothing else is judged (see :func:`admissible` for the admission rules).

    Raises:
        ValueError: not such a script.
    """
    token = pushdrop.decode(script)
    if len(token.fields) != 5:
        raise ValueError(f"a SHIP/SLAP token has 5 fields, this script has {len(token.fields)}")
    protocol = to_utf8(token.fields[0])
    kind: Kind
    if protocol == "SHIP":
        kind = "SHIP"
    elif protocol == "SLAP":
        kind = "SLAP"
    else:
        raise ValueError("field 0 is neither SHIP nor SLAP")
    return ShipToken(
        kind=kind,
        identity_key=token.fields[1],
        uri=to_utf8(token.fields[2]),
        name=to_utf8(token.fields[3]),
        locking_key=token.locking_key,
        signature=token.fields[4],
        fields=token.fields[:4],
    )


def admissible(script: bytes, kind: Kind, *, allow_http: bool = False) -> bool:
    """Whether ``tm_ship`` (``kind`` SHIP) or ``tm_slap`` (SLAP) admits an output with this locking script."""
    try:
        token = decode_ship_token(script)
    except ValueError:
        return False
    return (
        token.kind == kind
        and is_advertisable_uri(token.uri, allow_http=allow_http)
        and is_valid_name(token.name)
        and token.name.startswith(_PREFIX[kind])
        and token.is_linked()
    )


# -- URLs (the part of the WHATWG URL standard the reference's checks depend on) --------------------------------

_SPECIAL: Final = frozenset(("http", "https", "ws", "wss", "ftp"))
_C0_AND_SPACE: Final = "".join(map(chr, range(0x21)))
_FORBIDDEN_DOMAIN: Final = frozenset("\x00\t\n\r #/:<>?@[\\]^|%\x7f") | frozenset(map(chr, range(0x20)))
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:")
_PERCENT_RE: Final = re.compile(rb"%([0-9A-Fa-f]{2})")
_DOUBLE_DOT: Final = frozenset(("..", ".%2e", "%2e.", "%2e%2e"))
_SINGLE_DOT: Final = frozenset((".", "%2e"))
#: what a URL path percent-encodes: C0 controls, space, ``"``, ``<``, ``>``, backquote, braces, and beyond ``~``
_PATH_ESCAPE: Final = re.compile('[\x00-\x20"<>`{}\x7f-\U0010ffff]')


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """What ``new URL(...)`` gives for a special-scheme URL, as far as the checks here need it."""

    scheme: str
    hostname: str
    pathname: str


def _ipv4_number(part: str) -> int | None:
    radix = 10
    if part[:2] in ("0x", "0X"):
        part, radix = part[2:], 16
    elif len(part) >= 2 and part[0] == "0":
        part, radix = part[1:], 8
    if not part:
        return 0
    digits = "0123456789abcdef"[:radix]
    if any(c not in digits for c in part.lower()):
        return None
    if len(part.lstrip("0")) > 32:  # far beyond any address (and int() refuses very long decimal strings)
        return 2**128
    return int(part, radix)


def _ends_in_number(host: str) -> bool:
    parts = host.split(".")
    if parts[-1] == "":
        if len(parts) == 1:
            return False
        parts.pop()
    last = parts[-1]
    if last and all("0" <= c <= "9" for c in last):
        return True
    return last[:2] in ("0x", "0X") and all(c in "0123456789abcdefABCDEF" for c in last[2:])


def _ipv4(host: str) -> str | None:
    """The WHATWG IPv4 parser: the dotted-decimal address, or None on failure."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4 or any(p == "" for p in parts):
        return None
    numbers = [_ipv4_number(p) for p in parts]
    values = [n for n in numbers if n is not None]
    if len(values) != len(numbers) or any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    address = values[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(values[:-1]))
    return str(ipaddress.IPv4Address(address))


def _label_ok(label: str) -> bool:
    """UTS 46 validity of one (Unicode) label as Node's URL parser (ada) checks it: NFC, no dot, no leading
    combining mark; then the first ZWJ/ZWNJ, if any, decides (valid where CONTEXTJ allows it, and then nothing
    more is checked); else the bidi rules (:func:`_bidi_ok`). Hyphens and lengths are not checked."""
    if not label:
        return True
    try:
        idna.check_nfc(label)
        idna.check_initial_combiner(label)
        if "." in label:
            return False
        for i, c in enumerate(label):
            if c in "\u200c\u200d":
                return bool(idna.valid_contextj(label, i))
    except (idna.IDNAError, ValueError):  # ValueError: a code point without a name next to a joiner
        return False
    return _bidi_ok(label)


_RTL_CLASSES: Final = frozenset(("R", "AL", "AN", "EN", "ES", "CS", "ET", "ON", "BN", "NSM"))
_LTR_CLASSES: Final = frozenset(("L", "EN", "ES", "CS", "ET", "ON", "BN", "NSM"))


def _bidi_ok(label: str) -> bool:
    """The bidi rules Node's URL parser (ada) applies, as observed (not quite RFC 5893's): only a label holding a
    right-to-left character (R, AL, AN) is checked. If it starts with a left-to-right one (L), every character
    before the last one that is not an NSM must be of a left-to-right class; otherwise every character must be of
    a right-to-left class, the last non-NSM one R, AL, EN or AN, and EN and AN must not both occur."""
    classes = [unicodedata.bidirectional(c) for c in label]
    if not any(c in ("R", "AL", "AN") for c in classes):
        return True
    last = len(classes) - 1
    while classes[last] == "NSM":
        last -= 1
    if classes[0] == "L":
        return all(c in _LTR_CLASSES for c in classes[:last])
    return (
        all(c in _RTL_CLASSES for c in classes)
        and classes[last] in ("R", "AL", "EN", "AN")
        and not ("EN" in classes and "AN" in classes)
    )


def _domain_to_ascii(domain: str) -> str | None:
    """WHATWG "domain to ASCII" (not strict): UTS 46 ToASCII, non-transitional, without STD3 rules, hyphen or
    length checks; then no forbidden domain code point. None on failure. Labels are validated as Node's URL parser
    (ada) validates them (:func:`_label_ok`: only some of RFC 5893's bidi rules). The mapping tables are the
    ``idna`` package's Unicode version, which may differ from Node's for recently changed code points (U+1E9E maps
    to "ss" in Node 20, to U+00DF here)."""
    if domain.isascii() and not any(label[:4].lower() == "xn--" for label in domain.split(".")):
        ascii_domain = domain.lower()
    else:
        try:
            mapped = idna.uts46_remap(domain, std3_rules=False, transitional=False)
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
        labels = mapped.split(".")
        unicode_labels = []
        out = []
        for label in labels:
            if label.startswith("xn--"):
                try:
                    decoded = label[4:].encode("ascii").decode("punycode")
                    valid = bool(decoded) and idna.uts46_remap(decoded, std3_rules=False, transitional=False) == decoded
                except (idna.IDNAError, UnicodeError, ValueError):
                    return None
                if not valid:
                    return None
                unicode_labels.append(decoded)
                out.append(label)
            else:
                unicode_labels.append(label)
                out.append(label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii"))
        if not all(_label_ok(label) for label in unicode_labels):
            return None
        ascii_domain = ".".join(out)
    if not ascii_domain or any(c in _FORBIDDEN_DOMAIN for c in ascii_domain):
        return None
    return ascii_domain


def _ipv6_text(packed: bytes) -> str:
    """The WHATWG serialization of an IPv6 address: hex groups, the first longest run of two or more zero groups
    compressed to ``::``."""
    groups = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    best, best_len, i = -1, 1, 0
    while i < 8:
        j = i
        while j < 8 and groups[j] == 0:
            j += 1
        if j - i > best_len:
            best, best_len = i, j - i
        i = j + 1 if j == i else j
    if best < 0:
        return ":".join(f"{g:x}" for g in groups)
    head = ":".join(f"{g:x}" for g in groups[:best])
    tail = ":".join(f"{g:x}" for g in groups[best + best_len :])
    return f"{head}::{tail}"


def _host(text: str) -> str | None:
    """The WHATWG host parser for special URLs: the serialized host, or None on failure."""
    if text.startswith("["):
        if not text.endswith("]") or "%" in text:
            return None
        try:
            packed = ipaddress.IPv6Address(text[1:-1]).packed
        except ValueError:
            return None
        return f"[{_ipv6_text(packed)}]"
    raw = _PERCENT_RE.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8", "surrogatepass"))
    domain = _domain_to_ascii(raw.decode("utf-8", errors="replace"))
    if domain is None:
        return None
    return _ipv4(domain) if _ends_in_number(domain) else domain


def _pathname(path: str) -> str:
    """The serialized path of a special URL whose path part (before any ``?`` or ``#``) is ``path``."""
    if path[:1] in ("/", "\\"):
        path = path[1:]
    segments = re.split(r"[/\\]", path)
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        lowered = segment.lower()
        if lowered in _DOUBLE_DOT:
            if out:
                out.pop()
            if last:
                out.append("")
        elif lowered in _SINGLE_DOT:
            if last:
                out.append("")
        else:
            out.append(_PATH_ESCAPE.sub(_escape, segment))
    return "/" + "/".join(out)


def _escape(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode("utf-8", errors="replace"))


def parse_url(url: str) -> ParsedURL | None:
    """Parse ``url`` as the WHATWG URL standard (``new URL(url)``) does, for the special schemes (http, https, ws,
    wss, ftp); None when the parser would fail or the scheme is not special."""
    text = re.sub(r"[\t\n\r]", "", url.strip(_C0_AND_SPACE))
    match = _SCHEME_RE.match(text)
    if match is None:
        return None
    scheme = match.group()[:-1].lower()
    if scheme not in _SPECIAL:
        return None
    rest = text[match.end() :].lstrip("/\\")
    end = len(rest)
    for delimiter in "/\\?#":
        at = rest.find(delimiter)
        if at != -1:
            end = min(end, at)
    authority, remainder = rest[:end], rest[end:]
    host_port = authority[authority.rfind("@") + 1 :]
    brackets = False
    colon = -1
    for i, c in enumerate(host_port):
        if c == "[":
            brackets = True
        elif c == "]":
            brackets = False
        elif c == ":" and not brackets:
            colon = i
            break
    host_text, port = (host_port, "") if colon < 0 else (host_port[:colon], host_port[colon + 1 :])
    if not host_text or (port and not (port.isascii() and port.isdigit() and len(port.lstrip("0")) <= 5)):
        return None
    if port and int(port) > 65535:
        return None
    hostname = _host(host_text)
    if hostname is None:
        return None
    cut = len(remainder)
    for delimiter in "?#":
        at = remainder.find(delimiter)
        if at != -1:
            cut = min(cut, at)
    return ParsedURL(scheme=scheme, hostname=hostname, pathname=_pathname(remainder[:cut]))


_HTTPS_PREFIXES: Final = (
    "https://",
    "https+bsvauth://",
    "https+bsvauth+smf://",
    "https+bsvauth+scrypt-offchain://",
    "https+rtt://",
)
#: what JavaScript's parseFloat skips first: white space (Unicode Zs, BOM) and line terminators
_JS_SPACE: Final = (
    "\t\n\v\f\r \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_JS_FLOAT: Final = re.compile(r"[+-]?(?:Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_FIRST_NUMBER: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _parse_float(text: str) -> float | None:
    """JavaScript's ``parseFloat``: the longest decimal prefix after leading white space; None for NaN."""
    match = _JS_FLOAT.match(text.lstrip(_JS_SPACE))
    return float(match.group()) if match else None


def _host_only(uri: str) -> bool:
    parsed = parse_url(uri)
    return parsed is not None and parsed.hostname != "localhost" and parsed.pathname == "/"


def _js8c_ok(uri: str) -> bool:
    at = uri.find("?")
    if at == -1:
        return False
    params: dict[str, str] = {}
    for key, value in parse_qsl(uri[at + 1 :], keep_blank_values=True, errors="replace"):
        params.setdefault(key, value)
    lat_s, long_s, freq_s, radius_s = (params.get(k, "") for k in ("lat", "long", "freq", "radius"))
    if not (lat_s and long_s and freq_s and radius_s):
        return False
    lat, lon = _parse_float(lat_s), _parse_float(long_s)
    if lat is None or not -90 <= lat <= 90 or lon is None or not -180 <= lon <= 180:
        return False
    for text in (freq_s, radius_s):
        number = _FIRST_NUMBER.search(text)
        if number is None or float(number.group()) <= 0:
            return False
    return True


def is_advertisable_uri(uri: str, *, allow_http: bool = False) -> bool:
    """The reference ``isAdvertisableURI`` (see the module docstring); with ``allow_http``, ``http://`` URIs are
    judged by the ``https://`` rules too (for nodes configured for local testing)."""
    for prefix in _HTTPS_PREFIXES:
        if uri.startswith(prefix):
            return _host_only("https://" + uri[len(prefix) :])
    if uri.startswith("wss://"):
        parsed = parse_url(uri)
        return parsed is not None and parsed.hostname != "localhost"
    if uri.startswith("js8c+bsvauth+smf:"):
        return _js8c_ok(uri)
    if allow_http and uri.startswith("http://"):
        return _host_only(uri)
    return False


# -- the plug-ins ------------------------------------------------------------------------------------------------

_TM_DOCS: Final[dict[Kind, str]] = {
    "SHIP": """# tm_ship: SHIP advertisements (BRC-88)

Admits the outputs of a transaction that are **SHIP tokens**: a host's statement that it hosts a topic.

A SHIP token is a PushDrop output (`<locking key> OP_CHECKSIG <fields> OP_2DROP… [OP_DROP]`) with five fields:

1. `SHIP` (UTF-8);
2. the advertiser's identity key (33-byte compressed public key);
3. the URI the host answers at, e.g. `https://overlay.example.com`;
4. the topic name, a BRC-87 `tm_` name (lower-case letters and single underscores, at most 50 characters);
5. a signature over fields 1-4, made with BRC-42 protocol `[2, "service host interconnect"]`, key id `1`,
   counterparty `anyone`.

An output is admitted when all of these hold:

- the URI is advertisable: `https://` (or `https+bsvauth://`, `https+bsvauth+smf://`,
  `https+bsvauth+scrypt-offchain://`, `https+rtt://`) with a host other than `localhost` and no path, `wss://` with
  a host other than `localhost`, or `js8c+bsvauth+smf:` with `lat`, `long`, `freq` and `radius`;
- the topic name is valid and starts with `tm_`;
- the locking key is the advertiser's child key for `anyone` under the protocol above, and the signature verifies
  under it.

Spending a token revokes the advertisement; spent tokens are not kept (no coins are retained).
""",
    "SLAP": """# tm_slap: SLAP advertisements (BRC-88)

Admits the outputs of a transaction that are **SLAP tokens**: a host's statement that it answers a lookup service.

A SLAP token is a PushDrop output (`<locking key> OP_CHECKSIG <fields> OP_2DROP… [OP_DROP]`) with five fields:

1. `SLAP` (UTF-8);
2. the advertiser's identity key (33-byte compressed public key);
3. the URI the host answers at, e.g. `https://overlay.example.com`;
4. the service name, a BRC-87 `ls_` name (lower-case letters and single underscores, at most 50 characters);
5. a signature over fields 1-4, made with BRC-42 protocol `[2, "service lookup availability"]`, key id `1`,
   counterparty `anyone`.

An output is admitted when all of these hold:

- the URI is advertisable: `https://` (or `https+bsvauth://`, `https+bsvauth+smf://`,
  `https+bsvauth+scrypt-offchain://`, `https+rtt://`) with a host other than `localhost` and no path, `wss://` with
  a host other than `localhost`, or `js8c+bsvauth+smf:` with `lat`, `long`, `freq` and `radius`;
- the service name is valid and starts with `ls_`;
- the locking key is the advertiser's child key for `anyone` under the protocol above, and the signature verifies
  under it.

Spending a token revokes the advertisement; spent tokens are not kept (no coins are retained).
""",
}

_LS_DOCS: Final[dict[Kind, str]] = {
    kind: f"""# {"ls_ship" if kind == "SHIP" else "ls_slap"}: find {kind} advertisements

Answers with the unspent {kind} tokens admitted by `{TOPIC_OF[kind]}`, newest first.

Queries:

- `"findAll"`: every token;
- `{{"findAll": true, "limit"?: n, "skip"?: n, "sortOrder"?: "asc" | "desc"}}`: every token, a page at a time;
- `{{"domain"?: uri, {'"topics"?: [names]' if kind == "SHIP" else '"service"?: name'}, "identityKey"?: hex,
  "limit"?: n, "skip"?: n, "sortOrder"?: "asc" | "desc"}}`: the tokens matching every filter given
  ({"any of the listed topics" if kind == "SHIP" else "that exact service"}; `identityKey` is the advertiser's
  public key in lower-case hex; `domain` the advertised URI as written in the token).

`limit` (0: no limit) and `skip` are non-negative numbers; `sortOrder` defaults to `"desc"` (newest first).
Anything else is refused with a message naming the offending parameter.
"""
    for kind in ("SHIP", "SLAP")
}

_TM_META: Final[dict[Kind, Metadata]] = {
    "SHIP": Metadata(name="SHIP Topic Manager", short_description="Manages SHIP tokens for service host interconnect."),
    "SLAP": Metadata(
        name="SLAP Topic Manager", short_description="Manages SLAP tokens for service lookup availability."
    ),
}
_LS_META: Final[dict[Kind, Metadata]] = {
    "SHIP": Metadata(name="SHIP Lookup Service", short_description="Provides lookup capabilities for SHIP tokens."),
    "SLAP": Metadata(name="SLAP Lookup Service", short_description="Provides lookup capabilities for SLAP tokens."),
}


class ShipTopicManager:
    """``tm_ship`` (kind ``SHIP``) or ``tm_slap`` (kind ``SLAP``): admits valid, linked advertisement tokens."""

    def __init__(self, kind: Kind, *, allow_http: bool = False) -> None:
        if kind not in ("SHIP", "SLAP"):
            raise ValueError(f"kind {kind!r} is neither SHIP nor SLAP")
        self.kind: Kind = kind
        self.allow_http = allow_http

    def admissible_outputs(self, tx: TaggedTx, _previous_coins: Sequence[int]) -> Admittance:
        admit = tuple(
            i
            for i, output in enumerate(tx.tx.outputs)
            if admissible(output.script, self.kind, allow_http=self.allow_http)
        )
        return Admittance(outputs_to_admit=admit, coins_to_retain=())

    def needed_inputs(self, _tx: TaggedTx) -> Sequence[Outpoint]:
        return ()

    def documentation(self) -> str:
        return _TM_DOCS[self.kind]

    def metadata(self) -> Metadata:
        return _TM_META[self.kind]


_LIMIT_ERROR: Final = "query.limit must be a positive number if provided"
_SKIP_ERROR: Final = "query.skip must be a non-negative number if provided"
_SORT_ERROR: Final = 'query.sortOrder must be "asc" or "desc" if provided'
_FORMAT_ERROR: Final = 'Invalid query format. Query must be "findAll" string or an object with valid parameters.'


def js_truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON value (empty arrays and objects are true, 0, "" and null false)."""
    if isinstance(value, list | dict):
        return True
    return bool(value) and value == value  # NaN is false


def _count(query: Mapping[str, Any], key: str, message: str) -> int:
    """A pagination number: absent -> 0; otherwise a non-negative number (integral, as the store needs)."""
    if key not in query:
        return 0
    value = query[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise BadRequest(message)
    if isinstance(value, float) and not value.is_integer():
        raise BadRequest(message)
    return int(value)


def page_arguments(query: Mapping[str, Any]) -> tuple[int | None, int, bool]:
    """``limit`` (None: no limit), ``skip`` and newest-first of a reference query, validated in its order.

    Raises:
        BadRequest: the reference's message for a bad ``limit``, ``skip`` or ``sortOrder``.
    """
    limit = _count(query, "limit", _LIMIT_ERROR)
    skip = _count(query, "skip", _SKIP_ERROR)
    order = query.get("sortOrder", "desc")
    if "sortOrder" in query and order not in ("asc", "desc"):
        raise BadRequest(_SORT_ERROR)
    return (limit or None), skip, order != "asc"


class ShipLookupService:
    """``ls_ship`` (kind ``SHIP``) or ``ls_slap`` (kind ``SLAP``)."""

    keeps_spent = False

    def __init__(self, kind: Kind) -> None:
        if kind not in ("SHIP", "SLAP"):
            raise ValueError(f"kind {kind!r} is neither SHIP nor SLAP")
        self.kind: Kind = kind

    def index(self, output: AdmittedOutput) -> Mapping[str, Sequence[str]] | None:
        if output.topic != TOPIC_OF[self.kind]:
            return None
        try:
            token = decode_ship_token(output.script)
        except ValueError:
            return None
        if token.kind != self.kind:
            return None
        return {"identityKey": [token.identity_key.hex()], "domain": [token.uri], NAME_KEY[self.kind]: [token.name]}

    async def lookup(self, query: Any, index: LookupIndex) -> Sequence[FormulaItem]:
        if query is None:
            raise BadRequest("A valid query must be provided!")
        if query == "findAll":
            return _items(await index.find({}))
        if isinstance(query, list):
            query = {}  # a JavaScript array is an object without any of the parameters
        if not isinstance(query, dict):
            raise BadRequest(_FORMAT_ERROR)
        if js_truthy(query.get("findAll")):
            limit, skip, newest_first = page_arguments(query)
            return _items(await index.find({}, limit=limit, skip=skip, newest_first=newest_first))
        where = self._where(query)
        limit, skip, newest_first = page_arguments(query)
        if any(not values for values in where.values()):
            return []  # an empty topic list matches nothing
        return _items(await index.find(where, limit=limit, skip=skip, newest_first=newest_first))

    def _where(self, query: Mapping[str, Any]) -> dict[str, Sequence[str]]:
        """The index fields a reference query asks for, validated in its order."""
        where: dict[str, Sequence[str]] = {}
        if "domain" in query:
            if not isinstance(query["domain"], str):
                raise BadRequest("query.domain must be a string if provided")
            where["domain"] = [query["domain"]]
        if self.kind == "SHIP":
            if "topics" in query:
                if not isinstance(query["topics"], list):
                    raise BadRequest("query.topics must be an array of strings if provided")
                where["topic"] = [t for t in query["topics"] if isinstance(t, str)]
        elif "service" in query:
            if not isinstance(query["service"], str):
                raise BadRequest("query.service must be a string if provided")
            where["service"] = [query["service"]]
        if "identityKey" in query:
            if not isinstance(query["identityKey"], str):
                raise BadRequest("query.identityKey must be a string if provided")
            where["identityKey"] = [query["identityKey"]]
        return where

    def documentation(self) -> str:
        return _LS_DOCS[self.kind]

    def metadata(self) -> Metadata:
        return _LS_META[self.kind]


def _items(outpoints: Sequence[Outpoint]) -> list[FormulaItem]:
    return [FormulaItem(txid=txid, vout=vout) for txid, vout in outpoints]


def tm_ship(ctx: PluginContext) -> ShipTopicManager:
    return ShipTopicManager("SHIP", allow_http=ctx.allow_http)


def tm_slap(ctx: PluginContext) -> ShipTopicManager:
    return ShipTopicManager("SLAP", allow_http=ctx.allow_http)


def ls_ship(_ctx: PluginContext) -> ShipLookupService:
    return ShipLookupService("SHIP")


def ls_slap(_ctx: PluginContext) -> ShipLookupService:
    return ShipLookupService("SLAP")


#: plug-in factories by name, each taking the :class:`PluginContext`
FACTORIES: Final[Mapping[str, Callable[[PluginContext], TopicManager | LookupService]]] = {
    "tm_ship": tm_ship,
    "tm_slap": tm_slap,
    "ls_ship": ls_ship,
    "ls_slap": ls_slap,
}
