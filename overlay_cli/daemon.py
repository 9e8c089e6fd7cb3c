"""``overlay-node run``: start a Node under trio with signal handling, print where it listens."""

from __future__ import annotations

import json
import logging
import sys

import trio

from overlay_node.config import Config
from overlay_node.datadir import DataDir
from overlay_node.errors import first_overlay_error
from overlay_node.net.accept import raise_fd_limit
from overlay_node.node import Node, NodeInfo, settle_heap
from overlay_node.signals import relay_stop_signals

logger = logging.getLogger(__name__)


def _announce(info: NodeInfo, *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(info.as_dict()) + "\n")
    else:
        sys.stdout.write(
            f"overlay-node ready\n"
            f"  identity key  {info.identity_key}\n"
            f"  swarm         {' '.join(info.swarm)}\n"
            f"  http          {info.http}\n"
            f"  control       {info.control}\n"
            f"  data dir      {info.data_dir}\n"
        )
    sys.stdout.flush()


async def _main(dd: DataDir, cfg: Config, as_json: bool) -> None:
    node = Node(dd, cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay_stop_signals, node.request_shutdown, nursery.cancel_scope, "overlay-node")
        info = await nursery.start(node.run)
        settle_heap()  # what the start made stays: out of the cyclic collector's sight
        _announce(info, as_json=as_json)
        # node.run returns after a graceful shutdown; then stop listening for signals
        await node.wait_stopped()
        nursery.cancel_scope.cancel()


def run_daemon(dd: DataDir, cfg: Config, *, as_json: bool) -> None:
    """Run until SIGINT/SIGTERM or ``ctl stop``.

    Raises:
        OverlayError: the first of our errors that stopped the node (unwrapped from trio's exception group), so
            the CLI can print it as one line with its exit code.
    """
    # every peer link and HTTP client takes a descriptor: allow as many as the hard limit does
    logger.info("open files limit: %d", raise_fd_limit())
    try:
        trio.run(_main, dd, cfg, as_json)
    except BaseExceptionGroup as group:
        ours = first_overlay_error(group)
        if ours is None:
            raise
        raise ours from group
