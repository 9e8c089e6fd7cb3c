"""overlay-node: a peer-to-peer daemon for the BSV overlay network.

Layers (see docs/architecture.md): ``crypto`` and ``wire`` (pure codecs) <- ``protocol`` (sans-IO state machines)
<- ``net`` (sockets) <- ``services`` (trio services) <- ``node`` -> ``api``; ``store`` holds all SQL.
"""

from __future__ import annotations

__version__ = "0.1.0"
