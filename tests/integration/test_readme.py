"""The README's commands, run as written: its ``sh`` blocks against a daemon of a fresh data dir
(``OVERLAY_NODE_DATA_DIR``), from a directory where ``.venv`` is this project's. Lines that cannot run here are
skipped for a reason declared in SKIP; every other line must exit 0."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: (pattern, reason): a line matching the pattern is not run
SKIP: list[tuple[str, str]] = [
    (r"^make ", "make targets build the venv and run the whole suite"),
    (r"scripts/cluster\.py|--data-dir \.cluster/", "needs the local cluster of daemons (scripts/cluster.py up)"),
    (r"\b(KEY0|ID|HASH|URL|TXID)\b", "a placeholder filled in from an earlier command's answer"),
    (r"ctl submit ", "needs the BEEF file of a real transaction"),
    (r"bench/", "benchmarks run for minutes"),
]


def readme_commands() -> Iterator[str]:
    """The command lines of the README's ``sh`` blocks, continuation lines joined, comments kept."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        yield from (line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip())


def skip_reason(line: str) -> str | None:
    command = shlex.join(shlex.split(line, comments=True))  # the comment after it does not count
    return next((reason for pattern, reason in SKIP if re.search(pattern, command)), None)


def test_readme_blocks_run_as_written(tmp_path: Path) -> None:
    lines = list(readme_commands())
    runnable = [line for line in lines if skip_reason(line) is None]
    assert any("ctl status" in line for line in runnable)
    assert any("ctl publish" in line for line in runnable)
    stop = [line for line in runnable if " ctl stop" in line]
    runnable = [line for line in runnable if line not in stop] + stop  # the daemon stops last
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    env = {**os.environ, "OVERLAY_NODE_DATA_DIR": str(tmp_path / "node")}
    cli = str(tmp_path / ".venv" / "bin" / "overlay-node")
    daemon = subprocess.Popen(
        [cli, "run", "--swarm-port", "0", "--http-port", "0", "--dht-port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert daemon.stdout is not None
        assert daemon.stdout.readline().startswith("overlay-node ready")  # the ready line: the event we wait on
        for line in runnable:
            argv = shlex.split(line, comments=True)
            done = subprocess.run(
                line if argv[0] == "printf" else argv, shell=argv[0] == "printf", cwd=tmp_path, env=env,
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0, f"README line failed ({done.returncode}): {line}\n{done.stderr}"
            assert "Traceback" not in done.stderr
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


@pytest.mark.parametrize("line", [line for line in readme_commands() if skip_reason(line)])
def test_skipped_readme_lines_parse(line: str) -> None:
    """A line that is not run still names commands and options the CLI has."""
    from typer.testing import CliRunner

    from overlay_cli.main import app

    argv = shlex.split(line, comments=True)
    if not argv[0].endswith("overlay-node"):
        pytest.skip(skip_reason(line) or "")
    result = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{line}: {result.output}"
