"""docs/guide.md, run as written: every command its blocks show, in order, from a fresh working directory whose
``.venv`` and ``scripts`` are this project's, with the venv active as the guide says; ``producer$`` commands with the
producer's terminal's environment and ``consumer$`` ones with the consumer's (the guide's ``export`` lines). The
two nodes are the ones ``python scripts/cluster.py up 2`` starts there (torn down with ``scripts/cluster.py down``,
as the guide ends, also when a command fails).

Each command must end as the guide shows it ending (an output that starts with ``error:`` or ``...: cannot ...``
is a failure, anything else exit 0), and the output shown must still be what it prints, in shape
(doc_commands.shape: keys, columns, lines with their figures blanked). A key, hash or UHRP URL the guide shows is
replaced in later commands by the one this run printed in its place. A command that ends with ``&`` runs in the
background; the output the guide shows for it after later commands (a block's lines before its first prompt) is
checked when it ends.

Not run: ``python scripts/demo.py``: six daemons for a minute or more; its scenarios are the cluster test
tests/cluster/test_scenarios.py, which runs them through the same code (scripts/scenarios.py).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.doc_commands import ROOT, reader_env, run_shell, shape_mismatch, workdir

#: (pattern, reason): a command matching the pattern is not run
SKIP: list[tuple[str, str]] = [
    (
        r"^python scripts/demo\.py",
        "six daemons for a minute or more; tests/cluster/test_scenarios.py runs its scenarios",
    ),
]

_PROMPT = re.compile(r"^(producer|consumer)?\$ (.*)$")
_EXPORT = re.compile(r"^export (\w+)=(\S+)\s+# the (\w+)'s terminal$")
_KEY_VALUE = re.compile(r"^([a-z][a-z ]*?)\s{2,}(\S+)$")
_TOKEN = re.compile(r"^(?:[0-9a-f]{64,66}|[1-9A-HJ-NP-Za-km-z]{40,})$")
_FAILURE = re.compile(r"^(error: |\S+: cannot )")


@dataclass
class Step:
    """One shown command (or, with ``command`` None, the output shown for the background command)."""

    role: str | None
    command: str | None
    shown: str
    setup: list[str] = field(default_factory=list)


def guide_steps() -> list[Step]:
    """The guide's commands in order with the output each shows; ``sh`` blocks' lines become setup steps."""
    text = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    steps: list[Step] = []
    for kind, block in re.findall(r"```(console|sh)\n(.*?)```", text, flags=re.S):
        if kind == "sh":
            steps.append(Step(None, None, "", setup=[line.strip() for line in block.splitlines() if line.strip()]))
            continue
        current: Step | None = None
        orphan: list[str] = []
        for line in block.splitlines():
            if match := _PROMPT.match(line):
                if current is None and any(orphan):
                    steps.append(Step(None, None, "\n".join(orphan)))
                current = Step(match.group(1), match.group(2), "")
                steps.append(current)
            elif current is None:
                orphan.append(line)
            else:
                current.shown += line + "\n"
        if current is None and any(orphan):
            steps.append(Step(None, None, "\n".join(orphan)))
    return steps


def skip_reason(command: str) -> str | None:
    return next((reason for pattern, reason in SKIP if re.search(pattern, command)), None)


def _learn(shown: str, printed: str, seen: dict[str, str]) -> None:
    """Map each key, hash or UHRP URL a key/value line of the guide shows to the one printed under the same key."""
    printed_values = {m.group(1): m.group(2) for line in printed.splitlines() if (m := _KEY_VALUE.match(line.strip()))}
    for line in shown.splitlines():
        match = _KEY_VALUE.match(line.strip())
        if match and _TOKEN.match(match.group(2)) and match.group(1) in printed_values:
            seen[match.group(2)] = printed_values[match.group(1)]


class Reader:
    """The reader's terminals: one working directory, an environment per role, the venv once activated."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.env = env
        self.roles: dict[str, dict[str, str]] = {}
        self.prefix = ""
        self.seen: dict[str, str] = {}
        self.background: tuple[str, subprocess.Popen[str]] | None = None

    def setup(self, line: str) -> None:
        if match := _EXPORT.match(line):
            self.roles.setdefault(match.group(3), {})[match.group(1)] = match.group(2)
        elif line == ". .venv/bin/activate":
            self.prefix = ". .venv/bin/activate && "
        else:
            raise AssertionError(f"a guide sh line the test does not know how to run: {line}")

    def env_of(self, role: str | None) -> dict[str, str]:
        return {**self.env, **(self.roles.get(role, {}) if role else {})}

    def command(self, command: str) -> str:
        for shown, printed in self.seen.items():
            command = command.replace(shown, printed)
        return self.prefix + command

    def run(self, step: Step) -> None:
        assert step.command is not None
        if step.command.endswith("&"):
            assert self.background is None, "two background commands at once"
            proc = subprocess.Popen(
                ["bash", "-c", self.command(step.command.rstrip("& "))],
                cwd=self.work,
                env=self.env_of(step.role),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            self.background = (step.command, proc)
            return
        done = run_shell(self.command(step.command), self.work, self.env_of(step.role))
        expect_failure = bool(_FAILURE.match(step.shown))
        context = f"{step.role or ''}$ {step.command}\n{done.stdout}"
        assert (done.returncode != 0) == expect_failure, f"exit {done.returncode}: {context}"
        assert "Traceback" not in done.stdout, context
        assert not done.stdout.startswith("\n"), f"a stray blank line (a progress bar on a pipe): {context}"
        mismatch = shape_mismatch(step.shown, done.stdout)
        assert mismatch is None, f"the guide's output is stale for {context}\n{mismatch}"
        _learn(step.shown, done.stdout, self.seen)

    def background_output(self, step: Step) -> None:
        assert self.background is not None, f"output shown for no background command: {step.shown}"
        command, proc = self.background
        self.background = None
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"exit {proc.returncode}: {command}\n{out}"
        mismatch = shape_mismatch(step.shown, out)
        assert mismatch is None, f"the guide's output is stale for {command}\n{mismatch}"

    def close(self) -> None:
        if self.background is not None:
            self.background[1].kill()
            self.background[1].wait()
        if (self.work / ".cluster" / "cluster.json").exists():  # the guide's last step, also after a failure
            run_shell(self.command("python scripts/cluster.py down"), self.work, self.env)


def test_guide_runs_as_written(tmp_path: Path) -> None:
    steps = guide_steps()
    commands = [s.command for s in steps if s.command]
    assert any(c.startswith("python scripts/cluster.py up") for c in commands)
    assert sum(1 for c in commands if "overlay-node ctl" in c) >= 15
    (tmp_path / "home").mkdir()
    reader = Reader(workdir(tmp_path), reader_env(tmp_path / "home"))
    try:
        for step in steps:
            if step.setup:
                for line in step.setup:
                    reader.setup(line)
            elif step.command is None:
                reader.background_output(step)
            elif not skip_reason(step.command):
                reader.run(step)
        assert reader.background is None
    finally:
        reader.close()
    assert not (reader.work / ".cluster" / "cluster.json").exists()


def test_only_the_declared_commands_are_skipped() -> None:
    skipped = [s.command for s in guide_steps() if s.command and skip_reason(s.command)]
    assert skipped == ["python scripts/demo.py"]
    assert (ROOT / "tests" / "cluster" / "test_scenarios.py").exists()
