"""``python -m overlay_node.devnet``: run a devnet ledger in the foreground, like ``overlay-node devnet``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from overlay_node.chain.validation import Policy
from overlay_node.datadir import default_data_dir
from overlay_node.devnet.runner import DevnetSettings, serve_foreground
from overlay_node.errors import OverlayError
from overlay_node.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m overlay_node.devnet", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=4762, help="TCP port, 0 for any free one (default 4762)")
    parser.add_argument(
        "--block-interval", type=float, default=5.0, help="seconds between blocks; 0: only on POST /v1/mine"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="ledger dir (default <node data dir>/devnet)")
    parser.add_argument("--fee-sat-per-kb", type=int, default=1, help="mining fee policy (default 1 sat/kB)")
    parser.add_argument("--api-key", default="", help="require Authorization: Bearer <key>")
    parser.add_argument("--json", action="store_true", help="print one JSON line when ready")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        settings = DevnetSettings(
            data_dir=(args.data_dir or default_data_dir() / "devnet").expanduser(),
            host=args.host,
            port=args.port,
            block_interval=args.block_interval,
            policy=Policy(mining_fee_satoshis=args.fee_sat_per_kb, mining_fee_bytes=1000),
            api_key=args.api_key,
        )
        serve_foreground(settings, as_json=args.json)
    except (OverlayError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return getattr(exc, "exit_code", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
