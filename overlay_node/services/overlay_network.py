"""The overlay host among other hosts: propagating admitted transactions (BRC-22's SHIP broadcast) and filling
``ls_ship`` / ``ls_slap`` / ``ls_uhrp`` answers with the tokens of hosts known only through the DHT.

Theory of operation:
1. **Who hosts a topic.** The hosts whose SHIP tokens this node's own ``ls_ship`` holds for it, the hosts whose DHT
   adverts (``ship:<topic>``) name an http endpoint, and, for the discovery topics every overlay-node hosts
   (``tm_ship``, ``tm_slap``, ``tm_uhrp``), every peer linked to this node (its http origin comes from its
   ``node.info`` answer). This node itself is never one of them.
2. **Propagation.** After a ``current-tx`` submission was committed and admitted or removed something, it is queued
   for every other host of those topics, each sent only the topics it hosts (``POST /submit``, ``X-Topics`` as a
   JSON array). The queue is bounded (a full queue drops and counts), sends run a few at a time with
   ``overlay.propagation_timeout``, and failures are counted, never retried: the receiver is a duplicate-proof
   engine and GASP catches up what a host missed. A host that receives it admits it in ``current-tx`` mode and
   propagates it further; every host answers a transaction it already applied as a duplicate, so a flood stops.
3. **DHT fill.** Before ``ls_ship`` answers ``{topics}`` (``ls_slap``: ``{service}``; ``ls_uhrp``: ``{uhrpUrl}``)
   this node looks up the DHT (adverts, or UHRP provider records). For each host found whose token this node does not
   hold, it asks that host's own ``/lookup`` for its token, checks it (SPV, the topic manager's rules) and admits it
   in ``historical-tx`` mode, so the answer that follows includes it. Bounded by a deadline and remembered for a
   while, so a dead host costs one timeout per interval, not one per lookup.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from overlay_node.config import OverlaySection
from overlay_node.crypto.uhrp import parse_uhrp
from overlay_node.errors import BadRequest, OverlayError
from overlay_node.metrics import Metrics
from overlay_node.net.peers import PeerManager
from overlay_node.services.adverts import AdvertService
from overlay_node.services.content import ContentService
from overlay_node.services.overlay_engine import Applied, OverlayEngine
from overlay_node.topics.describe import describe_output

logger = logging.getLogger(__name__)

__all__ = ["OverlayNetwork"]

#: topics every overlay-node hosts by default: a linked peer is taken to host them
DISCOVERY_TOPICS = frozenset({"tm_ship", "tm_slap", "tm_uhrp"})
_QUEUE = 1024
_SENDERS = 8
_FILL_DEADLINE = 3.0
_FILL_MEMORY = 60.0


@dataclass(frozen=True, slots=True)
class _Send:
    url: str
    topics: tuple[str, ...]
    beef: bytes


class OverlayNetwork:
    """Propagation and DHT fill for the node's engine (see the module docstring).

    Args:
        identity_key: this node (never a target).
        own_url: this node's public http origin (known once the node is bound).
        verify: how HTTPS servers are verified (``Node.https_verify``).
    """

    def __init__(
        self,
        config: OverlaySection,
        engine: OverlayEngine,
        peers: PeerManager,
        adverts: AdvertService,
        content: ContentService,
        metrics: Metrics,
        *,
        identity_key: str,
        own_url: Callable[[], str],
        verify: Any,
    ) -> None:
        self._config = config
        self._engine = engine
        self._peers = peers
        self._adverts = adverts
        self._content = content
        self._metrics = metrics
        self._identity_key = identity_key
        self._own_url = own_url
        self._verify = verify
        self._send_tx, self._send_rx = trio.open_memory_channel[_Send](_QUEUE)
        self._peer_urls: dict[str, str] = {}
        self._tried: dict[tuple[str, str], float] = {}  # (host, what) -> when asked for its token
        self._client: httpx.AsyncClient | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        timeout = httpx.Timeout(self._config.propagation_timeout)
        async with httpx.AsyncClient(timeout=timeout, verify=self._verify) as client:
            self._client = client
            try:
                if self._config.propagate:
                    self._engine.on_applied(self._queue)
                for service in ("ls_ship", "ls_slap", "ls_uhrp"):
                    if service in self._engine.services:
                        self._engine.before_lookup(service, self._fill)
                async with trio.open_nursery() as nursery:
                    for _ in range(_SENDERS):
                        nursery.start_soon(self._sender)
                    task_status.started()
            finally:
                self._client = None

    # -- who hosts what ---------------------------------------------------------------------------------------

    async def peer_url(self, identity_key: str) -> str | None:
        """A linked peer's public http origin (asked once per peer, then remembered)."""
        url = self._peer_urls.get(identity_key)
        if url is not None:
            return url
        link = self._peers.link(identity_key)
        if link is None:
            return None
        try:
            info = await link.request("node.info", {})
        except OverlayError:
            return None
        http = info.get("http") if isinstance(info, dict) else None
        if not isinstance(http, str) or not http.startswith(("https://", "http://")):
            return None
        self._peer_urls[identity_key] = http.rstrip("/")
        return self._peer_urls[identity_key]

    async def hosts(self, topic: str) -> set[str]:
        """Base URLs of the other hosts of ``topic`` this node knows (see the module docstring)."""
        own = self._own_url().rstrip("/")
        urls: set[str] = set()
        if "ls_ship" in self._engine.services:
            try:
                for out in await self._engine.lookup("ls_ship", {"topics": [topic]}):
                    fields = _ship_fields(out.beef, out.txid, out.vout)
                    if fields is not None and fields.get("identityKey") != self._identity_key:
                        urls.add(str(fields["domain"]).rstrip("/"))
            except OverlayError as exc:
                logger.debug("ls_ship lookup for %s failed: %s", topic, exc)
        try:
            for found in await self._adverts.discover(topic):
                advert = found.advert
                if advert.identity_hex != self._identity_key and advert.endpoints.http:
                    urls.add(advert.endpoints.http.rstrip("/"))
        except (OverlayError, BadRequest) as exc:
            logger.debug("DHT adverts for %s unavailable: %s", topic, exc)
        if topic in DISCOVERY_TOPICS:
            for info in self._peers.links():
                url = await self.peer_url(info.identity_key)
                if url:
                    urls.add(url)
        urls.discard(own)
        return urls

    # -- propagation ------------------------------------------------------------------------------------------

    def _queue(self, applied: Applied) -> None:
        if applied.mode != "current-tx" or not applied.relevant:
            return
        # finding the hosts takes lookups: done by a sender, not here in the submitter's task
        try:
            self._send_tx.send_nowait(_Send(url="", topics=applied.relevant, beef=applied.beef))
        except trio.WouldBlock:
            self._metrics.overlay_propagations.labels("dropped").inc()

    async def _sender(self) -> None:
        async for item in self._send_rx:
            if not item.url:
                await self._fan_out(item)
            else:
                await self._send(item)

    async def _fan_out(self, item: _Send) -> None:
        by_host: dict[str, list[str]] = {}
        for topic in item.topics:
            for url in await self.hosts(topic):
                by_host.setdefault(url, []).append(topic)
        for url, topics in by_host.items():
            try:
                self._send_tx.send_nowait(_Send(url=url, topics=tuple(topics), beef=item.beef))
            except trio.WouldBlock:
                self._metrics.overlay_propagations.labels("dropped").inc()

    async def _send(self, item: _Send) -> None:
        assert self._client is not None
        headers = {"Content-Type": "application/octet-stream", "X-Topics": json.dumps(list(item.topics))}
        try:
            response = await self._client.post(f"{item.url}/submit", content=item.beef, headers=headers)
        except httpx.HTTPError as exc:
            self._metrics.overlay_propagations.labels("unreachable").inc()
            logger.debug("propagation to %s failed: %s", item.url, exc)
            return
        outcome = "sent" if response.status_code == 200 else "refused"
        self._metrics.overlay_propagations.labels(outcome).inc()
        if outcome == "refused":
            logger.debug("propagation to %s refused: %s", item.url, response.text[:200])

    # -- DHT fill ---------------------------------------------------------------------------------------------

    async def _fill(self, service: str, query: Any) -> None:
        """Admit the tokens of DHT-known hosts this node lacks, before ``service`` answers ``query``."""
        if not isinstance(query, dict):
            return
        with trio.move_on_after(_FILL_DEADLINE):
            if service == "ls_uhrp":
                await self._fill_uhrp(query)
            else:
                names = query.get("topics") if service == "ls_ship" else [query.get("service")]
                if isinstance(names, list):
                    for name in names[:16]:
                        if isinstance(name, str):
                            await self._fill_adverts(service, name)

    async def _fill_adverts(self, service: str, name: str) -> None:
        try:
            found = await self._adverts.discover(name)
        except (OverlayError, BadRequest):
            return
        held = await self._held_hosts(service, {"topics": [name]} if service == "ls_ship" else {"service": name})
        topic = "tm_ship" if service == "ls_ship" else "tm_slap"
        query_key = "topics" if service == "ls_ship" else "service"
        async with trio.open_nursery() as nursery:
            for f in found:
                host, url = f.advert.identity_hex, f.advert.endpoints.http
                if host == self._identity_key or host in held or not url:
                    continue
                question = {"identityKey": host, query_key: [name] if service == "ls_ship" else name}
                nursery.start_soon(self._fetch_token, url, service, question, topic, (host, f"{service}:{name}"))

    async def _fill_uhrp(self, query: dict[str, Any]) -> None:
        url_text = query.get("uhrpUrl")
        if not isinstance(url_text, str):
            return
        try:
            content_id = parse_uhrp(url_text)
        except BadRequest:
            return
        from overlay_node.crypto.uhrp import url_for_hash

        bare = url_for_hash(content_id)
        held = await self._held_hosts("ls_uhrp", {"uhrpUrl": bare})
        try:
            providers = await self._content.providers(content_id)
        except OverlayError:
            return
        async with trio.open_nursery() as nursery:
            for host, provider in providers.items():
                if host == self._identity_key or host in held or not provider.http:
                    continue
                question = {"uhrpUrl": bare, "hostIdentityKey": host}
                nursery.start_soon(self._fetch_token, provider.http, "ls_uhrp", question, "tm_uhrp", (host, bare))

    async def _held_hosts(self, service: str, query: dict[str, Any]) -> set[str]:
        """The identity keys whose tokens ``service`` already answers ``query`` with here."""
        hosts: set[str] = set()
        try:
            outputs = await self._engine.lookup(service, query, fill=False)
        except OverlayError:
            return hosts
        for out in outputs:
            fields = _ship_fields(out.beef, out.txid, out.vout)
            if fields is not None:
                hosts.add(str(fields.get("identityKey") or fields.get("hostIdentityKey") or ""))
        return hosts

    async def _fetch_token(
        self, url: str, service: str, question: dict[str, Any], topic: str, memo: tuple[str, str]
    ) -> None:
        now = time.monotonic()
        if now - self._tried.get(memo, -_FILL_MEMORY) < _FILL_MEMORY:
            return
        self._tried[memo] = now
        if len(self._tried) > 10_000:
            self._tried = {k: t for k, t in self._tried.items() if now - t < _FILL_MEMORY}
        assert self._client is not None
        try:
            response = await self._client.post(
                f"{url.rstrip('/')}/lookup", json={"service": service, "query": question}, timeout=_FILL_DEADLINE
            )
            answer = response.json()
            outputs = answer.get("outputs", []) if isinstance(answer, dict) else []
        except (httpx.HTTPError, ValueError) as exc:
            self._metrics.overlay_fills.labels("unreachable").inc()
            logger.debug("token of %s at %s unavailable: %s", memo[0][:16], url, exc)
            return
        for output in outputs[:16]:
            beef = output.get("beef") if isinstance(output, dict) else None
            if not isinstance(beef, list) or not all(isinstance(b, int) and 0 <= b < 256 for b in beef):
                continue
            try:
                steak = await self._engine.submit(bytes(beef), [topic], mode="historical-tx")
            except OverlayError as exc:
                self._metrics.overlay_fills.labels("refused").inc()
                logger.debug("token from %s refused: %s", url, exc)
                continue
            admitted = bool(steak.get(topic, {}).get("outputsToAdmit"))
            self._metrics.overlay_fills.labels("admitted" if admitted else "nothing").inc()


def _ship_fields(beef: bytes, txid: str, vout: int) -> dict[str, Any] | None:
    """What a token output of an answer decodes to (SHIP, SLAP or UHRP fields), or None."""
    from overlay_node.chain.formats import parse_submission
    from overlay_node.chain.refusals import Refusal

    try:
        tx = next(t for t in parse_submission(beef).txs if t.txid == txid)
        return describe_output(tx.outputs[vout].script)
    except (Refusal, StopIteration, IndexError):
        return None
