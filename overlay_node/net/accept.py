"""Accepting connections when the process runs out of descriptors or memory, and the descriptor limit itself.

``accept(2)`` fails with ``EMFILE`` (this process's descriptor limit), ``ENFILE`` (the system's), ``ENOBUFS`` or
``ENOMEM`` while every descriptor is taken -- by many idle clients, say. None of these is the listener's fault and
each passes once some connection closes, so an accept loop that meets one counts it, warns (one line, at most once
per :data:`WARN_INTERVAL`, never a traceback), pauses for :data:`ACCEPT_PAUSE` and accepts again: the connections it
already has keep being served meanwhile. :class:`AcceptGuard` is that policy for the swarm listener
(:class:`GuardedListener` around trio's listeners, which would otherwise log each failure with a traceback); the
HTTP server's own accept loop (``net/http_server.py``) does the same with a doubling pause, and both count in
:func:`accept_failures`.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
from collections.abc import Callable
from typing import Any, Final

import trio
from prometheus_client import Counter

from overlay_node.metrics import Metrics, instrument

__all__ = [
    "ACCEPT_PAUSE",
    "CAPACITY_ERRNOS",
    "WARN_INTERVAL",
    "AcceptGuard",
    "GuardedListener",
    "accept_failures",
    "raise_fd_limit",
]

logger = logging.getLogger(__name__)

#: accept errors that mean "out of resources" (trio's serve_listeners' list): pause, then accept again
CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: seconds an accept loop waits after such an error before it accepts again
ACCEPT_PAUSE: Final = 0.1
#: at most one warning per listener this often, in seconds (the count of failures since the last one in it)
WARN_INTERVAL: Final = 10.0


class AcceptGuard:
    """What an accept loop does when accept fails for lack of resources: count, warn now and then, pause.

    Args:
        name: the listener's name in the warning (``swarm``, ``http``).
        on_failure: called once per failed accept (the node counts them in a metric).
    """

    def __init__(self, name: str, on_failure: Callable[[], None] | None = None) -> None:
        self.name = name
        #: accept attempts that failed for lack of resources, in all
        self.failures = 0
        self._on_failure = on_failure
        self._unreported = 0
        self._next_warning = -float("inf")

    async def failed(self, exc: OSError) -> None:
        """Handle one failed accept (an errno in :data:`CAPACITY_ERRNOS`), then pause for :data:`ACCEPT_PAUSE`."""
        self.failures += 1
        self._unreported += 1
        if self._on_failure is not None:
            self._on_failure()
        now = trio.current_time()
        if now >= self._next_warning:
            logger.warning(
                "cannot accept %s connections: %s (%d failed accepts since the last warning); retrying; if this "
                "lasts, raise the hard open files limit (`ulimit -Hn` shows it) or look for idle clients",
                self.name,
                os.strerror(exc.errno or 0),
                self._unreported,
            )
            self._unreported = 0
            self._next_warning = now + WARN_INTERVAL
        await trio.sleep(ACCEPT_PAUSE)


class GuardedListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose :meth:`accept` rides out :data:`CAPACITY_ERRNOS` with ``guard`` instead of raising them
    (trio's ``serve_listeners`` would log each one with a traceback)."""

    def __init__(self, inner: trio.abc.Listener[trio.abc.Stream], guard: AcceptGuard) -> None:
        self.inner = inner
        self.guard = guard

    async def accept(self) -> trio.abc.Stream:
        while True:
            try:
                return await self.inner.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                await self.guard.failed(exc)

    async def aclose(self) -> None:
        await self.inner.aclose()


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (each peer link and HTTP client takes a
    descriptor); return the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        logger.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard


def accept_failures(metrics: Metrics) -> Any:
    """The node's counter of accepts that failed for lack of resources, labelled by ``port`` (``swarm``, ``http``)."""
    return instrument(
        metrics,
        Counter,
        "overlay_accept_failures",
        "Accepts that failed for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), by port",
        ["port"],
    )
