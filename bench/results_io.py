"""What every benchmark records beside its figures, and how it saves them: the commit and the work in progress it
ran on, the machine, and the JSON file in ``bench/results/``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def source_state() -> dict[str, Any]:
    """The commit and the files of ``overlay_node/`` changed in the working tree: work in progress there shows in
    the figures. (``--no-optional-locks``: never takes the index lock others may be using.)"""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True)
        except OSError:
            return ""
        return done.stdout

    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "changed": git("status", "--short", "--", "overlay_node").splitlines(),
    }


def machine() -> dict[str, Any]:
    """The machine the figures come from (and how busy it was when they were saved)."""
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        node = ""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "node": node,
        "platform": platform.platform(),
        "load": os.getloadavg(),
        "clock": time.get_clock_info("perf_counter").implementation,
    }


def save(path: Path, results: dict[str, Any]) -> None:
    """Add the source and machine records to ``results`` and write them to ``path`` as JSON."""
    results["source"] = source_state()
    results["machine"] = machine()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
