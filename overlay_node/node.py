"""The node: owns the data dir, the store and every service, and runs them in dependency order.

Theory of operation:
1. ``Node.run`` takes the data-dir lock, loads the identity, opens the store (migrations run before anything
   serves), then starts each service with ``await nursery.start(...)`` so that readiness is real: peer links,
   public HTTP, control socket. Only then is ``api.json`` written and ``task_status.started(info)`` called.
2. A shutdown request (signal in the CLI, ``ctl stop``, or :meth:`Node.request_shutdown`) sets one event. The HTTP
   servers drain on it within ``node.shutdown_grace`` seconds; the background services are cancelled at once
   (each store write is its own transaction, so there is nothing to flush).
3. ``api.json`` and the control socket's file are removed, and the lock released (``node.lock`` removed), whatever
   way ``run`` ends. Files the node creates are its user's alone (umask 077 added at start).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from overlay_node import __version__
from overlay_node.api.control import control_app
from overlay_node.api.control_adverts import adverts_routes
from overlay_node.api.control_content import content_routes
from overlay_node.api.control_overlay import overlay_control_routes
from overlay_node.api.control_reports import reports_routes
from overlay_node.api.control_streams import streams_routes
from overlay_node.api.control_wallet import wallet_routes
from overlay_node.api.gateway import gateway_routes, price_of
from overlay_node.api.http_auth import HttpAuth, protect, route_pricer
from overlay_node.api.overlay import overlay_routes, with_hot_routes
from overlay_node.api.public import public_app
from overlay_node.clock import wall_time
from overlay_node.config import Config
from overlay_node.crypto.keys import Identity
from overlay_node.datadir import DataDir
from overlay_node.devnet.runner import DevnetSettings, run_devnet
from overlay_node.errors import BadRequest, PeerTimeout
from overlay_node.metrics import Metrics
from overlay_node.net.accept import accept_failures
from overlay_node.net.http_server import HttpServerConfig
from overlay_node.net.listen import bind_tcp, bind_unix, serve_app
from overlay_node.net.peers import PeerLink, PeerManager
from overlay_node.protocol.adverts import Endpoints
from overlay_node.services.adverts import AdvertService
from overlay_node.services.auth_fetch import AuthFetch, AuthTransport
from overlay_node.services.content import ContentService
from overlay_node.services.dht import DhtService
from overlay_node.services.overlay_engine import OverlayEngine, arc_broadcaster
from overlay_node.services.overlay_network import OverlayNetwork
from overlay_node.services.overlay_sync import OverlaySync
from overlay_node.services.overlay_tokens import OverlayTokens
from overlay_node.services.payments import Payments
from overlay_node.services.reports import ReportsService
from overlay_node.services.settlement import Settlement
from overlay_node.services.streams_node import Streams
from overlay_node.services.wallet import Wallet
from overlay_node.store.db import Store, open_store
from overlay_node.tls import check_server_files, client_context
from overlay_node.topics.plugins import LookupService, TopicManager
from overlay_node.topics.registry import load_plugins

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """What a started node reports: its name and where it listens."""

    identity_key: str
    swarm: tuple[str, ...]
    dht: str
    http: str
    control: str
    data_dir: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "identity_key": self.identity_key,
            "swarm": list(self.swarm),
            "dht": self.dht,
            "http": self.http,
            "control": self.control,
            "data_dir": self.data_dir,
        }


@dataclass(slots=True, kw_only=True)
class _Boot:
    """What the start steps of one run share: the plug-ins, the TLS files, the bound sockets, and the addresses the
    first services report."""

    identity: Identity
    store: Store
    managers: dict[str, TopicManager]
    lookup_services: dict[str, LookupService]
    tls: tuple[str, str] | None
    http_sock: socket.socket
    control_sock: socket.socket
    control_path: Path
    #: where peer links are accepted (set by the ``peers`` step)
    swarm: list[str] = field(default_factory=list)
    #: the DHT's UDP address (set by the ``dht`` step)
    dht_address: str = ""


@dataclass(frozen=True, slots=True)
class _Step:
    """One step of the node's start order: its name, the steps it needs done before it, and how it starts.

    ``start`` gets the run's :class:`_Boot` and a nursery: the servers' one for ``drains`` steps (on shutdown they
    finish their requests within ``node.shutdown_grace``), else the background services' one (cancelled at once).
    A step starts its tasks with ``await nursery.start(...)``, so that it returns once they are ready.
    """

    name: str
    needs: tuple[str, ...]
    start: Callable[[_Boot, trio.Nursery], Awaitable[None]]
    drains: bool = False


class Node:
    """One overlay node. Create it, then ``await nursery.start(node.run)``; it returns its :class:`NodeInfo`."""

    def __init__(self, data_dir: DataDir, config: Config, *, wall_clock: Callable[[], float] = wall_time) -> None:
        self.data_dir = data_dir
        self.config = config
        #: wall-clock seconds for signed and stored values (tests share a clock they can move)
        self.wall_clock = wall_clock
        self.metrics = Metrics()
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        self._ready = False
        self._started_at = 0.0
        self._info: NodeInfo | None = None
        self._identity: Identity | None = None
        self._peers: PeerManager | None = None
        self._dht: DhtService | None = None
        self._adverts: AdvertService | None = None
        self._wallet: Wallet | None = None
        self._payments: Payments | None = None
        self._content: ContentService | None = None
        self._settlement: Settlement | None = None
        self._streams: Streams | None = None
        self._overlay: OverlayEngine | None = None
        self._tokens: OverlayTokens | None = None
        self._http_auth: HttpAuth | None = None
        self._auth_fetch: AuthFetch | None = None
        self._overlay_sync: OverlaySync | None = None
        #: how this node's HTTPS clients verify other nodes (the system's CAs, plus http.tls_ca)
        self.https_verify: ssl.SSLContext | bool = True
        self._ledger = ""
        self._store: Store | None = None
        #: the control socket's file, once bound (removed when the node stops)
        self._control_path: Path | None = None
        # authenticated links waiting to be recorded in known_peers (bounded: a burst past it is simply not recorded)
        self._new_links, self._new_links_rx = trio.open_memory_channel[PeerLink](256)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[NodeInfo] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every service until shutdown is requested.

        Raises:
            DataDirError: the data dir is locked by another daemon, or the identity is missing or unsafe.
            TransportError: a listening port cannot be bound.
            StoreError: the database cannot be opened or migrated.
        """
        _private_umask()
        with self.data_dir.lock():
            identity = Identity.from_private_bytes(self.data_dir.load_identity())
            self._identity = identity
            try:
                async with open_store(self.data_dir.db_path, self.config.store, presize_log=True) as store:
                    self._store = store
                    await self._run_services(identity, store, task_status)
            finally:
                self._ready = False
                self.metrics.up.set(0)
                self.data_dir.remove_api()
                self._remove_control_socket()
                self._stopped.set()
                logger.info("node %s stopped", identity.public_key_hex[:16])

    async def _run_services(self, identity: Identity, store: Store, task_status: trio.TaskStatus[NodeInfo]) -> None:
        boot = self._prepare(identity, store)
        # the peer manager and other background services live in their own (inner) nursery so that the HTTP
        # servers can drain first and the rest is then cancelled with a deadline
        async with trio.open_nursery() as servers, trio.open_nursery() as services:
            for step in self._start_order():
                await step.start(boot, servers if step.drains else services)
            info = self._report_ready(boot)
            # what the node says about itself is known now (a node.info that came during the start waited for it)
            self.peers.on_request("node.info", self._serve_node_info)
            self.peers.all_methods_registered()
            task_status.started(info)
            await self._shutdown.wait()
            logger.info("node %s shutting down", identity.public_key_hex[:16])
            self._ready = False
            self.metrics.up.set(0)
            # the HTTP servers drain their requests within `node.shutdown_grace` on the same event; background
            # services are cancelled at once and save what they must in shielded, time-bounded cleanup (DHT records,
            # stream positions); everything acknowledged was committed before it was acknowledged
            services.cancel_scope.cancel()

    def _prepare(self, identity: Identity, store: Store) -> _Boot:
        """What comes before the first task: the plug-ins (a bad one fails before anything listens), the TLS files,
        the two listening sockets, and the peer manager, DHT and adverts with their peer handlers registered before
        the peer manager runs."""
        cfg = self.config
        managers, lookup_services = load_plugins(
            cfg.overlay.topic_managers,
            cfg.overlay.lookup_services,
            identity_key=identity.public_key_hex,
            allow_http=cfg.overlay.allow_http,
        )
        tls = check_server_files(self._in_data_dir(cfg.http.tls_cert), self._in_data_dir(cfg.http.tls_key))
        self.https_verify = client_context(self._in_data_dir(cfg.http.tls_ca))
        http_sock = bind_tcp(cfg.http.host, cfg.http.port)
        control_path = self.data_dir.control_socket_path(cfg.control.socket)
        control_sock = bind_unix(control_path)
        self._control_path = control_path
        peers = PeerManager(identity, cfg.swarm, self.metrics)
        # links are accepted from the first step on; a peer's request for a method whose service has not started
        # yet waits for the last step instead of being answered unknown_method
        peers.hold_unknown_methods()
        self._peers = peers
        dht = DhtService(identity, cfg.dht, store, self.metrics, wall_clock=self.wall_clock)
        self._dht = dht
        self._adverts = AdvertService(
            identity, cfg.adverts, dht, peers, self.metrics, self._endpoints, wall_clock=self.wall_clock
        )
        peers.on_link(self._remember_link)
        # reaching a peer by its identity key: the live link, then these, in order
        peers.add_resolver(self._known_addresses)
        peers.add_resolver(self._adverts.seen_addresses)
        peers.add_resolver(self._adverts.node_addresses)
        return _Boot(
            identity=identity,
            store=store,
            managers=managers,
            lookup_services=lookup_services,
            tls=tls,
            http_sock=http_sock,
            control_sock=control_sock,
            control_path=control_path,
        )

    def _start_order(self) -> tuple[_Step, ...]:
        """Every step of startup, in the order they run; each comes after the steps it ``needs``."""
        return (
            _Step("peers", (), self._start_peers),
            _Step("dht", (), self._start_dht),
            _Step("adverts", ("dht", "peers"), self._start_adverts),
            _Step("ledger", (), self._start_ledger),
            _Step("wallet", ("ledger", "peers"), self._start_wallet),
            _Step("overlay_engine", ("wallet",), self._start_overlay_engine),
            _Step("content", ("dht", "peers", "wallet"), self._start_content),
            _Step("auth", ("wallet", "content"), self._start_auth),
            _Step("overlay_network", ("overlay_engine", "peers", "adverts", "content", "auth"), self._start_network),
            _Step("overlay_tokens", ("wallet", "overlay_engine", "adverts", "content"), self._start_tokens),
            _Step("streams", ("peers", "dht", "wallet", "adverts"), self._start_streams),
            _Step("dht_joined", ("dht",), self._join_dht),
            _Step("link_records", ("peers",), self._start_link_records),
            _Step("overlay_sync", ("overlay_network",), self._start_overlay_sync),
            _Step("public_http", ("auth", "content", "overlay_sync"), self._serve_public, drains=True),
            _Step("control", ("wallet", "content", "streams", "overlay_sync"), self._serve_control, drains=True),
        )

    async def _start_peers(self, boot: _Boot, nursery: trio.Nursery) -> None:
        """Peer links; then the peers this node knew are redialled in the background (a restarted node rejoins)."""
        boot.swarm = await nursery.start(self.peers.run)
        self.peers.redial([(p.identity_key, p.address) for p in await boot.store.peers.list()])

    async def _start_dht(self, boot: _Boot, nursery: trio.Nursery) -> None:
        boot.dht_address = await nursery.start(self.dht.run)

    async def _start_adverts(self, _boot: _Boot, nursery: trio.Nursery) -> None:
        await nursery.start(self.adverts.run)

    async def _start_ledger(self, _boot: _Boot, nursery: trio.Nursery) -> None:
        """The ledger payments settle on: the configured ARC, else a devnet embedded in this node."""
        cfg = self.config.wallet
        ledger = cfg.arc_url
        if not ledger:
            devnet = DevnetSettings(
                data_dir=self.data_dir.path / "devnet", port=0, block_interval=cfg.devnet_block_interval
            )
            ledger = (await nursery.start(partial(run_devnet, devnet, shutdown=self._shutdown))).url
        self._ledger = ledger

    async def _start_wallet(self, boot: _Boot, nursery: trio.Nursery) -> None:
        """The wallet, its settlement queue and payments over peer links: all three built (payments' peer handlers
        registered) before any of them runs."""
        cfg = self.config
        clock = self.wall_clock
        wallet = Wallet(boot.identity, cfg.wallet, boot.store, self.metrics, arc_url=self._ledger, wall_clock=clock)
        settlement = Settlement(cfg.wallet, boot.store, self.metrics, wallet, wall_clock=clock)
        payments = Payments(boot.identity, cfg.wallet, boot.store, self.metrics, self.peers, wallet, wall_clock=clock)
        for service in (wallet, payments, settlement):
            await nursery.start(service.run)
        self._wallet, self._payments, self._settlement = wallet, payments, settlement

    async def _start_overlay_engine(self, boot: _Boot, nursery: trio.Nursery) -> None:
        """The overlay host (BRC-22/24): the engine over the hosted topic managers and lookup services."""
        cfg = self.config.overlay
        wallet = self.wallet
        overlay = OverlayEngine(
            cfg,
            boot.store,
            self.metrics,
            boot.managers,
            boot.lookup_services,
            tracker=wallet.tracker.roots if cfg.spv == "headers" else None,
            broadcaster=arc_broadcaster(lambda: wallet.arc) if cfg.broadcast else None,
            clock=self.wall_clock,
        )
        await nursery.start(overlay.run)
        self._overlay = overlay

    async def _start_content(self, boot: _Boot, nursery: trio.Nursery) -> None:
        """UHRP content: blob store, replication, retrieval, repair."""
        content = ContentService(
            boot.identity,
            self.config.content,
            boot.store,
            self.dht,
            self.peers,
            self.metrics,
            self.data_dir.path / "blobs",
            self._endpoints,
            wall_clock=self.wall_clock,
            payments=self.payments,
        )
        await nursery.start(content.run)
        self._content = content

    async def _start_auth(self, boot: _Boot, nursery: trio.Nursery) -> None:
        """BRC-104/105 on the http port (api/http_auth.py), and this node's own authenticated HTTP client, which
        content uses for content bought from other nodes' gateways."""
        cfg = self.config.auth
        self._http_auth = HttpAuth(boot.identity, cfg, self.metrics, self.payments)
        self._auth_fetch = AuthFetch(
            boot.identity,
            self.metrics,
            payments=self.payments,
            verify=self.https_verify,
            timeout=cfg.client_timeout,
            max_response=cfg.max_response,
        )
        await nursery.start(self._auth_fetch.run)
        self.content.http_client = self._auth_fetch

    async def _start_network(self, boot: _Boot, nursery: trio.Nursery) -> None:
        """The overlay host among others: propagation and the DHT fill of ls_ship/ls_slap/ls_uhrp answers; and GASP
        sync with the other hosts, built here and started later (``_start_overlay_sync``)."""
        cfg = self.config.overlay
        network = OverlayNetwork(
            cfg,
            self.overlay,
            self.peers,
            self.adverts,
            self.content,
            self.metrics,
            identity_key=boot.identity.public_key_hex,
            own_url=lambda: self.info.http,
            verify=self.https_verify,
        )
        await nursery.start(network.run)
        # GASP through AuthTransport: plain to hosts that leave the routes open (the reference's default), signed
        # (BRC-104) to those that protect them (ours, by default)
        self._overlay_sync = OverlaySync(
            cfg,
            self.overlay,
            network,
            boot.store,
            self.metrics,
            transport=AuthTransport(self.auth_fetch),
            clock=self.wall_clock,
        )

    async def _start_tokens(self, boot: _Boot, _nursery: trio.Nursery) -> None:
        """This node's own SHIP/SLAP/UHRP tokens on chain (wallet-paid); adverts and content make theirs through it.
        No task of its own."""
        self._tokens = OverlayTokens(
            boot.identity,
            boot.store,
            self.wallet,
            self.overlay,
            public_url=lambda: self.info.http,
            allow_http=self.config.overlay.allow_http,
            wall_clock=self.wall_clock,
        )
        self.adverts.tokens = self._tokens
        self.content.tokens = self._tokens

    async def _start_streams(self, boot: _Boot, nursery: trio.Nursery) -> None:
        """Paid live streams: producer and consumer sides."""
        streams = Streams(
            boot.identity,
            self.config,
            boot.store,
            self.metrics,
            self.peers,
            self.dht,
            self.payments,
            self.wallet,
            wall_clock=self.wall_clock,
        )
        streams.producer.adverts = self.adverts
        await nursery.start(streams.run)
        self._streams = streams

    async def _join_dht(self, _boot: _Boot, _nursery: trio.Nursery) -> None:
        """Readiness includes having joined the DHT, bounded so that a dead bootstrap list cannot hold us back."""
        cfg = self.config.dht
        with trio.move_on_after(cfg.request_timeout * (cfg.request_retries + 1) * 2 + 1):
            await self.dht.wait_bootstrapped()

    async def _start_link_records(self, boot: _Boot, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._record_links, boot.store)

    async def _start_overlay_sync(self, _boot: _Boot, nursery: trio.Nursery) -> None:
        """GASP syncs with the other hosts once this node answers (they may sync back from it)."""
        await nursery.start(self.overlay_sync.run)

    async def _serve_public(self, boot: _Boot, nursery: trio.Nursery) -> None:
        """The http port: health, metrics, the UHRP gateway and the overlay routes, behind BRC-104/105."""
        cfg = self.config
        await nursery.start(
            partial(
                serve_app,
                protect(
                    with_hot_routes(public_app(self, [*gateway_routes(), *overlay_routes()])),
                    self.http_auth,
                    route_pricer(partial(price_of, self.content), cfg.auth.lookup_price),
                ),
                boot.http_sock,
                shutdown_trigger=self._shutdown.wait,
                graceful_timeout=cfg.node.shutdown_grace,
                tls=boot.tls,
                config=HttpServerConfig(
                    max_body=cfg.http.max_body,
                    max_head=cfg.http.max_head,
                    max_connections=cfg.http.max_connections,
                    max_connections_per_ip=cfg.http.max_connections_per_ip,
                    max_body_memory=cfg.http.max_body_memory,
                    head_timeout=cfg.http.head_timeout,
                    keep_alive_timeout=cfg.http.keep_alive_timeout,
                ),
                on_accept_failure=accept_failures(self.metrics).labels("http").inc,
            )
        )

    async def _serve_control(self, boot: _Boot, nursery: trio.Nursery) -> None:
        """The control socket: ``/v1/...`` for the CLI."""
        await nursery.start(
            partial(
                serve_app,
                control_app(
                    self,
                    [
                        *adverts_routes(),
                        *wallet_routes(),
                        *content_routes(),
                        *streams_routes(),
                        *overlay_control_routes(),
                        *reports_routes(),
                    ],
                ),
                boot.control_sock,
                shutdown_trigger=self._shutdown.wait,
                graceful_timeout=self.config.node.shutdown_grace,
            )
        )

    def _report_ready(self, boot: _Boot) -> NodeInfo:
        """Everything runs: write ``api.json``, mark the node ready, and return where it listens."""
        cfg = self.config
        host, port = boot.http_sock.getsockname()[:2]
        info = NodeInfo(
            identity_key=boot.identity.public_key_hex,
            swarm=tuple(boot.swarm),
            dht=boot.dht_address,
            http=cfg.http.public_url.rstrip("/") or _origin("https" if boot.tls else "http", host, port),
            control=str(boot.control_path),
            data_dir=str(self.data_dir.path),
        )
        self._info = info
        self._started_at = time.monotonic()
        self.data_dir.write_api({"pid": os.getpid(), "version": __version__, **info.as_dict()})
        self._ready = True
        self.adverts.node_ready()
        self.content.node_ready()
        self.overlay_sync.node_ready()
        self.metrics.up.set(1)
        logger.info("node %s ready: swarm %s, http %s", boot.identity.public_key_hex[:16], boot.swarm, info.http)
        return info

    def _remove_control_socket(self) -> None:
        """Remove the control socket's file (the socket itself is closed by its server): a stopped node leaves no
        socket behind. One left by a crash is harmless: the next start replaces it (``bind_unix``)."""
        path, self._control_path = self._control_path, None
        if path is not None:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("cannot remove the control socket %s: %s", path, exc.strerror or exc)

    def _in_data_dir(self, path: str) -> str:
        """A configured file path: relative ones are inside the data dir."""
        if not path:
            return ""
        return str(self.data_dir.path / path) if not os.path.isabs(path) else path

    def request_shutdown(self) -> None:
        """Ask the node to stop gracefully; returns at once."""
        self._shutdown.set()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`run` has finished (``api.json`` removed, lock released)."""
        await self._stopped.wait()

    # -- what the APIs read ------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def info(self) -> NodeInfo:
        return _started(self._info)

    @property
    def dht(self) -> DhtService:
        return _started(self._dht)

    @property
    def adverts(self) -> AdvertService:
        return _started(self._adverts)

    @property
    def wallet(self) -> Wallet:
        return _started(self._wallet)

    @property
    def content(self) -> ContentService:
        return _started(self._content)

    @property
    def payments(self) -> Payments:
        return _started(self._payments)

    @property
    def settlement(self) -> Settlement:
        return _started(self._settlement)

    @property
    def streams(self) -> Streams:
        return _started(self._streams)

    @property
    def reports(self) -> ReportsService:
        """Reports over the store: what this node bought (``ctl report``) and sold (``ctl analytics``)."""
        return ReportsService(_started(self._store), wall_clock=self.wall_clock)

    @property
    def overlay(self) -> OverlayEngine:
        return _started(self._overlay)

    @property
    def overlay_sync(self) -> OverlaySync:
        return _started(self._overlay_sync)

    @property
    def tokens(self) -> OverlayTokens:
        return _started(self._tokens)

    @property
    def http_auth(self) -> HttpAuth:
        """BRC-104/105 on the http port: sessions and counters."""
        return _started(self._http_auth)

    @property
    def auth_fetch(self) -> AuthFetch:
        """This node's authenticated HTTP client (``AuthTransport(node.auth_fetch)`` puts it under httpx)."""
        return _started(self._auth_fetch)

    def _endpoints(self) -> Endpoints:
        info = self.info
        return Endpoints(swarm=info.swarm, http=info.http, dht=info.dht)

    @property
    def peers(self) -> PeerManager:
        return _started(self._peers)

    def status(self) -> dict[str, Any]:
        info = self.info
        return {
            **info.as_dict(),
            "name": self.config.node.name,
            "version": __version__,
            "pid": os.getpid(),
            "ready": self._ready,
            "uptime": round(time.monotonic() - self._started_at, 3),
            "peers": len(self.peers.links()),
            "dht_contacts": len(self.dht.contacts()),
            "ledger": self._ledger,
            "http_auth": {
                **(self._http_auth.status() if self._http_auth is not None else {}),
                "client": self._auth_fetch.status() if self._auth_fetch is not None else {},
            },
        }

    def peer_list(self) -> list[dict[str, Any]]:
        return [link_info_dict(link) for link in self.peers.links()]

    async def connect_peer(self, address: str) -> dict[str, Any]:
        if address.strip() != address or " " in address:
            raise BadRequest(f"bad peer address {address!r}: expected host:port or ws://host:port/p2p/1")
        link = await self.peers.connect(address, persistent=True)
        return {"identity_key": link.peer_key, "address": address}

    async def wait_peers(self, identity_keys: list[str], timeout: float) -> dict[str, Any]:
        """Wait until a link to every key in ``identity_keys`` is authenticated.

        Raises:
            PeerTimeout: not all were linked within ``timeout`` seconds (the message lists the missing ones).
        """
        linked: set[str] = set()

        async def wait_one(key: str) -> None:
            await self.peers.wait_linked(key)
            linked.add(key)

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for key in identity_keys:
                    nursery.start_soon(wait_one, key)
        missing = [k for k in identity_keys if k not in linked]
        if missing:
            raise PeerTimeout(f"not linked after {timeout:g}s: {', '.join(k[:16] for k in missing)}")
        return {"linked": identity_keys}

    # -- peer request handlers ---------------------------------------------------------------------------------

    async def _serve_node_info(self, _link: PeerLink, _body: dict[str, Any]) -> dict[str, Any]:
        info = self.info
        return {
            "identity_key": info.identity_key,
            "swarm": list(info.swarm),
            "http": info.http,
            "name": self.config.node.name,
        }

    def _remember_link(self, link: PeerLink) -> None:
        try:
            self._new_links.send_nowait(link)
        except trio.WouldBlock:
            logger.debug("link record queue full; not recording %s", link.peer_key[:16])

    async def _known_addresses(self, identity_key: str) -> tuple[str, ...]:
        """Where ``identity_key`` was last reached (``known_peers``), for ``PeerManager.reach``."""
        known = await self.store.peers.get(identity_key)
        return (known.address,) if known is not None else ()

    @property
    def store(self) -> Store:
        return _started(self._store)

    async def _record_links(self, store: Store) -> None:
        """Persist every authenticated peer so a restarted node can find its neighbours again."""
        async for link in self._new_links_rx:
            # a dialled link's address is dialable; an inbound link shows the peer's ephemeral port, so for those
            # the first listen address the peer announced in its Hello is kept
            address = next(
                (li.address for li in self.peers.links() if li.identity_key == link.peer_key and li.direction == "out"),
                "",
            ) or next(iter(link.listen_addresses), "")
            if address:
                await store.peers.upsert(link.peer_key, address, self.wall_clock())


