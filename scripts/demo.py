#!/usr/bin/env python3
"""Run the three end-to-end scenarios on a fresh local cluster and print a summary table.

    python scripts/demo.py              # a devnet and 6 daemons in a temp dir (ports 0), the scenarios, a table
    python scripts/demo.py --checks     # also every check each scenario made
    python scripts/demo.py --keep       # keep the temp dir (data dirs, daemon logs, downloaded files)

The scenarios (``scripts/scenarios.py``, the same code ``tests/cluster/test_scenarios.py`` runs): live data
streaming with micropayments (W = 1, 10, 100), premium content (priced, R = 3, found by tag), a multi-producer
marketplace. Each drives the nodes through ``overlay-node ctl`` commands only; *reconciled* means every payment
agrees across the consumer's ``ctl report``, the producer's ``ctl analytics`` and both wallets. Exit status 0 when
every scenario reconciled, 1 otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import Cluster
from scenarios import NODES, SCENARIOS, Outcome, run_scenario


def print_summary(outcomes: list[Outcome], *, checks: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="overlay-node scenarios")
    for column in ("scenario", "steps", "payments", "satoshis", "reconciled", "time"):
        table.add_column(column, justify="left" if column in ("scenario", "reconciled") else "right")
    for o in outcomes:
        verdict = "yes" if o.reconciled else ("no: " + (o.error or f"{len(o.failures)} checks failed"))
        table.add_row(o.name, str(o.steps), str(o.payments), str(o.satoshis), verdict, f"{o.seconds:.1f} s")
    out = Console()
    out.print(table)
    for o in outcomes:
        shown = o.checks if checks else o.failures
        if shown:
            out.print(f"{o.name}: {len(o.checks)} checks", markup=False)
            for check in shown:
                out.print(f"  {check}", markup=False, overflow="ignore", crop=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", action="store_true", help="print every check, not only failed ones")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the nodes' data dirs and logs")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="overlay-demo-"))
    outcomes: list[Outcome] = []
    try:
        started = time.monotonic()
        print(f"starting a devnet and {NODES} daemons in {root} ...", flush=True)
        with Cluster(NODES, root=root / "cluster") as cluster:
            print(f"cluster up in {time.monotonic() - started:.1f} s", flush=True)
            for name, scenario in SCENARIOS:
                print(f"running {name} ...", flush=True)
                outcomes.append(run_scenario(scenario, cluster, root / name.replace(" ", "-"), name))
        print_summary(outcomes, checks=args.checks)
        print(f"total {time.monotonic() - started:.1f} s", flush=True)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if outcomes and all(o.reconciled for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
