"""Retrieval: fetch content from the holders found in the DHT, chunk ranges in parallel from several holders,
each chunk checked against the manifest and the whole against the content id; resumable.

Theory of operation:
1. Content held here is copied out. Otherwise the provider records under ``uhrp:<hex>`` name the holders; the
   first holder that answers ``content.manifest`` gives the size, chunk size and chunk hashes. Holders with a live
   link come first (a link is proof of life; one that dropped is not held against a holder), and the manifest
   request is hedged: when a holder has not answered within ``content.hedge_delay`` the next one is asked as well,
   so a dead holder (a dial that hangs until its timeout) delays the start by that delay, not by its timeout.
2. The download goes to ``<output>.part``. Chunks of an existing part file that already match the manifest are
   kept (this is the resume), the rest are queued.
3. Up to ``holders`` holders are used at once, each with ``per_holder`` workers; a worker takes a chunk from the
   queue, reads it in pieces of ``read_piece`` bytes, and checks its hash and writes it in one worker-thread
   hop (the event loop never hashes). A chunk that fails the check goes
   back to the queue, the holder is dropped from this download and told (``content.bad``) so it can check its
   copy; a holder that errors or disappears is dropped the same way (without the notice). Once every chunk is
   written the download ends at once, cancelling dials to holders that never answered.
4. The whole part file is hashed in file order while the download runs (each chunk as soon as it and all
   before it are written, read back from the file), so the check at the end costs no second pass: only an exact
   match of every byte of the part file is renamed to ``output``. A wrong manifest (a lying holder) can
   therefore never produce a wrong file, only a failed download.

:func:`access` (``ctl access``) decides how: an ``http(s)://.../uhrp/<hash>`` URL is fetched from that gateway
with the node's authenticated HTTP client (:func:`fetch_http`: BRC-104, and BRC-105 for priced content, paid from
the wallet); a UHRP URL or hash goes over peer links (a grant bought from the producer over its link, then
:func:`fetch`), unless the producer of priced content cannot be linked: then it is bought from the producer's
gateway over HTTP, when its provider record names one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from overlay_node.crypto.uhrp import parse_uhrp, url_for_hash
from overlay_node.errors import BadRequest, NotFound, OverlayError, RemoteProtocolError
from overlay_node.protocol.content import ChunkPlan, ProviderRecord
from overlay_node.services.content_common import NoPeerLink, PaymentRequired

if TYPE_CHECKING:
    from overlay_node.services.content import ContentService
    from overlay_node.services.content_common import Progress

__all__ = ["ContentUnavailable", "FetchResult", "access", "fetch", "fetch_http"]

logger = logging.getLogger(__name__)

_HASH_STEP: Final = 4 * 1024 * 1024
#: chunks hashed per worker-thread hop by the in-order hasher
_HASH_RUN: Final = 16


class ContentUnavailable(NotFound):
    """No holder could deliver the content (none found, all failed, or every copy was bad)."""

    code = "content_unavailable"


@dataclass(slots=True)
class FetchResult:
    """What a download did."""

    hash: str
    size: int
    output: str
    holders_used: list[str] = field(default_factory=list)
    bad_holders: list[str] = field(default_factory=list)
    resumed_chunks: int = 0
    local: bool = False
    via: str = "peers"
    url: str = ""
    paid: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "via": self.via,
            **({"url": self.url} if self.url else {}),
            **({"paid": self.paid} if self.paid is not None else {}),
            "hash": self.hash,
            "uhrp_url": url_for_hash(bytes.fromhex(self.hash)),
            "size": self.size,
            "output": self.output,
            "holders_used": self.holders_used,
            "bad_holders": self.bad_holders,
            "resumed_chunks": self.resumed_chunks,
            "local": self.local,
        }


def _noop(_: dict[str, Any]) -> None:
    return None


async def fetch(
    service: ContentService,
    content: str,
    output: Path,
    *,
    grant: dict[str, Any] | None = None,
    progress: Progress = _noop,
) -> FetchResult:
    """Download ``content`` (hex or UHRP URL) to ``output`` (see the module docstring).

    Raises:
        BadRequest: a bad id or output path.
        ContentUnavailable: no holder, or no holder could deliver good bytes.
    """
    cid = parse_uhrp(content)
    hex_id = cid.hex()
    if await trio.Path(output).is_dir():
        raise BadRequest(f"{output} is a directory")
    if not await trio.Path(output.parent).is_dir():
        raise BadRequest(f"directory {output.parent} does not exist")
    item = await service.store.content.get(hex_id)
    if item is not None and item.local and service.blobs.has(cid):
        await trio.to_thread.run_sync(_copy_out, service.blobs.path(cid), output)
        progress({"event": "done", "hash": hex_id, "size": item.size, "local": True})
        return FetchResult(hash=hex_id, size=item.size, output=str(output), local=True)

    providers = _live_first(
        service, {k: p for k, p in (await service.providers(cid)).items() if k != service.identity_key}
    )
    if not providers:
        raise ContentUnavailable(f"no node provides {hex_id}")
    progress({"event": "providers", "count": len(providers)})
    manifest = await _manifest(service, cid, providers, grant)
    size, chunk_size, hashes = manifest
    plan = ChunkPlan(size=size, chunk_size=chunk_size)
    result = FetchResult(hash=hex_id, size=size, output=str(output))
    part = output.with_name(output.name + ".part")
    done = await trio.to_thread.run_sync(_resume, part, plan, hashes)
    result.resumed_chunks = len(done)
    todo = [i for i in range(plan.count) if i not in done]
    progress({"event": "start", "size": size, "chunks": plan.count, "resumed": len(done)})
    if not todo and not part.exists():
        part.touch(mode=0o600)
    if todo:
        download = _Download(
            service=service,
            cid=cid,
            plan=plan,
            hashes=hashes,
            providers=providers,
            part=part,
            todo=todo,
            grant=grant,
            progress=progress,
            result=result,
        )
        digest = await download.run()
    else:
        digest = await trio.to_thread.run_sync(_hash_file, part)
    if digest != cid:
        await trio.to_thread.run_sync(lambda: part.unlink(missing_ok=True))
        raise ContentUnavailable(f"downloaded bytes hash to {digest.hex()}, not {hex_id}: a holder lied; retry")
    os.replace(part, output)
    service.metrics.content_transfers.labels("download", "ok").inc()
    progress({"event": "done", "hash": hex_id, "size": size, "local": False})
    return result


async def access(
    service: ContentService,
    content: str,
    output: Path,
    *,
    max_price: int | None = None,
    progress: Progress = _noop,
) -> FetchResult:
    """Get ``content`` into ``output``, paying for it if it is priced (see the module docstring for the ways).

    Raises:
        BadRequest: a bad id, URL or output path.
        PaymentRequired, PaymentError: over ``max_price``, no wallet, or the payment was refused.
        ContentUnavailable, NotFound: no one could deliver it.
    """
    if content.startswith(("https://", "http://")):
        return await fetch_http(service, content, output, max_price=max_price, progress=progress)
    try:
        grant = await service.grant_for(content, max_price=max_price, progress=progress)
    except NoPeerLink as exc:
        if not exc.gateway or service.http_client is None:
            raise
        url = f"{exc.gateway.rstrip('/')}/uhrp/{parse_uhrp(content).hex()}"
        progress({"event": "no_peer_link", "reason": str(exc), "url": url})
        return await fetch_http(service, url, output, max_price=max_price, progress=progress)
    return await fetch(service, content, output, grant=grant, progress=progress)


async def fetch_http(
    service: ContentService,
    url: str,
    output: Path,
    *,
    max_price: int | None = None,
    progress: Progress = _noop,
) -> FetchResult:
    """Download ``url`` (a gateway's ``.../uhrp/<hash or UHRP URL>``) with the node's authenticated HTTP client,
    paying a BRC-105 402 from the wallet (at most ``max_price``), and check the bytes against the content id.

    Raises:
        BadRequest: not a gateway URL, or a bad output path.
        PaymentRequired, PaymentError: over ``max_price``, or the payment was refused (nothing paid).
        ContentUnavailable: the gateway did not deliver the content (any other status, or other bytes).
        TransportError, RemoteProtocolError: the gateway cannot be reached, or its answers do not verify.
    """
    client = service.http_client
    if client is None:
        raise BadRequest("this node has no HTTP client for other gateways")
    path = url.split("?", 1)[0].split("#", 1)[0]
    marker = path.rfind("/uhrp/")
    if marker < 0:
        raise BadRequest(f"{url[:200]!r} is not a gateway URL (https://host/uhrp/<hash>)")
    cid = parse_uhrp(path[marker + len("/uhrp/") :])
    hex_id = cid.hex()
    if await trio.Path(output).is_dir():
        raise BadRequest(f"{output} is a directory")
    if not await trio.Path(output.parent).is_dir():
        raise BadRequest(f"directory {output.parent} does not exist")
    progress({"event": "http", "url": url})
    try:
        response = await client.fetch(url, max_price=max_price, on_payment=progress)
    except RemoteProtocolError as exc:
        if exc.reason != "bad_handshake":
            raise
        # a gateway that does not speak BRC-104 (auth off, or another implementation): free content is still
        # good from it, the bytes being checked against the hash
        progress({"event": "unauthenticated", "reason": str(exc)})
        response = await client.fetch_plain(url)
    if response.status in (401, 402):
        body = response.body[:300].decode("utf-8", "replace")
        raise PaymentRequired(f"{url} answered HTTP {response.status}: {body}")
    if response.status != 200:
        body = response.body[:300].decode("utf-8", "replace")
        raise ContentUnavailable(f"{url} answered HTTP {response.status}: {body}")
    data = response.body
    if hashlib.sha256(data).digest() != cid:
        raise ContentUnavailable(f"{url} sent bytes that do not hash to {hex_id}")
    await trio.to_thread.run_sync(_write_file, output, data)
    service.metrics.content_transfers.labels("download", "ok").inc()
    service.metrics.content_transfer_bytes.labels("in").inc(len(data))
    paid = None
    if response.paid_txid is not None:
        paid = {"satoshis": response.paid_satoshis, "txid": response.paid_txid, "payee": response.server_key}
    progress({"event": "done", "hash": hex_id, "size": len(data), "local": False})
    return FetchResult(
        hash=hex_id,
        size=len(data),
        output=str(output),
        holders_used=[response.server_key] if response.server_key else [],
        via="http",
        url=url,
        paid=paid,
    )


def _write_file(output: Path, data: bytes) -> None:
    temp = output.with_name(output.name + ".part")
    with temp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, output)


def _live_first(service: ContentService, providers: dict[str, ProviderRecord]) -> dict[str, ProviderRecord]:
    """``providers`` with the holders this node has a live link to first (otherwise in the DHT's order)."""
    live = {k: p for k, p in providers.items() if service.peers.link(k) is not None}
    return live | {k: p for k, p in providers.items() if k not in live}


Manifest = tuple[int, int, list[bytes]]


async def _ask_manifest(service: ContentService, key: str, provider: ProviderRecord, body: dict[str, Any]) -> Manifest:
    answer = await service.ask(key, provider.swarm, "content.manifest", body, service.config.request_timeout)
    size, chunk_size, raw = answer.get("size"), answer.get("chunk_size"), answer.get("manifest")
    if not isinstance(size, int) or not isinstance(chunk_size, int) or not isinstance(raw, bytes):
        raise BadRequest("malformed manifest answer")
    plan = ChunkPlan(size=size, chunk_size=chunk_size)
    if len(raw) != 32 * plan.count:
        raise BadRequest(f"manifest of {len(raw)} bytes for {plan.count} chunks")
    return size, chunk_size, [raw[i : i + 32] for i in range(0, len(raw), 32)]


async def _manifest(
    service: ContentService, cid: bytes, providers: dict[str, ProviderRecord], grant: dict[str, Any] | None
) -> Manifest:
    """The manifest from the first holder that gives one, asking the next holder as well whenever none answered
    within ``hedge_delay`` or one failed (module docstring, 1); the requests still out are cancelled then.

    Raises:
        PaymentRequired: a holder wants a grant first.
        ContentUnavailable: no holder gave a manifest.
    """
    errors: list[str] = []
    body: dict[str, Any] = {"hash": cid.hex()}
    if grant is not None:
        body["grant"] = grant
    found: list[Manifest] = []
    refusal: list[OverlayError] = []
    pending = list(providers.items())
    running = 0
    changed = trio.Event()

    async def one(key: str, provider: ProviderRecord) -> None:
        nonlocal running
        try:
            found.append(await _ask_manifest(service, key, provider, body))
        except OverlayError as exc:
            if exc.code == "payment_required":
                refusal.append(exc)
            errors.append(f"{key[:16]}: {exc}")
        finally:
            running -= 1
            changed.set()

    async with trio.open_nursery() as nursery:
        while not found and not refusal and (pending or running):
            if pending:
                nursery.start_soon(one, *pending.pop(0))
                running += 1
            changed = trio.Event()
            with trio.move_on_after(service.config.hedge_delay if pending else math.inf):
                await changed.wait()
        nursery.cancel_scope.cancel()
    if found:
        return found[0]
    if refusal:
        raise refusal[0]
    raise ContentUnavailable(f"no holder of {cid.hex()} answered: {'; '.join(errors)}")


@dataclass(eq=False, kw_only=True)
class _Download:
    """One download of the ``todo`` chunks into the part file (module docstring, 3 and 4).

    The chunks wait in a queue; each chosen holder gets ``per_holder`` workers that take chunks from it and put back
    the ones they could not deliver. The queue is closed when no chunk is left, or when no worker is left to take
    the rest.
    """

    service: ContentService
    cid: bytes
    plan: ChunkPlan
    hashes: list[bytes]
    providers: dict[str, ProviderRecord]
    part: Path
    todo: list[int]
    grant: dict[str, Any] | None
    progress: Progress
    result: FetchResult
    #: chunks not yet written
    remaining: int = field(init=False)
    #: bytes of the chunks written by this download
    received_bytes: int = field(init=False, default=0)
    #: workers that may still take chunks
    alive: int = field(init=False, default=0)
    #: holders dropped from this download (errors or bad chunks)
    bad: set[str] = field(init=False, default_factory=set)
    #: what went wrong with each dropped holder (the first few go into the error)
    errors: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.remaining = len(self.todo)
        self._send, self._receive = trio.open_memory_channel[int](len(self.todo))
        for index in self.todo:
            self._send.send_nowait(index)
        self._whole = _InOrderHasher(self.plan, set(range(self.plan.count)) - set(self.todo))
        self._fd = -1
        #: the holders' tasks: cancelled once every chunk is written (a dial still hanging must not hold the end)
        self._holders_scope = trio.CancelScope()

    async def run(self) -> bytes:
        """Fetch the chunks; returns the SHA-256 of the whole part file, hashed in order as the chunks come in (so
        no second pass over the file is needed at the end).

        Raises:
            ContentUnavailable: chunks are left that no holder delivered (the part file stays for a resume).
        """
        self._fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(self._fd, self.plan.size)
            await self._fetch_all()
            await trio.to_thread.run_sync(os.fsync, self._fd)
        finally:
            os.close(self._fd)
        if not self.remaining:
            return self._whole.digest()
        self.service.metrics.content_transfers.labels("download", "failed").inc()
        raise ContentUnavailable(
            f"{self.remaining} of {self.plan.count} chunks of {self.cid.hex()} could not be fetched: "
            f"{'; '.join(self.errors[:4])}"
        )

    async def _fetch_all(self) -> None:
        """Run the workers of the chosen holders, and the in-order hasher until they are done."""
        cfg = self.service.config
        chosen = list(self.providers.items())[: cfg.holders]
        self.alive = len(chosen) * cfg.per_holder
        async with trio.open_nursery() as outer:
            outer.start_soon(self._whole.run, self._fd)
            async with trio.open_nursery() as nursery:
                self._holders_scope = nursery.cancel_scope
                for key, provider in chosen:
                    nursery.start_soon(self._holder, key, provider)
            if self.remaining:
                outer.cancel_scope.cancel()

    async def _holder(self, key: str, provider: ProviderRecord) -> None:
        """Link to one holder and run its workers; a holder that cannot be linked takes its workers with it."""
        per_holder = self.service.config.per_holder
        try:
            link = await self.service.link_to(key, provider.swarm)
        except OverlayError as exc:
            self.errors.append(f"{key[:16]}: {exc}")
            self._workers_gone(per_holder)
            return
        self.result.holders_used.append(key)
        async with trio.open_nursery() as nursery:
            for _ in range(per_holder):
                nursery.start_soon(self._worker, key, link)

    def _workers_gone(self, count: int) -> None:
        """``count`` workers stopped; with none left and chunks to do, close the queue so that the download ends."""
        self.alive -= count
        if self.alive <= 0 and self.remaining:
            self._send.close()

    async def _worker(self, key: str, link: Any) -> None:
        """Take chunks from the queue until it is closed or this worker's holder is dropped."""
        try:
            async for index in self._receive:
                if not await self._take(key, link, index):
                    return
        except (trio.ClosedResourceError, trio.EndOfChannel):
            return
        finally:
            self._workers_gone(1)

    async def _take(self, key: str, link: Any, index: int) -> bool:
        """Fetch, check and write chunk ``index`` from holder ``key``; False when this worker is to stop (its holder
        dropped, the chunk put back, or every chunk written)."""
        if key in self.bad:
            await self._send.send(index)
            return False
        try:
            data = await self._read(link, index)
        except OverlayError as exc:
            self.errors.append(f"{key[:16]}: {exc}")
            self.bad.add(key)
            await self._send.send(index)
            return False
        offset, _ = self.plan.bounds(index)
        # hash and write in one worker-thread hop: the event loop keeps serving meanwhile
        if not await trio.to_thread.run_sync(_check_and_write, self._fd, data, offset, self.hashes[index]):
            await self._corrupt(key, link, index)
            return False
        self._written(index, len(data))
        if self.remaining == 0:
            self._send.close()
            return False
        return True

    async def _read(self, link: Any, index: int) -> bytes:
        """Chunk ``index`` from the holder at the other end of ``link``, in requests of ``read_piece`` bytes."""
        offset, length = self.plan.bounds(index)
        piece = self.service.config.read_piece
        parts: list[bytes] = []
        pos = offset
        end = offset + length
        while pos < end:
            want = min(piece, end - pos)
            body: dict[str, Any] = {"hash": self.cid.hex(), "offset": pos, "length": want}
            if self.grant is not None:
                body["grant"] = self.grant
            answer = await link.request("content.read", body, timeout=self.service.config.request_timeout)
            data = answer.get("data")
            if not isinstance(data, bytes) or len(data) != want:
                got = len(data) if isinstance(data, bytes) else "?"
                raise BadRequest(f"holder answered {got} bytes, asked {want}")
            parts.append(data)
            pos += want
        return b"".join(parts)

    async def _corrupt(self, key: str, link: Any, index: int) -> None:
        """Chunk ``index`` from ``key`` failed its check: drop the holder (telling it, so it can check its copy) and
        put the chunk back."""
        self.service.metrics.content_bad_chunks.inc()
        logger.warning("chunk %d of %s from %s is corrupt", index, self.cid.hex()[:16], key[:16])
        if key not in self.bad:
            self.bad.add(key)
            self.result.bad_holders.append(key)
            try:
                await link.notify("content.bad", {"hash": self.cid.hex()})
            except OverlayError:
                pass
        await self._send.send(index)

    def _written(self, index: int, size: int) -> None:
        """Chunk ``index`` (``size`` bytes) is checked and written."""
        self._whole.mark(index)
        self.remaining -= 1
        self.received_bytes += size
        self.service.metrics.content_transfer_bytes.labels("in").inc(size)
        self.progress({"event": "chunk", "index": index, "done": self.received_bytes, "remaining": self.remaining})
        if not self.remaining:
            self._holders_scope.cancel()


class _InOrderHasher:
    """The SHA-256 of a part file, computed while it is downloaded: chunks are hashed (read back from the file,
    usually from the page cache) in file order as soon as they and all chunks before them are written."""

    def __init__(self, plan: ChunkPlan, written: set[int]) -> None:
        self._plan = plan
        self._written = written
        self._next = 0
        self._hash = hashlib.sha256()
        self._wake = trio.Event()

    def mark(self, index: int) -> None:
        """Chunk ``index`` is written (and verified) and will not change again."""
        self._written.add(index)
        self._wake.set()

    async def run(self, fd: int) -> None:
        """Hash the part file open as ``fd`` until every chunk is in; cancelled when the download stops short."""
        count = self._plan.count
        while self._next < count:
            if self._next not in self._written:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            stop = self._next
            while stop < count and stop in self._written and stop - self._next < _HASH_RUN:
                stop += 1
            await trio.to_thread.run_sync(self._hash_chunks, fd, self._next, stop)
            self._next = stop

    def _hash_chunks(self, fd: int, first: int, stop: int) -> None:
        start, _ = self._plan.bounds(first)
        last_offset, last_length = self._plan.bounds(stop - 1)
        end = last_offset + last_length
        while start < end:
            data = os.pread(fd, min(_HASH_STEP, end - start), start)
            if not data:
                raise OSError(f"part file shorter than {end} bytes")
            self._hash.update(data)
            start += len(data)

    def digest(self) -> bytes:
        if self._next != self._plan.count:
            raise RuntimeError("digest asked before every chunk was hashed")
        return self._hash.digest()


def _check_and_write(fd: int, data: bytes, offset: int, expected: bytes) -> bool:
    """Write ``data`` at ``offset`` when its SHA-256 is ``expected``; False (nothing written) otherwise."""
    if hashlib.sha256(data).digest() != expected:
        return False
    os.pwrite(fd, data, offset)
    return True


def _resume(part: Path, plan: ChunkPlan, hashes: list[bytes]) -> set[int]:
    """The chunks of an existing part file that already match the manifest."""
    done: set[int] = set()
    try:
        with part.open("rb") as f:
            for index in range(plan.count):
                offset, length = plan.bounds(index)
                f.seek(offset)
                data = f.read(length)
                if len(data) == length and hashlib.sha256(data).digest() == hashes[index]:
                    done.add(index)
    except FileNotFoundError:
        pass
    return done


def _hash_file(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while data := f.read(_HASH_STEP):
            h.update(data)
    return h.digest()


def _copy_out(source: Path, output: Path) -> None:
    temp = output.with_name(output.name + ".part")
    with source.open("rb") as src, temp.open("wb") as dst:
        while data := src.read(_HASH_STEP):
            dst.write(data)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(temp, output)
