"""The fast fuzzer's own machinery (collected by ``make test``: quick, no fuzzing): the mutator is seeded and
reaches its operations, and the harness tells refusals from crashes and saves a crash's input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from overlay_node.errors import BadRequest

from . import fast


def test_same_seed_same_inputs() -> None:
    seed_bytes = [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\x01\x02\x03\x04" * 8]
    one, two = fast.Mutator(random.Random(7)), fast.Mutator(random.Random(7))
    assert [one.bytes_(seed_bytes[i % 2], seed_bytes) for i in range(200)] == [
        two.bytes_(seed_bytes[i % 2], seed_bytes) for i in range(200)
    ]
    other = fast.Mutator(random.Random(8))
    assert [other.bytes_(seed_bytes[0], seed_bytes) for _ in range(50)] != [
        fast.Mutator(random.Random(7)).bytes_(seed_bytes[0], seed_bytes) for _ in range(50)
    ]


def test_mutations_change_grow_and_shrink() -> None:
    m = fast.Mutator(random.Random(1))
    seed = bytes(range(64))
    outs = [m.bytes_(seed, [b"\xee" * 80]) for _ in range(2000)]
    assert sum(o != seed for o in outs) > 1900
    assert any(len(o) > len(seed) for o in outs)
    assert any(len(o) < len(seed) for o in outs)
    assert any(b"\xee" in o for o in outs), "no splice with the other seed"
    assert any(b"\xff\xff\xff\xff" in o for o in outs), "no interesting integer or CompactSize"


def test_compact_size() -> None:
    assert fast.compact_size(0xFC) == b"\xfc"
    assert fast.compact_size(0xFD) == b"\xfd\xfd\x00"
    assert fast.compact_size(0x10000) == b"\xfe\x00\x00\x01\x00"
    assert fast.compact_size(2**64 - 1) == b"\xff" + b"\xff" * 8


def test_structure_aware_mutations_keep_their_format() -> None:
    m = fast.Mutator(random.Random(3))
    seed = {"service": "ls_ship", "query": {"findAll": True, "limit": 10}}
    texts = [m.json(seed) for _ in range(300)]
    assert all(isinstance(json.loads(t), object) for t in texts)
    assert sum(json.loads(t) != seed for t in texts) > 250
    request = b"POST /lookup HTTP/1.1\r\nHost: n\r\nContent-Length: 4\r\n\r\nbody"
    heads = [m.http_head(request) for _ in range(300)]
    assert all(h.endswith(b"\r\n\r\nbody") for h in heads)
    assert sum(h != request for h in heads) > 250


def test_refusals_and_crashes_are_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "CRASHES", tmp_path / "crashes")
    monkeypatch.setattr(fast, "ROOT", tmp_path)

    def check(data: bytes) -> None:
        if data[:1] == b"\x00":
            raise BadRequest("refused")
        if data[:1] == b"\x01":
            raise KeyError("a bug")

    surface = fast.FastSurface("toy", lambda m: bytes([m.rng.randrange(3), m.rng.randrange(256)]), check, (BadRequest,))
    out = fast.run_surface(surface, 300, random.Random(5))
    assert out.inputs == 300
    assert 50 < out.refused < 150
    assert 50 < out.crashes < 150
    assert list(out.kinds) == [f"KeyError at {Path(__file__).name}:{check.__code__.co_firstlineno + 4}"]
    # the first few inputs of each kind of crash saved, with the traceback and the input as hex
    saved = sorted((tmp_path / "crashes").glob("*.bin"))
    assert len(out.saved) == len(saved) == fast.SAVE_PER_KIND
    for path in saved:
        data = path.read_bytes()
        assert data[:1] == b"\x01"
        text = path.with_suffix(".txt").read_text()
        assert f"input: {data.hex()}" in text
        assert "KeyError: 'a bug'" in text
