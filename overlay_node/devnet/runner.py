"""Running the devnet ledger: :func:`run_devnet` (a trio service, embeddable in a node) and
:func:`serve_foreground` (the ``overlay-node devnet`` process, with SIGINT/SIGTERM handling).

Theory of operation: ``run_devnet`` locks the data dir (one ledger per dir), opens and migrates
``<data_dir>/ledger.db``, starts the ledger (genesis on first use), binds the HTTP socket, serves the ARC app
and, when ``block_interval`` > 0, the block maker; only then does it report :class:`DevnetInfo` through
``task_status``. Setting the ``shutdown`` event stops the block maker, drains HTTP for ``graceful_timeout``
seconds and closes the database.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import trio

from overlay_node.chain.validation import Policy
from overlay_node.config import StoreSection
from overlay_node.datadir import DataDir
from overlay_node.devnet.app import devnet_app
from overlay_node.devnet.ledger import Ledger
from overlay_node.errors import ConfigError, DataDirError, first_overlay_error
from overlay_node.net.listen import bind_tcp, serve_app
from overlay_node.signals import relay_stop_signals
from overlay_node.store.ledger import open_ledger_store

logger = logging.getLogger(__name__)

LEDGER_DB = "ledger.db"


@dataclass(frozen=True, slots=True, kw_only=True)
class DevnetSettings:
    """How to run a devnet ledger.

    Attributes:
        data_dir: holds ``ledger.db`` (created if missing).
        host, port: where to serve HTTP (port 0 picks a free one).
        block_interval: seconds between blocks when transactions wait; 0 makes blocks only on ``POST
            /v1/mine``.
        policy: the fee and size policy served at ``/v1/policy``.
        faucet_max: the largest faucet payout, in satoshis.
        max_body: the largest request body, in bytes.
        max_batch: the most transactions per ``/v1/txs`` request.
        api_key: when set, required as ``Authorization: Bearer <api_key>``.
        graceful_timeout: seconds to drain HTTP requests at shutdown.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 4762
    block_interval: float = 5.0
    policy: Policy = field(default_factory=Policy)
    faucet_max: int = 100 * 100_000_000
    pool_outputs: int = 1000
    max_body: int = 32 * 1024 * 1024
    max_batch: int = 10_000
    api_key: str = ""
    graceful_timeout: float = 2.0
    store: StoreSection = field(default_factory=StoreSection)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"devnet.port: {self.port} is not a TCP port")
        if self.block_interval < 0:
            raise ConfigError(f"devnet.block_interval: {self.block_interval} must be >= 0")
        if self.faucet_max < 1 or self.max_body < 1024 or self.max_batch < 1 or self.pool_outputs < 1:
            raise ConfigError("devnet: faucet_max, pool_outputs and max_batch must be >= 1, max_body >= 1024")


@dataclass(frozen=True, slots=True, kw_only=True)
class DevnetInfo:
    """Where a started devnet listens and what it holds."""

    url: str
    host: str
    port: int
    data_dir: Path
    height: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "host": self.host,
            "port": self.port,
            "data_dir": str(self.data_dir),
            "height": self.height,
        }


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def run_devnet(
    settings: DevnetSettings,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[DevnetInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a devnet ledger until ``shutdown`` is set (or the caller cancels).

    Args:
        settings: where and how to run.
        shutdown: set it to stop gracefully; without one, the devnet runs until cancelled.
        task_status: receives :class:`DevnetInfo` once the ledger is open and HTTP is listening.

    Raises:
        DataDirError: the data dir cannot be created or another devnet holds it.
        StoreError: ``ledger.db`` cannot be opened or migrated.
        TransportError: the port cannot be bound.
    """
    stop = shutdown if shutdown is not None else trio.Event()
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot create devnet data dir {settings.data_dir}: {exc.strerror or exc}") from exc
    with DataDir(settings.data_dir).lock():
        async with open_ledger_store(settings.data_dir / LEDGER_DB, settings.store) as repo:
            ledger = Ledger(
                repo,
                policy=settings.policy,
                faucet_max=settings.faucet_max,
                pool_outputs=settings.pool_outputs,
            )
            await ledger.start()
            app = devnet_app(ledger, max_body=settings.max_body, max_batch=settings.max_batch, api_key=settings.api_key)
            sock = bind_tcp(settings.host, settings.port)
            port = int(sock.getsockname()[1])
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(
                        serve_app,
                        app,
                        sock,
                        shutdown_trigger=stop.wait,
                        graceful_timeout=settings.graceful_timeout,
                    )
                )
                maker = trio.CancelScope()
                if settings.block_interval > 0:

                    async def make_blocks() -> None:
                        with maker:
                            await ledger.serve_block_maker(settings.block_interval)

                    nursery.start_soon(make_blocks)
                tip = await ledger.chaintip()
                info = DevnetInfo(
                    url=_url(settings.host, port),
                    host=settings.host,
                    port=port,
                    data_dir=settings.data_dir,
                    height=tip.height,
                )
                logger.info("devnet ledger serving ARC on %s (data %s)", info.url, settings.data_dir)
                task_status.started(info)
                await stop.wait()
                maker.cancel()
            logger.info("devnet ledger on %s stopped", info.url)


def _announce(info: DevnetInfo, *, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(info.as_dict()) + "\n")
    else:
        out.write(f"devnet ledger ready\n  url       {info.url}\n  data dir  {info.data_dir}\n")
        out.write(f"  height    {info.height}\n")
    out.flush()


async def _foreground(settings: DevnetSettings, as_json: bool, out: TextIO) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(relay_stop_signals, stop.set, nursery.cancel_scope, "devnet")

        async def devnet(*, task_status: trio.TaskStatus[DevnetInfo] = trio.TASK_STATUS_IGNORED) -> None:
            await run_devnet(settings, shutdown=stop, task_status=task_status)
            nursery.cancel_scope.cancel()  # stopped: stop listening for signals too

        info: DevnetInfo = await nursery.start(devnet)
        _announce(info, as_json=as_json, out=out)


def serve_foreground(settings: DevnetSettings, *, as_json: bool = False, out: TextIO | None = None) -> None:
    """Run a devnet in this process until SIGINT/SIGTERM (a second signal forces the stop).

    Prints where it listens once ready: one JSON line (``url``, ``host``, ``port``, ``data_dir``, ``height``)
    with ``as_json``, else a few lines for people.

    Raises:
        OverlayError: the first of our errors that stopped it (unwrapped from trio's exception groups).
    """
    try:
        trio.run(_foreground, settings, as_json, out if out is not None else sys.stdout)
    except BaseExceptionGroup as group:
        ours = first_overlay_error(group)
        if ours is None:
            raise
        raise ours from group
