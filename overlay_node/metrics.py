"""Prometheus metrics of one node.

Each node owns a :class:`Metrics` with its own registry, so several nodes can live in one process (tests) without
sharing counters. Services receive the object and update the instruments they own (those named here, or their own,
made with :func:`instrument`); ``/metrics`` renders it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Metrics", "instrument"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The instruments of one node. Add an instrument here when a service needs one; name it ``overlay_*``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: the instruments services made on this registry with :func:`instrument`, by name
        self.service_instruments: dict[str, Any] = {}
        r = self.registry
        self.up = Gauge("overlay_up", "1 while the node is ready", registry=r)
        self.peer_links = Gauge("overlay_peer_links", "Authenticated peer links open now", registry=r)
        self.peer_links_opened = Counter(
            "overlay_peer_links_opened", "Peer links authenticated", ["direction"], registry=r
        )
        self.peer_drops = Counter(
            "overlay_peer_drops", "Peer links closed because the peer broke the protocol", ["reason"], registry=r
        )
        self.frames = Counter("overlay_frames", "Peer frames", ["direction"], registry=r)
        self.frame_bytes = Counter("overlay_frame_bytes", "Peer frame bytes", ["direction"], registry=r)
        self.requests = Counter("overlay_peer_requests", "Peer requests served", ["method", "outcome"], registry=r)
        #: children of ``requests`` by (method, outcome) (see :meth:`peer_request`)
        self._request_children: dict[tuple[str, str], Any] = {}
        self.dials = Counter("overlay_dials", "Outgoing dials", ["outcome"], registry=r)
        # DHT (services/dht.py)
        self.dht_datagrams = Counter("overlay_dht_datagrams", "DHT datagrams", ["direction"], registry=r)
        self.dht_bytes = Counter("overlay_dht_bytes", "DHT datagram bytes", ["direction"], registry=r)
        self.dht_drops = Counter(
            "overlay_dht_drops",
            "DHT datagrams dropped (rate limit, malformed, bad signature...)",
            ["reason"],
            registry=r,
        )
        self.dht_record_refusals = Counter(
            "overlay_dht_record_refusals",
            "DHT records refused (forged, oversized, over a limit...)",
            ["reason"],
            registry=r,
        )
        self.dht_requests = Counter(
            "overlay_dht_requests", "DHT requests sent, by method and outcome", ["method", "outcome"], registry=r
        )
        self.dht_evictions = Counter(
            "overlay_dht_evictions", "Contacts evicted from the routing table", ["reason"], registry=r
        )
        self.dht_lookups = Counter("overlay_dht_lookups", "Iterative DHT lookups run", ["kind"], registry=r)
        self.dht_contacts = Gauge("overlay_dht_contacts", "Contacts in the DHT routing table", registry=r)
        self.dht_records = Gauge("overlay_dht_records", "Records held for the DHT (tombstones included)", registry=r)
        # overlay engine (services/overlay_engine.py)
        self.overlay_submissions = Counter(
            "overlay_engine_submissions", "BRC-22 submissions, by outcome", ["outcome"], registry=r
        )
        self.overlay_admitted = Counter("overlay_engine_admitted", "Outputs admitted, by topic", ["topic"], registry=r)
        self.overlay_lookups = Counter("overlay_engine_lookups", "BRC-24 lookups, by outcome", ["outcome"], registry=r)
        self.overlay_propagations = Counter(
            "overlay_engine_propagations", "Submissions forwarded to other hosts, by outcome", ["outcome"], registry=r
        )
        self.overlay_sync = Counter(
            "overlay_engine_sync",
            "GASP: outputs synced from other hosts and hosts dropped, by outcome",
            ["outcome"],
            registry=r,
        )
        self.overlay_fills = Counter(
            "overlay_engine_fills", "Tokens fetched from DHT-known hosts, by outcome", ["outcome"], registry=r
        )
        self.dht_own_records = Gauge("overlay_dht_own_records", "Records this node publishes", registry=r)

        self.adverts_published = Counter("overlay_adverts_published", "Adverts published", ["kind"], registry=r)
        self.adverts_pushed_in = Counter("overlay_adverts_pushed_in", "Adverts accepted from peer pushes", registry=r)
        self.advert_drops = Counter("overlay_advert_drops", "Adverts refused", ["reason"], registry=r)
        self.adverts_banned_hosts = Gauge("overlay_adverts_banned_hosts", "Hosts suppressed by the janitor", registry=r)

        self.content_bytes = Gauge("overlay_content_bytes", "Bytes of content held in the blob store", registry=r)
        self.content_objects = Gauge("overlay_content_objects", "Content objects held in the blob store", registry=r)
        self.content_transfers = Counter(
            "overlay_content_transfers", "Content replications and downloads", ["kind", "outcome"], registry=r
        )
        self.content_transfer_bytes = Counter(
            "overlay_content_transfer_bytes", "Content bytes moved", ["direction"], registry=r
        )
        self.content_bad_chunks = Counter(
            "overlay_content_bad_chunks", "Chunks that failed their hash check on download", registry=r
        )
        self.content_repairs = Counter("overlay_content_repairs", "Repair actions", ["action"], registry=r)
        self.gateway_requests = Counter("overlay_gateway_requests", "UHRP gateway requests", ["status"], registry=r)

    def peer_request(self, method: str, outcome: str) -> Any:
        """The ``requests`` counter for ``(method, outcome)``: a dict lookup per request served, where ``labels()``
        costs several times that (the label values are checked and joined each call). Holds no more children than
        the counter itself does."""
        key = (method, outcome)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(method, outcome)
        return child

    def render(self) -> bytes:
        """The Prometheus text exposition of every instrument."""
        return bytes(generate_latest(self.registry))


def instrument(metrics: Metrics, kind: type[Any], name: str, doc: str, labels: Sequence[str]) -> Any:
    """A service's own instrument (``kind``: ``Counter``, ``Gauge``, ...) on the node's registry, made once per
    :class:`Metrics`: a service built again on the same metrics (a restart in one process) gets the one it made
    before, which the registry would refuse to register twice."""
    made = metrics.service_instruments.get(name)
    if made is None:
        made = kind(name, doc, list(labels), registry=metrics.registry)
        metrics.service_instruments[name] = made
    return made
