"""The README's commands, run as written, in order, from a fresh working directory whose ``.venv`` and ``scripts``
are this project's, by a reader with a home of their own (so ``~/.overlay-node`` is a fresh data dir): the quick
start against the daemon ``make run`` starts (its two commands, on free ports), then the local cluster of daemons
``scripts/cluster.py up 3`` starts in that directory's ``.cluster/`` (torn down with ``scripts/cluster.py down``,
also when a line fails). Every line must exit 0 and print no traceback.

A placeholder (``KEY0``, ``ID``, ``HASH``, ``URL``, ``TXID``, the file ``tx.beef``) is filled in from an earlier
command's answer, as a reader would. Lines that are not run, each for the reason in SKIP:

- ``make test`` (the whole suite, this test included).

``make run`` is not run as such (it would listen on the default ports, which tests running beside it may hold): its
recipe, ``overlay-node init --tls`` then ``overlay-node run``, is, on free ports.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.doc_commands import ROOT, reader_env, run_shell, workdir

#: (pattern, reason): a line matching the pattern is not run
SKIP: list[tuple[str, str]] = [
    (r"^make test\b", "make test runs lint, types and the whole suite, this test included"),
]

#: placeholder -> where an earlier command's answer gives its value
PLACEHOLDERS: dict[str, re.Pattern[str]] = {
    "KEY0": re.compile(r"identity key\s+([0-9a-f]{66})"),
    "ID": re.compile(r"quote id\s+([0-9a-f]+)"),
    "HASH": re.compile(r'"hash": "([0-9a-f]{64})"'),
    "URL": re.compile(r'"uhrp_url": "([1-9A-HJ-NP-Za-km-z]+)"'),
    "TXID": re.compile(r"on chain: ([0-9a-f]{64})\.\d+"),
}


def readme_commands() -> Iterator[str]:
    """The command lines of the README's ``sh`` blocks, continuation lines joined, comments kept."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        yield from (line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip())


def skip_reason(line: str) -> str | None:
    command = shlex.join(shlex.split(line, comments=True))  # the comment after it does not count
    return next((reason for pattern, reason in SKIP if re.search(pattern, command)), None)


def filled(line: str, answers: list[str], work: Path) -> str:
    """``line`` with its placeholders replaced by what earlier answers gave (the latest first)."""
    argv = shlex.split(line, comments=True)
    if "tx.beef" in argv and not (work / "tx.beef").exists():
        beef = next((_beef_of(a) for a in reversed(answers) if '"beef_hex"' in a), None)
        assert beef, f"no earlier answer gave a BEEF for tx.beef: {line}"
        (work / "tx.beef").write_bytes(beef)
    names = [name for name in PLACEHOLDERS if any(re.search(rf"\b{name}\b", arg) for arg in argv)]
    if not names:
        return line
    for name in names:
        value = next((m.group(1) for a in reversed(answers) if (m := PLACEHOLDERS[name].search(a))), None)
        assert value, f"README line uses {name}, which no earlier answer gave: {line}"
        argv = [re.sub(rf"\b{name}\b", value, arg) for arg in argv]
    return shlex.join(argv)


def _beef_of(answer: str) -> bytes:
    return bytes.fromhex(json.loads(answer)["outputs"][0]["beef_hex"])


def _make_run(work: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """What ``make run`` does, on free ports: ``init --tls``, then the daemon in the foreground (ready when it says
    so on its first line)."""
    cli = str(work / ".venv" / "bin" / "overlay-node")
    subprocess.run([cli, "init", "--tls"], cwd=work, env=env, capture_output=True, check=True, timeout=60)
    daemon = subprocess.Popen(
        [cli, "run", "--swarm-port", "0", "--http-port", "0", "--dht-port", "0"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert daemon.stdout is not None
    assert daemon.stdout.readline().startswith("overlay-node ready")  # the ready line: the event we wait on
    return daemon


def test_readme_blocks_run_as_written(tmp_path: Path) -> None:
    lines = list(readme_commands())
    assert any(line.startswith("make run") for line in lines)
    assert any("scripts/cluster.py up" in line for line in lines)
    work = workdir(tmp_path)
    env = reader_env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    daemon: subprocess.Popen[str] | None = None
    answers: list[str] = []
    try:
        for line in lines:
            if skip_reason(line):
                continue
            if line.startswith("make run"):
                daemon = _make_run(work, env)
                continue
            done = run_shell(filled(line, answers, work), work, env)
            assert done.returncode == 0, f"README line failed ({done.returncode}): {line}\n{done.stdout}"
            assert "Traceback" not in done.stdout, f"{line}\n{done.stdout}"
            assert not done.stdout.startswith("\n"), f"a stray blank line (a progress bar on a pipe): {line}"
            answers.append(done.stdout)
            if " ctl stop" in line:
                assert daemon is not None
                assert daemon.wait(timeout=60) == 0
        assert not (work / ".cluster" / "cluster.json").exists(), "the README's cluster is still up at its end"
        assert (work / "got.ndjson").read_text().count('"payload": {"price"') >= 1  # the subscription got packets
    finally:
        if (work / ".cluster" / "cluster.json").exists():
            run_shell(".venv/bin/python scripts/cluster.py down", work, env)
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def test_every_readme_line_is_run_or_skipped_for_a_declared_reason() -> None:
    skipped = [line for line in readme_commands() if skip_reason(line)]
    assert [shlex.split(line, comments=True) for line in skipped] == [["make", "test"]]


@pytest.mark.parametrize("line", [line for line in readme_commands() if "overlay-node" in line.split("#")[0]])
def test_readme_lines_name_commands_the_cli_has(line: str) -> None:
    """Every overlay-node line names commands and options the CLI has (a quick check before the long run)."""
    from typer.testing import CliRunner

    from overlay_cli.main import app

    argv = shlex.split(line, comments=True)
    if not argv[0].endswith("overlay-node"):
        pytest.skip("not an overlay-node command")
    result = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{line}: {result.output}"
