"""CBOR decoders of the content, advert, payment and stream messages (``protocol/content.py``,
``protocol/adverts.py``, ``protocol/payments.py``, ``protocol/streams.py``), the pushed DHT record, and the token
scripts (``topics/ship.py``, ``topics/uhrp.py``, ``topics/describe.py``, ``crypto/pushdrop.py``).

Each decoder gets mutated seed encodings (record values: bytes; message bodies: the maps a peer's CBOR frame
carries, with fields changed at any depth; scripts: real SHIP, SLAP and UHRP tokens). Property: only the error each
decoder documents escapes it (a record value the DHT serves to everyone must not break the reader that skips bad
ones); the admission checks and ``describe_output`` never raise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from hypothesis import strategies as st

from overlay_node.crypto import pushdrop
from overlay_node.errors import BadRequest, InvalidPayment, RemoteProtocolError
from overlay_node.protocol import content, payments, streams
from overlay_node.protocol.adverts import AdvertError, decode_advert, decode_index
from overlay_node.services.adverts import record_from_wire
from overlay_node.topics import describe, ship, uhrp

from . import seeds
from .mutate import fuzz_bytes, mutated_values
from .runner import FuzzReport, fuzz_seconds, run_property

pytestmark = pytest.mark.fuzz


@dataclass(frozen=True)
class Target:
    """One decoder: how its input is made, how it is called, and the errors it documents."""

    name: str
    inputs: st.SearchStrategy[Any]
    call: Callable[[Any], object]
    errors: tuple[type[BaseException], ...]


def cbor_values(seed: bytes) -> st.SearchStrategy[bytes]:
    """A record value: the seed's bytes mutated, or its decoded map with fields changed and encoded again."""
    maps = mutated_values([cbor2.loads(seed)]).map(lambda v: bytes(cbor2.dumps(v)))
    return st.one_of(fuzz_bytes([seed], max_size=300), maps)


def bodies(seed: Any) -> st.SearchStrategy[Any]:
    return mutated_values([seed])


def _grant(raw: Any) -> None:
    grant = content.AccessGrant.from_wire(raw)
    k = seeds.keys()
    content.verify_grant(
        grant, content_id=grant.content_id, consumer=k.bob.public_key, producer=k.alice.public_key, now=seeds.NOW
    )


def _quote(raw: Any) -> None:
    payments.Quote.from_wire(raw, signed=not isinstance(raw, dict) or "sig" in raw).verify()


def _payment(raw: Any) -> None:
    known = payments.Quote.from_wire(seeds.message_seeds().quote)
    payments.PaymentMessage.from_wire(raw, max_bytes=4096, quotes=lambda qid: known if qid == known.quote_id else None)


def _receipt(raw: Any) -> None:
    receipt = payments.Receipt.from_wire(raw)
    receipt.verify()
    payments.Receipt.from_bytes(receipt.to_bytes())


KINDS: tuple[ship.Kind, ...] = ("SHIP", "SLAP")
SCRIPT_DECODERS: tuple[Callable[[bytes], object], ...] = (
    ship.decode_ship_token,
    uhrp.decode_uhrp_token,
    pushdrop.decode,
)


def _scripts(script: bytes) -> None:
    for kind in KINDS:
        ship.admissible(script, kind, allow_http=True)
    uhrp.admissible(script, allow_http=True)
    describe.describe_output(script)


def _decode_script(script: bytes) -> None:
    for decode in SCRIPT_DECODERS:
        try:
            decode(script)
        except ValueError:
            pass


def _uri(text: str) -> None:
    ship.is_advertisable_uri(text, allow_http=True)
    ship.parse_url(text)


@pytest.fixture(scope="module")
def targets() -> Sequence[Target]:
    m = seeds.message_seeds()
    publisher = seeds.keys().alice.public_key
    uris = [
        b"https://overlay.example.com",
        b"wss://h.example.com:443/x",
        b"js8c+bsvauth+smf:?lat=1&long=2&freq=3&radius=4",
    ]
    uris += [b"https://xn--bcher-kva.example/", b"https://[::1]:8080/", b"https://0x7f.1/"]
    return (
        Target("provider record", cbor_values(m.provider), content.decode_provider, (BadRequest,)),
        Target("tag record", cbor_values(m.tags), content.decode_tag_items, (BadRequest,)),
        Target("children record", cbor_values(m.children), content.decode_children, (BadRequest,)),
        Target("advert", cbor_values(m.advert), lambda v: decode_advert(v, publisher=publisher), (AdvertError,)),
        Target("advert index", cbor_values(m.index), decode_index, (AdvertError,)),
        Target("access grant", bodies(m.grant), _grant, (BadRequest,)),
        Target("quote", bodies(m.quote), _quote, (BadRequest,)),
        Target("payment", bodies(m.payment), _payment, (BadRequest, InvalidPayment)),
        Target("receipt", bodies(m.receipt), _receipt, (BadRequest,)),
        Target(
            "stored receipt",
            fuzz_bytes([cbor2.dumps(m.receipt, canonical=True)]),
            payments.Receipt.from_bytes,
            (BadRequest,),
        ),
        Target("stream terms", bodies(m.terms), streams.StreamTerms.from_wire, (BadRequest,)),
        Target(
            "packet batch",
            bodies(m.packets),
            lambda v: streams.PacketBatch.from_wire(v, max_packet=64, max_batch=4),
            (RemoteProtocolError,),
        ),
        Target("pushed record", bodies(m.record), record_from_wire, (RemoteProtocolError,)),
        Target("token scripts: admission", fuzz_bytes(m.scripts, max_size=300), _scripts, ()),
        Target("token scripts: decoders", fuzz_bytes(m.scripts, max_size=300), _decode_script, ()),
        Target("advertised URIs", fuzz_bytes(uris).map(lambda b: b.decode("utf-8", "replace")), _uri, ()),
    )


def test_message_decoders(fuzz_report: FuzzReport, targets: Sequence[Target]) -> None:
    share = fuzz_seconds() / len(targets)
    failures: list[str] = []
    for target in targets:

        def check(value: Any, target: Target = target) -> None:
            try:
                target.call(value)
            except target.errors:
                pass

        try:
            run_property(fuzz_report, f"messages: {target.name}", target.inputs, check, seconds=share)
        except Exception as exc:  # noqa: BLE001 -- every decoder gets its turn; the findings are reported together
            failures.append(f"{target.name}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)
