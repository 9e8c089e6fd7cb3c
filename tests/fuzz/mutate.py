"""Mutations of valid encodings, shared by the hypothesis properties and the socket fuzz.

A fuzz input is mostly a real encoding with a few of these done to it: bit flips, truncation, inserted or deleted
bytes, bytes that mean something to a parser (CBOR heads and tags, VarInt prefixes, CRLFs, digits) written over
it, a splice with another seed, a duplicated run. The same code drives both fuzzers: :class:`Chooser` is either a
hypothesis ``draw`` (so failures shrink) or a ``random.Random`` (the socket fuzz, which needs no shrinking).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from hypothesis import strategies as st

#: byte runs that mean something to one of the parsers (CBOR heads, tags and breaks; VarInt prefixes; HTTP
#: delimiters; JSON punctuation; numbers at the edges)
TOKENS: tuple[bytes, ...] = (
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\x17",
    b"\x18\xff",
    b"\x19\xff\xff",
    b"\x1a\xff\xff\xff\xff",
    b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x3b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x5f",
    b"\x7f",
    b"\x9f",
    b"\xbf",
    b"\xff",
    b"\xf9\x7c\x00",
    b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00",
    b"\xfb\x7f\xf0\x00\x00\x00\x00\x00\x00",
    b"\xc1\xfb\x7f\xef\xff\xff\xff\xff\xff\xff",
    b"\xc0\x60",
    b"\xc2\x58\x40" + b"\xff" * 64,
    b"\xd8\x1c\x80",
    b"\xd8\x1d\x00",
    b"\xd8\x23\x62(a",
    b"\xd9\x01\x02\x80",
    b"\xd9\xd9\xf7",
    b"\xfd\xff\xff",
    b"\xfe\xff\xff\xff\xff",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"0",
    b"-1",
    b"99999999999999999999",
    b"1e999",
    b"NaN",
    b"Infinity",
    b'"',
    b"\\u0000",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b"[" * 200,
    b"%00",
    b"\xc3\x28",
    b"\xef\xbb\xbf",
    # digits str.isdigit() takes and int() does not: superscript two (UTF-8, then Latin-1), Arabic-Indic one
    b"\xc2\xb2",
    b"\xb2",
    b"\xd9\xa1",
)


class Chooser(Protocol):
    """Where the mutations take their choices from."""

    def integer(self, lo: int, hi: int) -> int: ...

    def raw(self, max_size: int) -> bytes: ...


class DrawChooser:
    """Choices drawn by hypothesis (inside ``@st.composite``), so that a failing input shrinks."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def integer(self, lo: int, hi: int) -> int:
        # one shared strategy (building and validating a strategy per choice costs more than the fuzzed code)
        return lo + self._draw(_CHOICE) % (hi - lo + 1)

    def raw(self, max_size: int) -> bytes:
        value: bytes = self._draw(_binary(max_size))
        return value


_CHOICE: Final = st.integers(0, 2**16 - 1)


@functools.cache
def _binary(max_size: int) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


class RandomChooser:
    """Choices from a seeded ``random.Random`` (the socket fuzz)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def raw(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


def mutate(
    data: bytes, seeds: Sequence[bytes], choose: Chooser, *, rounds: int = 4, tokens: Sequence[bytes] = TOKENS
) -> bytes:
    """``data`` with 1 to ``rounds`` mutations done to it."""
    out = bytearray(data)
    for _ in range(choose.integer(1, rounds)):
        op = choose.integer(0, 8)
        n = len(out)
        pos = choose.integer(0, n)
        if op == 0 and n:  # flip a bit
            out[pos % n] ^= 1 << choose.integer(0, 7)
        elif op == 1:  # truncate
            del out[pos:]
        elif op == 2:  # insert random bytes
            out[pos:pos] = choose.raw(16)
        elif op == 3:  # delete a run
            del out[pos : pos + choose.integer(1, 16)]
        elif op == 4:  # write a meaningful token over the bytes there
            token = tokens[choose.integer(0, len(tokens) - 1)]
            out[pos : pos + len(token)] = token
        elif op == 5:  # insert a meaningful token
            token = tokens[choose.integer(0, len(tokens) - 1)]
            out[pos:pos] = token
        elif op == 6 and seeds:  # splice: our head, another seed's tail
            other = seeds[choose.integer(0, len(seeds) - 1)]
            out = out[:pos] + other[choose.integer(0, len(other)) :]
        elif op == 7:  # duplicate a run
            out[pos:pos] = out[pos : pos + choose.integer(1, 32)]
        elif n:  # set one byte
            out[pos % n] = choose.integer(0, 255)
    return bytes(out)


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], rounds: int = 4) -> bytes:
    """A seed with a few mutations (see :func:`mutate`)."""
    choose = DrawChooser(draw)
    seed = seeds[choose.integer(0, len(seeds) - 1)]
    return mutate(seed, seeds, choose, rounds=rounds)


def fuzz_bytes(seeds: Sequence[bytes], max_size: int = 512) -> st.SearchStrategy[bytes]:
    """Inputs for a byte-level decoder: mostly mutated seeds, some seeds as they are, some random bytes."""
    return st.one_of(
        mutated(seeds),
        mutated(seeds, rounds=12),
        st.sampled_from(seeds),
        st.binary(max_size=max_size),
    )


# -- structured values (CBOR maps and JSON objects) ------------------------------------------------------------

#: leaves a decoder of plain data may meet: the edges of every integer width, odd floats, empty and long strings
EDGE_INTS: tuple[int, ...] = (0, 1, -1, 2**31, 2**32, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**64))


@functools.cache
def plain_leaves(*, finite: bool = False) -> st.SearchStrategy[Any]:
    """CBOR-able (or JSON-able) leaf values; ``finite``: no NaN or infinities (what standard JSON can carry)."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from(EDGE_INTS),
        st.floats(allow_nan=not finite, allow_infinity=not finite),
        st.text(max_size=24),
        st.binary(max_size=48),
        st.binary(min_size=32, max_size=33),
    )


