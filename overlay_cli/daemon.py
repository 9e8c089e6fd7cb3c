"""``overlay-node run``: start a Node under trio with signal handling, print where it listens."""

from __future__ import annotations

import json
import signal
import sys

import trio

from overlay_node.config import Config
from overlay_node.datadir import DataDir
from overlay_node.errors import OverlayError
from overlay_node.node import Node, NodeInfo


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
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signals() -> None:
                count = 0
                async for _ in signals:
                    count += 1
                    if count == 1:
                        sys.stderr.write("shutting down (signal again to force)\n")
                        node.request_shutdown()
                    else:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(on_signals)
            info = await nursery.start(node.run)
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
    try:
        trio.run(_main, dd, cfg, as_json)
    except BaseExceptionGroup as group:
        ours = first_overlay_error(group)
        if ours is None:
            raise
        raise ours from group


def first_overlay_error(exc: BaseException) -> OverlayError | None:
    """The first OverlayError inside (possibly nested) exception groups."""
    if isinstance(exc, OverlayError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_overlay_error(inner)
            if found is not None:
                return found
    return None
