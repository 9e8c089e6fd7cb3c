"""Signal handling for foreground processes (``overlay-node run`` and ``overlay-node devnet``)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import trio


async def relay_stop_signals(
    request_stop: Callable[[], None],
    force: trio.CancelScope,
    what: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Turn the first SIGINT/SIGTERM into ``request_stop()`` (graceful) and a second one into cancelling ``force``.

    Started with ``nursery.start`` so that the handlers are installed before the caller starts its service.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        count = 0
        async for _ in signals:
            count += 1
            if count == 1:
                sys.stderr.write(f"{what} shutting down (signal again to force)\n")
                request_stop()
            else:
                force.cancel()
