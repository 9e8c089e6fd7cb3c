"""The blob store: content files under ``<data_dir>/blobs/ab/cd/<sha256hex>``, written so that a half-written or
unverified blob is never visible.

Every write goes to ``blobs/tmp/<random>.part`` while the bytes are hashed (whole content and per chunk), is
fsynced, checked against the expected hash and size when one is given, and only then renamed into place (and the
directory fsynced). Anything that fails on the way deletes the temp file. File work runs in worker threads so the
event loop keeps serving while large content is hashed and written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from overlay_node.errors import BadRequest, NotFound
from overlay_node.protocol.content import ChunkPlan

__all__ = ["BlobStore", "ManifestHasher", "Written"]

logger = logging.getLogger(__name__)

_IMPORT_STEP: Final = 4 * 1024 * 1024
#: bytes of received chunks hashed and written per worker-thread hop
_RECEIVE_BATCH: Final = 1024 * 1024


class ManifestHasher:
    """Hashes a stream of bytes as a whole and per chunk of ``plan``; bytes past ``plan.size`` are refused."""

    def __init__(self, plan: ChunkPlan) -> None:
        self.plan = plan
        self.total = hashlib.sha256()
        self.size = 0
        self._chunk = hashlib.sha256()
        self._in_chunk = 0
        self.chunks: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        """Raises BadRequest when the stream grows past the declared size."""
        if self.size + len(data) > self.plan.size:
            raise BadRequest(f"more bytes than the declared size {self.plan.size}")
        self.total.update(data)
        self.size += len(data)
        view = memoryview(data)
        step = self.plan.chunk_size
        while view:
            take = min(step - self._in_chunk, len(view))
            self._chunk.update(view[:take])
            self._in_chunk += take
            view = view[take:]
            if self._in_chunk == step:
                self.chunks.append(self._chunk.digest())
                self._chunk = hashlib.sha256()
                self._in_chunk = 0

    def finish(self) -> tuple[bytes, bytes]:
        """``(sha256, manifest)``; raises BadRequest when fewer bytes came than declared."""
        if self.size != self.plan.size:
            raise BadRequest(f"truncated: {self.size} of {self.plan.size} bytes")
        if self._in_chunk:
            self.chunks.append(self._chunk.digest())
            self._in_chunk = 0
        return self.total.digest(), b"".join(self.chunks)


@dataclass(frozen=True, slots=True, kw_only=True)
class Written:
    """A blob now in place."""

    content_id: bytes
    size: int
    plan: ChunkPlan
    manifest: bytes


class BlobStore:
    """Content files of one node (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        # a crash may have left temp files; none of them was ever visible
        for leftover in self.tmp.glob("*.part"):
            leftover.unlink(missing_ok=True)

    def path(self, content_id: bytes) -> Path:
        h = content_id.hex()
        return self.root / h[:2] / h[2:4] / h

    def has(self, content_id: bytes) -> bool:
        return self.path(content_id).is_file()

    def _new_temp(self) -> Path:
        return self.tmp / f"{secrets.token_hex(8)}.part"

    def _place(self, temp: Path, content_id: bytes) -> None:
        final = self.path(content_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def import_file(
        self, source: Path, *, chunk_size: int, max_size: int, progress: Callable[[int, int], None] | None = None
    ) -> Written:
        """Copy ``source`` into the store while hashing it.

        Raises:
            BadRequest: not a readable regular file, or larger than ``max_size``.
        """
        try:
            st = await trio.to_thread.run_sync(source.stat)
        except OSError as exc:
            raise BadRequest(f"cannot read {source}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise BadRequest(f"{source} is not a regular file")
        size = st.st_size
        if size > max_size:
            raise BadRequest(f"{source} is {size} bytes, over the limit of {max_size}")
        plan = ChunkPlan.for_size(size, chunk_size)
        hasher = ManifestHasher(plan)
        temp = self._new_temp()
        try:
            with source.open("rb") as src, temp.open("wb") as dst:
                while True:
                    data = await trio.to_thread.run_sync(src.read, _IMPORT_STEP)
                    if not data:
                        break
                    await trio.to_thread.run_sync(_hash_and_write, hasher, dst, data)
                    if progress is not None:
                        progress(hasher.size, size)
                await trio.to_thread.run_sync(_flush, dst)
            digest, manifest = hasher.finish()  # a file that changed size while read fails here
            await trio.to_thread.run_sync(self._place, temp, digest)
        except OSError as exc:
            raise BadRequest(f"cannot import {source}: {exc}") from None
        finally:
            temp.unlink(missing_ok=True)
        return Written(content_id=digest, size=size, plan=plan, manifest=manifest)

    async def receive(self, chunks: AsyncIterable[bytes], *, content_id: bytes, plan: ChunkPlan) -> Written:
        """Write ``chunks`` (exactly ``plan.size`` bytes whose SHA-256 is ``content_id``) into the store.

        Raises:
            BadRequest: too many or too few bytes, or the hash does not match; nothing is stored.
            (and whatever the iterator raises: a lost link or the sender's abort; nothing is stored)
        """
        hasher = ManifestHasher(plan)
        temp = self._new_temp()
        try:
            with temp.open("wb") as dst:
                # chunks are gathered up to _RECEIVE_BATCH bytes per worker-thread hop (taking a chunk already
                # returns its credit, so the sender keeps sending meanwhile)
                batch: list[bytes] = []
                batched = 0
                async for data in chunks:
                    batch.append(data)
                    batched += len(data)
                    if batched >= _RECEIVE_BATCH:
                        await trio.to_thread.run_sync(_hash_and_write_all, hasher, dst, batch)
                        batch, batched = [], 0
                if batch:
                    await trio.to_thread.run_sync(_hash_and_write_all, hasher, dst, batch)
                await trio.to_thread.run_sync(_flush, dst)
            digest, manifest = hasher.finish()
            if digest != content_id:
                raise BadRequest(f"hash mismatch: received {digest.hex()}, expected {content_id.hex()}")
            await trio.to_thread.run_sync(self._place, temp, digest)
        finally:
            temp.unlink(missing_ok=True)
        return Written(content_id=digest, size=plan.size, plan=plan, manifest=manifest)

    async def read(self, content_id: bytes, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end). Raises NotFound when the blob is missing."""
        return await trio.to_thread.run_sync(self._read_sync, content_id, offset, length)

    def _read_sync(self, content_id: bytes, offset: int, length: int) -> bytes:
        try:
            with self.path(content_id).open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise NotFound(f"content {content_id.hex()} is not held here") from None

    async def verify(self, content_id: bytes) -> bool:
        """Re-hash the blob; False when it is missing or its bytes no longer match its name."""

        def run() -> bool:
            h = hashlib.sha256()
            try:
                with self.path(content_id).open("rb") as f:
                    while data := f.read(_IMPORT_STEP):
                        h.update(data)
            except FileNotFoundError:
                return False
            return h.digest() == content_id

        return await trio.to_thread.run_sync(run)

    async def delete(self, content_id: bytes) -> None:
        await trio.to_thread.run_sync(lambda: self.path(content_id).unlink(missing_ok=True))


def _hash_and_write(hasher: ManifestHasher, dst: object, data: bytes) -> None:
    hasher.update(data)
    dst.write(data)  # type: ignore[attr-defined]


def _hash_and_write_all(hasher: ManifestHasher, dst: object, batch: list[bytes]) -> None:
    for data in batch:
        hasher.update(data)
        dst.write(data)  # type: ignore[attr-defined]


def _flush(dst: object) -> None:
    dst.flush()  # type: ignore[attr-defined]
    os.fsync(dst.fileno())  # type: ignore[attr-defined]
