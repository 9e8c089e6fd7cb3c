"""The node's SQLite store: the only package that holds SQL.

Layout:

- ``engine.py``: :class:`Database`, the connections under trio (one writer thread behind a limiter, a pool of
  read connections, WAL), each call one transaction, ``sqlite3.Error`` mapped to ``StoreError``.
- ``migrations.py``: the named schema migrations, applied in order when the store opens.
- ``db.py``: :class:`Store`, which carries one attribute per repository, and :func:`open_store`.
- one module per repository (``meta.py``, ``peers.py``, ``wallet.py``, ``settlement.py``, ...): a class taking the
  ``Database`` and exposing async typed methods that return frozen dataclasses, never rows or SQL.
- ``records.py``: the rows two repositories share (the wallet's outputs, the settlement jobs other writes queue),
  so that the wallet's and the settlement queue's repositories do not import each other.

Adding a repository (say ``adverts``):

1. append a migration creating its tables at the end of ``migrations.py`` (``@MIGRATIONS.register("0003_adverts")``);
2. write ``store/adverts.py`` with a row dataclass and ``AdvertsRepository(db)`` whose methods pass small
   transaction functions to ``db.read`` / ``db.write`` (``durable=True`` for commits that precede a receipt);
3. add ``self.adverts = AdvertsRepository(db)`` in ``Store.__init__`` (``db.py``) and export it here;
4. test it in ``tests/integration/`` against a real file opened with ``open_store``.
"""

from __future__ import annotations

from overlay_node.store.db import Store, open_store
from overlay_node.store.meta import MetaRepository
from overlay_node.store.migrations import MIGRATIONS, AppliedMigration, Migrations
from overlay_node.store.peers import KnownPeer, PeersRepository

__all__ = [
    "MIGRATIONS",
    "AppliedMigration",
    "KnownPeer",
    "MetaRepository",
    "Migrations",
    "PeersRepository",
    "Store",
    "open_store",
]
