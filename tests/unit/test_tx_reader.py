"""The plain-transaction fast reader of chain/formats.py agrees with the careful one on every input: the same
transaction, or None where the careful one decides (and refuses with its reason)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.chain.formats import Cursor, _plain_tx, _read_tx
from overlay_node.chain.refusals import Refusal
from overlay_node.crypto.bump import varint_bytes

scripts = st.binary(max_size=300)


@st.composite
def transactions(draw: st.DrawFn) -> bytes:
    inputs = draw(
        st.lists(st.tuples(st.binary(min_size=36, max_size=36), scripts, st.integers(0, 2**32 - 1)), max_size=4)
    )
    outputs = draw(st.lists(st.tuples(st.integers(0, 2**64 - 1), scripts), max_size=4))
    raw = draw(st.binary(min_size=4, max_size=4)) + varint_bytes(len(inputs))
    for outpoint, script, sequence in inputs:
        raw += outpoint + varint_bytes(len(script)) + script + sequence.to_bytes(4, "little")
    raw += varint_bytes(len(outputs))
    for satoshis, script in outputs:
        raw += satoshis.to_bytes(8, "little") + varint_bytes(len(script)) + script
    return raw + draw(st.binary(min_size=4, max_size=4))


def careful(data: bytes) -> tuple[object, int] | None:
    cur = Cursor(data)
    try:
        return _read_tx(cur, allow_ef=False, fast=False), cur.pos
    except Refusal:
        return None


@settings(max_examples=400)
@given(transactions(), st.integers(0, 40), st.binary(max_size=8))
def test_fast_and_careful_readers_agree(raw: bytes, cut: int, tail: bytes) -> None:
    for data in (raw, raw[: max(0, len(raw) - cut)], raw + tail):
        fast = _plain_tx(data, 0)
        if fast is not None:
            assert fast == careful(data)


@given(st.binary(max_size=200))
def test_garbage(data: bytes) -> None:
    fast = _plain_tx(data, 0)
    if fast is not None:
        assert fast == careful(data)


@given(transactions())
def test_the_fast_reader_reads_ordinary_transactions(raw: bytes) -> None:
    expected = careful(raw)
    assert expected is not None
    ptx = expected[0]
    ordinary = all(len(i.script) < 0xFD for i in ptx.inputs) and all(len(o.script) < 0xFD for o in ptx.outputs)  # type: ignore[attr-defined]
    assert (_plain_tx(raw, 0) == expected) if ordinary else (_plain_tx(raw, 0) is None)
