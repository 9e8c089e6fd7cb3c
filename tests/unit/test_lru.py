"""The bounded LRU map of the services' and the identities' caches (``overlay_node/lru.py``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overlay_node.lru import LruMap


def test_put_keeps_the_most_recent_entries() -> None:
    lru: LruMap[str, int] = LruMap(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.put("a", 3)  # "a" is the most recent again
    lru.put("c", 4)  # "b" is now the oldest: it goes
    assert list(lru.items()) == [("a", 3), ("c", 4)]
    assert lru.get("b") is None
    assert lru.size == 2


def test_reading_does_not_refresh_and_pop_removes() -> None:
    lru: LruMap[bytes, str] = LruMap(2)
    lru.put(b"x", "1")
    lru.put(b"y", "2")
    assert lru[b"x"] == "1"
    assert b"x" in lru
    assert lru.get(b"x") == "1"
    lru.put(b"z", "3")  # reads of "x" did not make it recent
    assert list(lru) == [b"y", b"z"]
    assert lru.pop(b"y") == "2"
    assert list(lru) == [b"z"]


@given(st.integers(min_value=1, max_value=8), st.lists(st.tuples(st.integers(0, 12), st.integers())))
def test_agrees_with_a_plain_model(size: int, puts: list[tuple[int, int]]) -> None:
    lru: LruMap[int, int] = LruMap(size)
    model: list[tuple[int, int]] = []  # oldest first
    for key, value in puts:
        lru.put(key, value)
        model = [(k, v) for k, v in model if k != key] + [(key, value)]
        model = model[-size:]
        assert list(lru.items()) == model
        assert len(lru) <= size
