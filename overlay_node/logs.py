"""Logging setup for the daemon process (library modules only call ``logging.getLogger(__name__)``)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str) -> None:
    """Log to stderr at ``level`` with timestamps; quiet the chattier libraries below debug."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    if level != "debug":
        for noisy in ("overlay_node.net.http_server", "trio-websocket", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
