"""The devnet ledger: a local, ARC-compatible BSV ledger that validates every transaction, keeps a UTXO set in
SQLite, makes blocks with merkle paths and pays out from a faucet (docs/design.md, Payments).

Modules: ``chain`` (the genesis supply and coinbases), ``ledger`` (the service), ``app`` (ARC's HTTP API),
``runner`` (``run_devnet`` and the ``overlay-node devnet`` process). Reading and checking transactions is the
transaction layer's (``overlay_node/chain/``), shared with the wallet, the payee and the overlay engine. Run one
with ``python -m overlay_node.devnet --help``.

The names below are imported lazily, so that importing the package does not load the HTTP server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from overlay_node.chain.validation import Policy
    from overlay_node.devnet.runner import DevnetInfo, DevnetSettings, run_devnet, serve_foreground

__all__ = ["DevnetInfo", "DevnetSettings", "Policy", "run_devnet", "serve_foreground"]

_HOME = {
    "DevnetInfo": "runner",
    "DevnetSettings": "runner",
    "run_devnet": "runner",
    "serve_foreground": "runner",
}


def __getattr__(name: str) -> Any:
    if name == "Policy":
        return importlib.import_module("overlay_node.chain.validation").Policy
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"overlay_node.devnet.{module}"), name)
