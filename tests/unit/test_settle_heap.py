"""``node.settle_heap``: what a daemon's start made is frozen out of the cyclic collector's sight (docs/design.md,
Start order), so a full collection no longer walks it with the event loop stopped."""

from __future__ import annotations

import subprocess
import sys


def test_a_settled_heap_leaves_the_start_out_of_full_collections() -> None:
    # in a process of its own: a freeze pins what it froze for the rest of the process's life
    code = (
        "import gc\n"
        "from overlay_node.node import settle_heap\n"
        "before = len(gc.get_objects())\n"
        "settle_heap()\n"
        "assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()\n"
        "assert len(gc.get_objects()) < before // 10, (len(gc.get_objects()), before)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