@functools.cache
def plain_values(*, finite: bool = False, json: bool = False) -> st.SearchStrategy[Any]:
    """Nested lists and text-keyed maps of :func:`plain_leaves` (``json``: no bytes)."""
    leaves = plain_leaves(finite=finite)
    if json:
        leaves = leaves.filter(lambda v: not isinstance(v, bytes))
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=12,
    )


def mutate_value(value: Any, choose: Chooser, new_value: Callable[[], Any], depth: int = 0) -> Any:
    """``value`` (lists and maps of plain data) with one field or item changed, removed, added or replaced by
    ``new_value()``, at any depth."""
    op = choose.integer(0, 9)
    if op == 0 or depth > 6:
        return new_value()
    if isinstance(value, dict) and value:
        keys = list(value)
        key = keys[choose.integer(0, len(keys) - 1)]
        out = dict(value)
        if op == 1:
            del out[key]
        elif op == 2:
            # a new key: usually text, now and then a key of another type (maps with text keys only are a rule)
            odd = new_value() if choose.integer(0, 3) == 0 else None
            new_key = odd if isinstance(odd, int | float | str | bytes) else f"{key}_"
            out[new_key] = new_value()
        else:
            out[key] = mutate_value(value[key], choose, new_value, depth + 1)
        return out
    if isinstance(value, list) and value:
        i = choose.integer(0, len(value) - 1)
        items = list(value)
        if op == 1:
            del items[i]
        elif op == 2:
            items.insert(i, new_value())
        elif op == 3:
            items.insert(i, items[i])
        else:
            items[i] = mutate_value(value[i], choose, new_value, depth + 1)
        return items
    if isinstance(value, bytes | str) and op < 5:
        cut = choose.integer(0, len(value))
        return value[:cut]
    if isinstance(value, int) and not isinstance(value, bool) and op < 5:
        return value + choose.integer(-2, 2)
    return new_value()


@st.composite
def mutated_values(draw: st.DrawFn, seeds: Sequence[Any], *, finite: bool = False, json: bool = False) -> Any:
    """A seed value (a CBOR map or JSON object) with one to three fields changed at any depth."""
    choose = DrawChooser(draw)
    value = seeds[choose.integer(0, len(seeds) - 1)]
    fresh = plain_values(finite=finite, json=json)

    def new_value() -> Any:
        return draw(fresh)

    for _ in range(choose.integer(1, 3)):
        value = mutate_value(value, choose, new_value)
    return value


def random_value(rng: random.Random, depth: int = 0, *, json_safe: bool = False) -> Any:
    """A plain value of the kind CBOR frames carry (``json_safe``: of the kind JSON bodies carry, without bytes)."""
    kind = rng.randint(0, 9 if depth < 3 else 6)
    if json_safe and kind == 6:
        kind = 4
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 2**31, 2**53, 2**63 - 1, 2**64 - 1, 10**20, rng.randint(-(2**40), 2**40)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e300, 1e20, rng.random()])
    if kind == 4:
        return "".join(
            chr(rng.choice([rng.randint(32, 126), rng.randint(0, 0x2FFF)])) for _ in range(rng.randint(0, 12))
        )
    if kind == 5:
        return rng.choice(["02" + "ab" * 32, "ab" * 32, "ab" * 32 + ".0", "ab" * 32 + ".\u00b2", "tm_ship", "s1", ""])
    if kind == 6:
        return rng.randbytes(rng.choice([0, 8, 32, 33, rng.randint(0, 64)]))
    if kind in (7, 8):
        return [random_value(rng, depth + 1, json_safe=json_safe) for _ in range(rng.randint(0, 4))]
    key = rng.choice(["id", "hash", "key", "stream_id", "quote_id", "x"])
    return {key: random_value(rng, depth + 1, json_safe=json_safe)}
