"""GASP (BRC-76, the pull-only variant of the reference engine): hosts of a topic catch up what they missed.

Theory of operation, per hosted topic and per other host of it (``OverlayNetwork.hosts``: SHIP tokens this node
holds, DHT adverts, and linked peers for the discovery topics):
1. **Pages.** ``POST {host}/requestSyncResponse`` (``X-BSV-Topic``, ``{"version": 1, "since", "limit"}``) lists the
   host's unspent outputs of the topic admitted at ``score >= since``, oldest first. ``since`` starts where the last
   sync with that host ended (``overlay_sync_state``) and moves past each page; a page shorter than ``limit`` ends the
   sync.
2. **Graphs.** For each listed output this node does not hold, ``POST {host}/requestForeignGASPNode`` fetches its
   transaction, then, while a fetched transaction has no merkle path, the transactions its inputs spend that this
   node does not hold, up to ``overlay.sync_max_nodes`` per output. A proven transaction the topic would not admit
   as it is asks its topic manager which inputs it needs (``needed_inputs``), as the reference does.
3. **Admission.** The graph's transactions go to this node's own engine oldest first, each as a BEEF with its
   ancestry (from the graph and from what this node stores), in ``historical-tx`` mode: SPV-checked, never
   broadcast, never propagated. A retaining topic thus gets the history too (BRC-64).
4. **Progress.** ``since`` advances over what was admitted or refused as invalid; it stops before the first output
   that could not be fetched (a timeout, an unreachable host), so the next sync retries from there.

Bounds against a hostile or broken host: every answer is size-limited and shape-checked (a page longer than asked,
a transaction that is not the one asked for, a merkle path that does not prove it: the host is dropped for this
round and counted), graphs are size-limited and walked with a seen-set (no cycles), every request has
``overlay.sync_timeout`` and a whole sync ``overlay.sync_deadline``, a page that does not move ``since`` forward
ends the sync.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from overlay_node.chain.formats import BeefEntry, ParsedTx, Submission, encode_beef, merge_entries, parse_submission
from overlay_node.chain.refusals import Refusal
from overlay_node.clock import wall_time
from overlay_node.config import OverlaySection
from overlay_node.crypto.bump import path_root, varint_at
from overlay_node.errors import BadRequest, OverlayError
from overlay_node.metrics import Metrics
from overlay_node.services.overlay_engine import OverlayEngine
from overlay_node.services.overlay_network import OverlayNetwork
from overlay_node.store.db import Store
from overlay_node.topics.plugins import TaggedTx

logger = logging.getLogger(__name__)

__all__ = ["OverlaySync", "SyncReport"]

#: the largest sync page answer (10,000 outputs are about 1 MB of JSON), node answer (a transaction of 1 MiB in hex)
#: and whole graph of one output this client reads
_MAX_PAGE = 16 * 1024 * 1024
_MAX_NODE = 2 * 1024 * 1024 + 4096
_MAX_GRAPH_BYTES = 32 * 1024 * 1024
_TXID = re.compile(r"^[0-9a-f]{64}$")

Outpoint = tuple[str, int]


class GaspError(OverlayError):
    """A host answered something GASP does not allow: it is dropped for this round."""

    code = "gasp"
    http_status = 502


@dataclass(slots=True)
class SyncReport:
    """What one sync of a topic with one host did."""

    topic: str
    host: str
    listed: int = 0
    fetched: int = 0
    admitted: int = 0
    refused: int = 0
    error: str | None = None
    since: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "host": self.host,
            "listed": self.listed,
            "fetched": self.fetched,
            "admitted": self.admitted,
            "refused": self.refused,
            "since": self.since,
            "error": self.error,
        }


@dataclass(slots=True)
class _Graph:
    """The transactions fetched for one output: raw bytes and merkle path by txid."""

    nodes: dict[str, ParsedTx] = field(default_factory=dict)


class OverlaySync:
    """GASP client of this node (see the module docstring).

    Args:
        network: who hosts what (``hosts``), and this node's own origin to leave out.
        transport: how requests reach the hosts (the node's ``AuthTransport``: BRC-104 for hosts that protect the
            GASP routes); None: plain httpx (tests).
    """

    def __init__(
        self,
        config: OverlaySection,
        engine: OverlayEngine,
        network: OverlayNetwork,
        store: Store,
        metrics: Metrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = wall_time,
    ) -> None:
        self._config = config
        self._engine = engine
        self._network = network
        self._store = store
        self._metrics = metrics
        self._transport = transport
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._lock = trio.Lock()  # one sync round at a time
        self._ready = trio.Event()
        self._round_done = trio.Event()
        #: sync rounds finished since the node started, and the reports of the last one
        self.rounds = 0
        self.last_reports: list[SyncReport] = []

    def node_ready(self) -> None:
        """Called by the node once it answers on its http port: the first round may start."""
        self._ready.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Once the node is ready, sync every hosted topic, then again every ``overlay.sync_interval`` seconds."""
        timeout = httpx.Timeout(self._config.sync_timeout)
        async with httpx.AsyncClient(timeout=timeout, transport=self._transport) as client:
            self._client = client
            task_status.started()
            await self._ready.wait()
            try:
                while True:
                    try:
                        await self.sync_all()
                    except OverlayError as exc:
                        logger.warning("GASP sync round failed: %s", exc)
                    if self._config.sync_interval <= 0:
                        await trio.sleep_forever()
                    await trio.sleep(self._config.sync_interval)
            finally:
                self._client = None

    async def sync_all(self, topics: list[str] | None = None, hosts: list[str] | None = None) -> list[SyncReport]:
        """One round: each of ``topics`` (default: every hosted one but the discovery topics' own bookkeeping is
        included too) with each of ``hosts`` (default: the hosts this node knows of each topic)."""
        async with self._lock:
            reports: list[SyncReport] = []
            for topic in topics or list(self._engine.managers):
                if topic not in self._engine.managers:
                    raise BadRequest(f"This server does not support this topic: {topic}")
                targets = hosts or sorted(await self._network.hosts(topic))
                for host in targets:
                    report = SyncReport(topic=topic, host=host)
                    with trio.move_on_after(self._config.sync_deadline) as scope:
                        try:
                            await self._sync(topic, host.rstrip("/"), report)
                        except (GaspError, httpx.HTTPError, ValueError) as exc:
                            report.error = str(exc) or type(exc).__name__
                            self._metrics.overlay_sync.labels("host_dropped").inc()
                    if scope.cancelled_caught:
                        report.error = f"sync did not finish within {self._config.sync_deadline:g}s"
                    reports.append(report)
            self.rounds += 1
            self.last_reports = reports
            done, self._round_done = self._round_done, trio.Event()
            done.set()
            return reports

    async def wait_rounds(self, count: int) -> None:
        """Return once ``count`` rounds have finished since the node started."""
        while self.rounds < count:
            await self._round_done.wait()

    # -- one host --------------------------------------------------------------------------------------------

    async def _post(self, url: str, body: dict[str, Any], limit: int, headers: dict[str, str] | None = None) -> Any:
        if self._client is None:
            raise OverlayError("the GASP client is not running")
        # the whole exchange is bounded here, whatever the transport's own timeouts (BRC-104 handshakes included)
        with trio.move_on_after(self._config.sync_timeout) as scope:
            async with self._client.stream("POST", url, json=body, headers=headers) as response:
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise GaspError(f"{url} answered more than {limit} bytes")
                status = response.status_code
        if scope.cancelled_caught:
            raise httpx.ReadTimeout(f"{url} did not answer within {self._config.sync_timeout:g}s")
        if status != 200:
            raise GaspError(f"{url} answered {status}: {bytes(data[:200])!r}")
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise GaspError(f"{url} answered something that is not JSON: {exc}") from None

    async def _sync(self, topic: str, host: str, report: SyncReport) -> None:
        since = await self._store.overlay.sync_since(host, topic)
        page = self._config.sync_page
        while True:
            question = {"version": 1, "since": since, "limit": page}
            answer = await self._post(f"{host}/requestSyncResponse", question, _MAX_PAGE, {"X-BSV-Topic": topic})
            listed = _utxo_list(answer, page)
            report.listed += len(listed)
            held = await self._engine.holds(topic, [(t, v) for t, v, _ in listed])
            new_since, stop = since, False
            results = await self._fetch_page(host, topic, [(t, v) for t, v, _ in listed if (t, v) not in held], report)
            for txid, vout, score in listed:  # oldest first: progress stops before the first one to retry
                if results.get((txid, vout), True) is None:
                    stop = True
                    break
                new_since = max(new_since, score)
            if new_since > since:
                await self._store.overlay.set_sync_since(host, topic, new_since, self._clock())
            report.since = new_since
            if stop or len(listed) < page or new_since <= since:
                return
            since = new_since

    async def _fetch_page(
        self, host: str, topic: str, outpoints: list[Outpoint], report: SyncReport
    ) -> dict[Outpoint, bool | None]:
        """:meth:`_fetch_and_admit` for each of ``outpoints``, ``overlay.sync_concurrency`` at a time."""
        results: dict[Outpoint, bool | None] = {}
        limiter = trio.CapacityLimiter(self._config.sync_concurrency)

        async def one(txid: str, vout: int) -> None:
            async with limiter:
                results[(txid, vout)] = await self._fetch_and_admit(host, topic, txid, vout, report)

        async with trio.open_nursery() as nursery:
            for txid, vout in outpoints:
                nursery.start_soon(one, txid, vout)
        return results

    async def _fetch_and_admit(self, host: str, topic: str, txid: str, vout: int, report: SyncReport) -> bool | None:
        """Fetch one output's graph and admit it: True (admitted), False (refused as invalid), None (retry later)."""
        graph_id = f"{txid}.{vout}"
        try:
            graph = await self._graph(host, topic, graph_id, txid, vout)
        except httpx.HTTPError as exc:
            logger.debug("GASP node %s from %s unavailable: %s", graph_id, host, exc)
            self._metrics.overlay_sync.labels("unavailable").inc()
            return None
        except GaspError as exc:
            logger.info("GASP graph %s from %s refused: %s", graph_id, host, exc)
            self._metrics.overlay_sync.labels("bad_graph").inc()
            report.refused += 1
            return False
        report.fetched += len(graph.nodes)
        admitted = False
        try:
            for ptx in _oldest_first(graph):
                beef = await self._beef(ptx, graph)
                steak = await self._engine.submit(beef, [topic], mode="historical-tx")
                admitted = admitted or bool(steak.get(topic, {}).get("outputsToAdmit"))
        except BadRequest as exc:
            logger.info("GASP graph %s from %s not admitted: %s", graph_id, host, exc)
            self._metrics.overlay_sync.labels("refused").inc()
            report.refused += 1
            return False
        held = await self._engine.holds(topic, [(txid, vout)])
        if held:
            report.admitted += 1
            self._metrics.overlay_sync.labels("admitted").inc()
            return True
        report.refused += 1
        self._metrics.overlay_sync.labels("not_admitted").inc()
        return False

    async def _node(self, host: str, graph_id: str, txid: str, vout: int) -> ParsedTx:
        question = {"graphID": graph_id, "txid": txid, "outputIndex": vout, "metadata": False}
        answer = await self._post(f"{host}/requestForeignGASPNode", question, _MAX_NODE)
        if not isinstance(answer, dict) or not isinstance(answer.get("rawTx"), str):
            raise GaspError(f"the node for {txid} has no rawTx")
        try:
            submission = parse_submission(bytes.fromhex(answer["rawTx"]))
        except (ValueError, Refusal) as exc:
            raise GaspError(f"the rawTx for {txid} is not a transaction: {exc}") from None
        if submission.format != "raw" or submission.subject.txid != txid:
            raise GaspError(f"asked for {txid}, got {submission.subject.txid}")
        ptx = submission.subject
        proof = answer.get("proof")
        if proof is not None:
            if not isinstance(proof, str):
                raise GaspError(f"the proof of {txid} is not hex")
            try:
                bump = bytes.fromhex(proof)
                root = path_root(bump, txid)
                height, _ = varint_at(bump, 0)
            except (ValueError, IndexError) as exc:
                raise GaspError(f"the proof of {txid} does not prove it: {exc}") from None
            ptx = dataclasses.replace(ptx, bump=bump, bump_root=root, block_height=height)
        return ptx

    async def _graph(self, host: str, topic: str, graph_id: str, txid: str, vout: int) -> _Graph:
        graph = _Graph()
        root = await self._node(host, graph_id, txid, vout)
        graph.nodes[txid] = root
        size = len(root.raw)
        todo = [root]
        while todo:
            ptx = todo.pop()
            wanted = await self._needed(topic, ptx)
            for need_txid, need_vout in wanted:
                if need_txid in graph.nodes:
                    continue
                if len(graph.nodes) >= self._config.sync_max_nodes:
                    raise GaspError(
                        f"the graph of {graph_id} holds more than {self._config.sync_max_nodes} transactions"
                    )
                child = await self._node(host, graph_id, need_txid, need_vout)
                size += len(child.raw)
                if size > _MAX_GRAPH_BYTES:
                    raise GaspError(f"the graph of {graph_id} is larger than {_MAX_GRAPH_BYTES} bytes")
                graph.nodes[need_txid] = child
                todo.append(child)
        return graph

    async def _needed(self, topic: str, ptx: ParsedTx) -> list[Outpoint]:
        """The inputs of ``ptx`` to fetch: all those this node does not hold when it is unproven; those its topic
        manager names when it is proven and not admissible as it is."""
        if ptx.bump is None:
            spends = [(i.txid, i.vout) for i in ptx.inputs]
            held = await self._engine.held_outputs({t for t, _ in spends})
            return [(t, v) for t, v in spends if t not in held]
        manager = self._engine.managers[topic]
        tagged = TaggedTx(beef=b"", submission=Submission(format="beef", txs=(ptx,)), mode="historical-tx")
        try:
            if manager.admissible_outputs(tagged, []).outputs_to_admit:
                return []
            return list(manager.needed_inputs(tagged))
        except Exception:
            logger.debug("topic manager %s failed on %s", topic, ptx.txid, exc_info=True)
            return []

    async def _beef(self, ptx: ParsedTx, graph: _Graph) -> bytes:
        """A BEEF of ``ptx`` with its ancestry: from the graph, else from what this node stores."""
        chain: dict[str, ParsedTx] = {}
        outside: set[str] = set()
        todo = [ptx]
        while todo:
            t = todo.pop()
            if t.txid in chain:
                continue
            chain[t.txid] = t
            if t.bump is not None:
                continue
            for i in t.inputs:
                parent = graph.nodes.get(i.txid)
                if parent is not None:
                    todo.append(parent)
                else:
                    outside.add(i.txid)
        submissions = []
        if outside:
            stored = await self._store.overlay.beefs(outside)
            submissions = [parse_submission(data) for data in stored.values()]
        own = Submission(format="beef", txs=tuple(chain.values()))
        entries = merge_entries([*submissions, own])
        # the subject last: merge_entries orders parents first; ptx has no child here
        entries = [e for e in entries if e.txid != ptx.txid] + [BeefEntry(ptx.txid, ptx.raw, ptx.bump)]
        return encode_beef(entries, version=1)


