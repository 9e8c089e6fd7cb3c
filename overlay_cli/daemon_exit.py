"""Waiting for a daemon to be gone (``ctl stop``): its process exited, so its data dir's lock is free at once.

The daemon removes ``api.json`` early in its shutdown, before its store is closed, its lock released and its process
exits; a caller that restarts it as soon as ``ctl stop`` returns must not find it still there. So ``ctl stop`` waits
for the process itself: on Linux through a pidfd, which becomes readable when the process exits (an event, no
polling); elsewhere by asking the kernel about the pid until it is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import time
from pathlib import Path

#: how often the fallback (no pidfd) asks whether the process is gone
_POLL_INTERVAL = 0.02


def daemon_pid(data_dir: Path) -> int | None:
    """The pid ``api.json`` names (the running daemon's), or None when the file has none."""
    try:
        info = json.loads((data_dir / "api.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = info.get("pid") if isinstance(info, dict) else None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None


def lock_free(data_dir: Path) -> bool:
    """Whether no process holds the data dir's lock (``node.lock`` missing or not flocked)."""
    try:
        fd = os.open(data_dir / "node.lock", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    finally:
        os.close(fd)  # closing drops our flock
    return True


class ExitWatch:
    """Watches one process for its exit. Open it before asking the process to stop (so the pid cannot be reused
    meanwhile); :meth:`wait` then returns when it has exited.

    Args:
        pid: the process; None when unknown, or when the daemon runs in this very process (a node embedded in a
            program or a test): then only the data dir's lock is watched.
        data_dir: its data dir, whose lock must be free too.
    """

    def __init__(self, pid: int | None, data_dir: Path) -> None:
        if pid == os.getpid():
            pid = None
        self.pid = pid
        self._data_dir = data_dir
        self._pidfd: int | None = None
        self._gone = pid is None
        if pid is not None and hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                self._gone = True
            except OSError:  # an old kernel, or no permission: fall back to asking about the pid
                self._pidfd = None

    def close(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> ExitWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True once the process has exited and the data dir's lock is free."""
        deadline = time.monotonic() + timeout
        if not self._gone:
            self._gone = self._wait_process(deadline)
        if not self._gone:
            return False
        while not lock_free(self._data_dir):  # without a pid: the lock is all there is to watch
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL)
        return True

    def _wait_process(self, deadline: float) -> bool:
        if self._pidfd is not None:
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            return bool(poller.poll(remaining_ms))
        assert self.pid is not None
        while _alive(self.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL)
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # an exited child its parent has not reaped yet (a zombie) is gone for us
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rpartition(")")[2].split()[0] != "Z"
    return True