def settle_heap() -> None:
    """For a daemon's process once its node is ready: collect the garbage of the start once, then freeze what is left
    (``gc.freeze``: modules, classes, config, the services' long-lived structures) out of the cyclic collector's sight.
    Otherwise every full collection walks all of it: 40-300 ms with the event loop stopped, about once per thousand
    payments of a paid stream (a W = 1 stream of 2,000 packets/s lost a tenth to a fifth of a run to one, and its
    latency p99 jumped). Objects made later are collected as before. Not for a process that starts and stops many
    nodes (tests): what a freeze pins is never collected."""
    gc.collect()
    gc.freeze()


def _private_umask() -> None:
    """Make every file and dir the node creates its user's alone (``node.db`` and its -wal/-shm, blobs, logs, the
    embedded devnet's ledger): group and others are added to the process's umask, which is never loosened."""
    os.umask(os.umask(0o077) | 0o077)


def _origin(scheme: str, host: str, port: int) -> str:
    """``scheme://host:port`` of a bound socket, as others reach it (a wildcard address is shown as loopback)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _started(service: _T | None) -> _T:
    """A service of a running node (they exist only while ``Node.run`` is running)."""
    if service is None:
        raise RuntimeError("node not started")
    return service


def link_info_dict(info: Any) -> dict[str, Any]:
    """A LinkInfo as JSON-ready data."""
    return {
        "identity_key": info.identity_key,
        "address": info.address,
        "direction": info.direction,
        "connected_at": info.connected_at,
        "frames_in": info.frames_in,
        "frames_out": info.frames_out,
        "bytes_in": info.bytes_in,
        "bytes_out": info.bytes_out,
        "rtt_ms": info.rtt_ms,
    }
