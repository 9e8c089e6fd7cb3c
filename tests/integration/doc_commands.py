"""Running the commands the documentation shows (README.md, docs/guide.md) as a reader would, and comparing the output
a page shows with what the command prints now, in shape: the keys of key/value answers, the columns of tables, and
every other line with its numbers, keys, hashes, URLs and paths blanked out."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: how long one documented command may take
COMMAND_TIMEOUT = 120

_URL = re.compile(r"\b[a-z]+://[^\s,;)'\"]+")
_PATH = re.compile(r"(?<![\w.])/[^\s'\":,;)]+")
_HEX = re.compile(r"\b[0-9a-f]{16,}\b")
_BASE58 = re.compile(r"\b[1-9A-HJ-NP-Za-km-z]{40,}\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_KEY_VALUE = re.compile(r"^([a-z][a-z0-9 ()/_-]*?)\s{2,}\S")
_TABLE_RULES = tuple("┏┡│└┗┣┠╭╰")


def workdir(tmp_path: Path) -> Path:
    """A fresh working directory that looks like a checkout with its venv: ``.venv`` and ``scripts`` link to this
    project's, so ``.venv/bin/overlay-node`` and ``scripts/cluster.py`` run as the pages write them, while every
    file the commands make (``.cluster/``, downloads) stays in the temporary directory."""
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.executable).parents[1])
    (work / "scripts").symlink_to(ROOT / "scripts")
    return work


def reader_env(home: Path) -> dict[str, str]:
    """The environment of a reader on a fresh machine: a home of their own (``~/.overlay-node`` is the default data
    dir), none of our variables set, and a wide terminal (tables on one line each, as the pages show them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERLAY_NODE_")}
    env.update(HOME=str(home), COLUMNS="400")
    return env


def run_shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One documented command line, through the shell, as typed: stdout and stderr together, as a terminal shows."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def _normalized(line: str) -> str:
    line = _URL.sub("URL", line)
    line = _PATH.sub("PATH", line)
    line = _HEX.sub("HEX", line)
    line = _BASE58.sub("B58", line)
    line = _NUMBER.sub("N", line)
    return re.sub(r"\s+", " ", line)


def shape(text: str) -> list[str]:
    """What of an output a page must keep true: the column names of each table (its rows vary), the keys of
    key/value lines (their values vary), a CSV's header and the kind of each of its rows, and any other line
    normalized (numbers, hex, base58, URLs and paths blanked). ``...`` lines (a page's trims) are dropped."""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line == "..." or line.startswith(_TABLE_RULES):
            continue
        if line.startswith("┃"):
            out.append("columns: " + " | ".join(cell.strip() for cell in line.strip("┃").split("┃")))
        elif line.count(",") >= 4 and " " not in line:
            fields = line.split(",")
            out.append(f"csv: {line}" if fields[0] == "level" else f"csv row: {fields[0]}, {len(fields)} fields")
        elif match := _KEY_VALUE.match(line):
            out.append(f"key: {match.group(1)}")
        else:
            out.append(_normalized(line))
    return out


def shape_mismatch(shown: str, printed: str) -> str | None:
    """None when every line of the shown output's shape appears, in order, in the printed output's; else what is
    missing, with both shapes."""
    want, got = shape(shown), shape(printed)
    at = 0
    for item in want:
        try:
            at = got.index(item, at) + 1
        except ValueError:
            return (
                f"not printed any more: {item!r}\nshown:\n  " + "\n  ".join(want) + "\nprinted:\n  " + "\n  ".join(got)
            )
    return None
