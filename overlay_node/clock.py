"""Time sources.

Protocol time is ``trio.current_time()`` passed in as ``now`` so that trio's autojump clock drives it in tests.
Wall-clock time (for values that are persisted or signed) comes from :func:`wall_time` only.
"""

from __future__ import annotations

import time


def wall_time() -> float:
    """Seconds since the epoch; the one source of wall-clock time for signed or stored values."""
    return time.time()
