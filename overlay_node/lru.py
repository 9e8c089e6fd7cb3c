"""A bounded map that forgets its oldest entries: the in-memory caches of the services (quotes issued, transactions
held, streams ended) and of an identity's key work (``crypto/keys.py``).

Invariant: entries go in through :meth:`LruMap.put`, which makes its key the most recent one and then drops the
least recently put entries until at most ``size`` remain. Reading (``get``, ``in``, ``[]``) does not change the
order, and ``pop`` removes an entry wherever it is.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

__all__ = ["LruMap"]

K = TypeVar("K")
V = TypeVar("V")


class LruMap(OrderedDict[K, V]):
    """A small LRU map (most recent last), holding at most ``size`` entries (see the module invariant)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: K, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
