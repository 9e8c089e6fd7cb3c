"""Saving the DHT's record changes to SQLite from one task, coalesced, so that datagram handling never waits for
the database; and the routing table's contacts, saved for the next start (:func:`save_contacts`).

Invariants:

1. Changes are kept per ``(key, publisher)`` (held records) and per key (own records); a later change replaces an
   earlier unsaved one, so a burst of STOREs for one record costs one row write.
2. One batch is written at a time (a lock), in one transaction (``DhtRepository.apply``); :meth:`RecordSaver.flush`
   returns once every change queued before it was called is committed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Final

import trio

from overlay_node.errors import LocalProtocolError
from overlay_node.store.dht import DhtRepository, DhtWrites, OwnRecord
from overlay_node.store.meta import MetaRepository
from overlay_node.wire.dht import Contact, Record

__all__ = ["CONTACTS_KEY", "RecordSaver", "load_contacts", "save_contacts"]

logger = logging.getLogger(__name__)

#: the ``meta`` key the routing table's contacts are saved under: ``[[pubkey hex, host, port], ...]``
CONTACTS_KEY: Final = "dht_contacts"


async def save_contacts(meta: MetaRepository, contacts: Sequence[Contact]) -> None:
    """Save ``contacts`` (replacing the ones saved before), for :func:`load_contacts` at the next start.

    Raises:
        StoreError: the database failed.
    """
    await meta.set(CONTACTS_KEY, json.dumps([[c.pubkey.hex(), c.host, c.port] for c in contacts]))


async def load_contacts(meta: MetaRepository) -> list[Contact]:
    """The contacts saved by :func:`save_contacts` (none when nothing was saved; malformed entries are skipped).

    Raises:
        StoreError: the database failed.
    """
    text = await meta.get(CONTACTS_KEY)
    try:
        items = json.loads(text) if text else []
    except ValueError:
        items = []
    contacts: list[Contact] = []
    for item in items if isinstance(items, list) else []:
        try:
            pubkey, host, port = item
            contacts.append(Contact(pubkey=bytes.fromhex(pubkey), host=host, port=port))
        except (TypeError, ValueError, LocalProtocolError):
            logger.debug("dht: skipping a malformed saved contact %.80r", item)
    return contacts


class RecordSaver:
    """Queues record changes for ``repository`` and writes them (``run`` in a task, or ``flush``)."""

    def __init__(self, repository: DhtRepository) -> None:
        self._repository = repository
        self._save: dict[tuple[bytes, bytes], Record] = {}
        self._delete: set[tuple[bytes, bytes]] = set()
        self._own: dict[bytes, OwnRecord | None] = {}
        self._dirty = trio.Event()
        self._lock = trio.Lock()

    def save(self, record: Record) -> None:
        """Queue a held record (inserted, or replacing an older one of its publisher)."""
        slot = (record.key, record.publisher)
        self._delete.discard(slot)
        self._save[slot] = record
        self._dirty.set()

    def delete(self, record: Record) -> None:
        """Queue the removal of a held record (expired, or not valid any more)."""
        slot = (record.key, record.publisher)
        self._save.pop(slot, None)
        self._delete.add(slot)
        self._dirty.set()

    def save_own(self, key: bytes, own: OwnRecord | None) -> None:
        """Queue our own record under ``key`` (None: we no longer publish there)."""
        self._own[key] = own
        self._dirty.set()

    async def run(self) -> None:
        """Write changes as they come, until cancelled."""
        while True:
            await self._dirty.wait()
            await self.flush()

    async def flush(self) -> None:
        """Write every change queued so far; returns once it is committed.

        Raises:
            StoreError: the database failed (that batch is lost; the records stay in memory).
        """
        async with self._lock:
            self._dirty = trio.Event()
            writes = DhtWrites(
                save=tuple(self._save.values()),
                delete=tuple(self._delete),
                save_own=tuple(o for o in self._own.values() if o is not None),
                delete_own=tuple(key for key, o in self._own.items() if o is None),
            )
            self._save, self._delete, self._own = {}, set(), {}
            if writes:
                logger.debug("dht: saving %d records, deleting %d", len(writes.save), len(writes.delete))
            try:
                await self._repository.apply(writes)
            except trio.Cancelled:
                # cancelled mid-write (the service stopping): the batch goes back in the queue, so the final flush
                # writes it (written twice at worst: each write is an upsert)
                self._requeue(writes)
                raise

    def _requeue(self, writes: DhtWrites) -> None:
        """Put back a batch whose write did not finish; a change queued since then is newer and wins."""
        for record in writes.save:
            slot = (record.key, record.publisher)
            if slot not in self._save and slot not in self._delete:
                self._save[slot] = record
        for slot in writes.delete:
            if slot not in self._save:
                self._delete.add(slot)
        for own in writes.save_own:
            self._own.setdefault(own.record.key, own)
        for key in writes.delete_own:
            self._own.setdefault(key, None)
        self._dirty.set()