def _utxo_list(answer: Any, page: int) -> list[tuple[str, int, int]]:
    if not isinstance(answer, dict) or not isinstance(answer.get("UTXOList"), list):
        raise GaspError("the sync response has no UTXOList")
    items = answer["UTXOList"]
    if len(items) > page:
        raise GaspError(f"the sync response lists {len(items)} outputs, {page} were asked for")
    out: list[tuple[str, int, int]] = []
    for item in items:
        if not isinstance(item, dict):
            raise GaspError("a UTXOList item is not an object")
        txid, vout, score = item.get("txid"), item.get("outputIndex"), item.get("score")
        if not isinstance(txid, str) or not _TXID.fullmatch(txid):
            raise GaspError(f"a UTXOList txid is not 64 hex digits: {str(txid)[:80]!r}")
        if not isinstance(vout, int) or isinstance(vout, bool) or not 0 <= vout < 2**32:
            raise GaspError("a UTXOList outputIndex is not an output index")
        if not isinstance(score, int | float) or isinstance(score, bool) or not 0 <= score < 2**63:
            raise GaspError("a UTXOList score is not a number of ms")
        out.append((txid, vout, int(score)))
    out.sort(key=lambda u: u[2])
    return out


def _oldest_first(graph: _Graph) -> list[ParsedTx]:
    """The graph's transactions, each after the graph transactions it spends."""
    order: list[ParsedTx] = []
    done: set[str] = set()
    for start in graph.nodes.values():
        stack: list[tuple[ParsedTx, bool]] = [(start, False)]
        while stack:
            ptx, expanded = stack.pop()
            if ptx.txid in done:
                continue
            if expanded:
                done.add(ptx.txid)
                order.append(ptx)
                continue
            stack.append((ptx, True))
            stack.extend(
                (graph.nodes[i.txid], False) for i in ptx.inputs if i.txid in graph.nodes and i.txid not in done
            )
    return order
