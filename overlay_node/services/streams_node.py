"""The paid streams service of a node: the producer and consumer sides started together (``Node`` builds one
:class:`Streams` and the control routes use its two halves)."""

from __future__ import annotations

from collections.abc import Callable

import trio

from overlay_node.clock import wall_time
from overlay_node.config import Config
from overlay_node.crypto.keys import Identity
from overlay_node.metrics import Metrics
from overlay_node.net.peers import PeerManager
from overlay_node.services.dht import DhtService
from overlay_node.services.payments import Payments
from overlay_node.services.streams import StreamProducer
from overlay_node.services.streams_consumer import StreamConsumer
from overlay_node.services.wallet import Wallet
from overlay_node.store.db import Store

__all__ = ["Streams"]


class Streams:
    """``streams.producer`` (create, push, close, status) and ``streams.consumer`` (subscribe)."""

    def __init__(
        self,
        identity: Identity,
        config: Config,
        store: Store,
        metrics: Metrics,
        peers: PeerManager,
        dht: DhtService,
        payments: Payments,
        wallet: Wallet,
        *,
        wall_clock: Callable[[], float] = wall_time,
    ) -> None:
        self.producer = StreamProducer(
            identity,
            config.streams,
            config.wallet,
            store,
            metrics,
            peers,
            dht,
            payments,
            lambda: peers.listen_addresses,
            wall_clock=wall_clock,
        )
        self.consumer = StreamConsumer(
            identity, config.streams, store, metrics, peers, dht, payments, wallet, wall_clock=wall_clock
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.producer.run)
            await nursery.start(self.consumer.run)
            task_status.started()
