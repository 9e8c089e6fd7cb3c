"""The CLI's contract: ``--json`` after every command, the exit code of every error from the one table in
``overlay_node.errors``, output that shows data as it is (no markup, no wrapping, full keys), hints that are commands
that work, and ``init`` for a role."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shlex
import sys
from pathlib import Path

import pytest
import trio
import typer.main
from typer.testing import CliRunner, Result

import overlay_node
from overlay_cli.main import ROLE_SETTINGS, app
from overlay_node.errors import EXIT_CODES, ApiError, OverlayError, exit_code_for
from tests.conftest import NodeFactory

ROOT = Path(__file__).resolve().parents[2]


async def cli(*args: str) -> Result:
    runner = CliRunner()
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(lambda: runner.invoke(app, list(args)))


def leaves() -> list[tuple[str, object]]:
    """Every leaf command of the real app, by its path (``ctl content status``)."""
    found: list[tuple[str, object]] = []

    def walk(cmd: object, path: str) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, f"{path} {name}".strip())
        else:
            found.append((path, cmd))

    walk(typer.main.get_command(app), "")
    return found


def test_every_leaf_command_takes_json_after_it() -> None:
    paths = dict(leaves())
    assert {"ctl status", "ctl content status", "ctl stream push", "ctl dht get", "ctl wallet balance"} <= set(paths)
    missing = [
        path
        for path, cmd in paths.items()
        if not any("--json" in getattr(p, "opts", ()) for p in getattr(cmd, "params", ()))
    ]
    assert missing == []


async def test_json_after_the_verb_and_before_ctl(start_node: NodeFactory) -> None:
    node = await start_node("a")
    d = str(node.data_dir.path)
    for verb in (["status"], ["peers"], ["content", "list"], ["stream", "list"], ["dht", "status"], ["adverts"]):
        after = await cli("--data-dir", d, "ctl", *verb, "--json")
        assert after.exit_code == 0, (verb, after.output)
        data = json.loads(after.stdout)
        before = await cli("--data-dir", d, "--json", "ctl", *verb)
        assert before.exit_code == 0, before.output
        assert json.loads(before.stdout).keys() == data.keys()
    assert json.loads((await cli("--data-dir", d, "ctl", "status", "--json")).stdout)["identity_key"] == (
        node.info.identity_key
    )


def _error_classes() -> list[type[OverlayError]]:
    for info in pkgutil.walk_packages(overlay_node.__path__, "overlay_node."):
        if ".devnet.__main__" not in info.name:
            importlib.import_module(info.name)
    found: list[type[OverlayError]] = []
    queue: list[type[OverlayError]] = [OverlayError]
    while queue:
        cls = queue.pop()
        found.append(cls)
        queue.extend(cls.__subclasses__())
    return found


def test_every_error_code_is_in_the_one_table() -> None:
    from overlay_node.wire.http1 import HttpError

    checked = 0
    for cls in _error_classes():
        # ApiError and PeerError carry a code set per instance (the daemon's, a peer's); the HTTP/1.1 parser's
        # errors answer HTTP clients with a status and never reach the CLI
        if cls is ApiError or cls.__name__ == "PeerError" or issubclass(cls, HttpError):
            continue
        assert cls.code in EXIT_CODES, f"{cls.__module__}.{cls.__name__}: code {cls.code!r} is not in EXIT_CODES"
        assert cls.exit_code == EXIT_CODES[cls.code], cls
        checked += 1
    assert checked > 25
    assert exit_code_for("no_such_code") == 1


async def test_exit_code_is_the_family_of_the_daemon_error(start_node: NodeFactory) -> None:
    node = await start_node("a")
    d = str(node.data_dir.path)
    missing = await cli("--data-dir", d, "ctl", "content", "status", "00" * 32)
    assert missing.exit_code == EXIT_CODES["not_found"] == 9, missing.output
    bad = await cli("--data-dir", d, "ctl", "connect", "not an address")
    assert bad.exit_code == EXIT_CODES["bad_request"] == 2, bad.output
    unknown = await cli("--data-dir", d, "ctl", "stream", "status", "nosuch")
    assert unknown.exit_code == 9, unknown.output
    # the daemon's error bodies carry the exit code
    from overlay_cli.client import ControlClient

    def raw_error() -> ApiError:
        with ControlClient(node.data_dir.path) as client, pytest.raises(ApiError) as caught:
            client.call("GET", "/v1/streams/nosuch")
        return caught.value

    err = await trio.to_thread.run_sync(raw_error)
    assert (err.code, err.exit_code) == ("not_found", 9)


async def test_errors_and_tables_show_data_as_it_is(start_node: NodeFactory) -> None:
    a = await start_node("a")
    b = await start_node("b")
    d = str(a.data_dir.path)
    # brackets are text, not markup; a long error is one line when stderr is not a terminal
    weird = "[bold]x[/bold]-" + "y" * 120 + ":1"
    out = await cli("--data-dir", d, "ctl", "connect", weird)
    assert out.exit_code == 7  # dial failed
    assert weird in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    # usage errors are plain lines too (no box cut at 80 columns)
    usage = await cli("--data-dir", d, "ctl", "status", "--no-such-option-" + "x" * 90)
    assert usage.exit_code == 2
    assert "Error: No such option: --no-such-option-" + "x" * 90 in usage.stderr.splitlines()
    assert "╭" not in usage.stderr
    # full identity keys in tables, on one line each
    assert (await cli("--data-dir", d, "ctl", "connect", b.info.swarm[0])).exit_code == 0
    peers = await cli("--data-dir", d, "ctl", "peers")
    assert peers.exit_code == 0, peers.output
    assert any(b.info.identity_key in line for line in peers.stdout.splitlines()), peers.stdout
    status = await cli("--data-dir", d, "ctl", "status")
    assert a.info.identity_key in status.stdout
    # advert expiry: a readable UTC time in the table, the number in JSON
    made = await cli("--data-dir", d, "ctl", "advertise", "--topic", "tm_cli", "--no-token", "--json")
    assert made.exit_code == 0, made.output
    listed = await cli("--data-dir", d, "ctl", "adverts")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", listed.stdout), listed.stdout
    expires = json.loads((await cli("--data-dir", d, "ctl", "adverts", "--json")).stdout)["adverts"][0]["expires"]
    assert isinstance(expires, int | float)
    assert str(int(expires)) not in listed.stdout


#: a backquoted command in a message: `overlay-node ...`
HINT = re.compile(r"(?<!`)`(overlay-node [^`]+)`(?!`)")


def collect_hints() -> list[str]:
    """Every `overlay-node ...` command quoted in a string of the daemon or the CLI (not docstrings' ``...``)."""
    hints: set[str] = set()
    for folder in ("overlay_node", "overlay_cli"):
        for path in (ROOT / folder).rglob("*.py"):
            hints.update(HINT.findall(path.read_text(encoding="utf-8")))
    return sorted(hints)


def as_args(hint: str, data_dir: Path) -> list[str]:
    """A hint's arguments with its placeholders ({self._path}, {path.parent}, FILE, ...) filled in."""
    text = re.sub(r"\{role\}", "producer", hint)
    text = re.sub(r"\{[^}]+\}", str(data_dir), text)
    return shlex.split(text)[1:]


def test_every_hint_parses_through_the_real_app(tmp_path: Path) -> None:
    hints = collect_hints()
    assert any(" init" in h for h in hints), hints
    runner = CliRunner()
    for hint in hints:
        # --help after the words: the parser still refuses an option that is not where the hint puts it
        result = runner.invoke(app, [*as_args(hint, tmp_path / "dd"), "--help"])
        assert result.exit_code == 0, f"`{hint}` does not parse: {result.output}"


def test_the_missing_identity_hint_works_as_printed(tmp_path: Path) -> None:
    from overlay_node.datadir import DataDir
    from overlay_node.errors import DataDirError

    dd = DataDir(tmp_path / "fresh")
    with pytest.raises(DataDirError) as caught:
        dd.load_identity()
    (hint,) = HINT.findall(str(caught.value))
    result = CliRunner().invoke(app, shlex.split(hint)[1:])
    assert result.exit_code == 0, result.output
    assert len(dd.load_identity()) == 32


def test_init_roles_and_next_steps(tmp_path: Path) -> None:
    runner = CliRunner()
    for role, settings in ROLE_SETTINGS.items():
        d = tmp_path / role
        done = runner.invoke(app, ["--data-dir", str(d), "init", f"--{role}", "--json"])
        assert done.exit_code == 0, done.output
        info = json.loads(done.stdout)
        assert info["role"] == role
        config = (d / "config.toml").read_text()
        for section, values in settings.items():
            body = config.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
            for key, value in values.items():
                assert f"\n{key} = {json.dumps(value)}\n" in body, (role, key)
        for step in info["next"]:
            parsed = runner.invoke(app, [*shlex.split(step.replace("FILE", "x").replace("TAG", "t"))[1:], "--help"])
            assert parsed.exit_code == 0, (step, parsed.output)
    both = runner.invoke(app, ["--data-dir", str(tmp_path / "both"), "init", "--producer", "--consumer"])
    assert both.exit_code == 2


def test_init_imports_an_identity_key_and_refuses_a_malformed_one(tmp_path: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "key.hex"
    key.write_text("11" * 32 + "\n")
    done = runner.invoke(app, ["--data-dir", str(tmp_path / "n"), "init", "--identity-key", str(key), "--json"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "n" / "identity.key").read_text().strip() == "11" * 32
    assert (tmp_path / "n" / "identity.key").stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["--data-dir", str(tmp_path / "n"), "init", "--identity-key", str(key), "--json"])
    assert again.exit_code == 0
    assert json.loads(again.stdout)["identity_key"] == json.loads(done.stdout)["identity_key"]
    for bad in ("zz" * 32, "00" * 32, "11" * 31, "ff" * 32):
        key.write_text(bad)
        refused = runner.invoke(app, ["--data-dir", str(tmp_path / "m"), "init", "--identity-key", str(key)])
        assert refused.exit_code == 2, (bad, refused.output)
        assert refused.stderr.startswith("error: --identity-key")
        assert not (tmp_path / "m").exists()
    other = tmp_path / "other.hex"
    other.write_text("22" * 32)
    clash = runner.invoke(app, ["--data-dir", str(tmp_path / "n"), "init", "--identity-key", str(other)])
    assert clash.exit_code == 10
    assert (tmp_path / "n" / "identity.key").read_text().strip() == "11" * 32


def test_content_type_is_guessed_from_the_file_name() -> None:
    from overlay_cli.content_cmd import guess_content_type

    assert guess_content_type("data.csv") == "text/csv"
    assert guess_content_type("ticks.ndjson") == "application/x-ndjson"
    assert guess_content_type("page.HTML") == "text/html"
    assert guess_content_type("blob.unknownext") == "application/octet-stream"


def test_the_console_script_builds_the_branch_it_runs() -> None:
    from overlay_cli.main import branch, command_words

    assert command_words(["--data-dir", "d", "--json", "ctl", "content", "status", "h", "--json"]) == [
        "ctl",
        "content",
        "status",
        "h",
    ]
    for path, leaf in leaves():
        words = path.split()
        built: object = typer.main.get_command(branch(app, [*words, "ARG"]))
        for word in words:
            subs = getattr(built, "commands", {})
            assert list(subs) == [word], (path, list(subs))
            built = subs[word]
        assert [p.name for p in built.params] == [p.name for p in leaf.params]  # type: ignore[attr-defined]


async def test_a_ctl_call_imports_no_rich_httpx_or_pydantic(start_node: NodeFactory) -> None:
    node = await start_node("a")
    argv = ["-X", "importtime", "-m", "overlay_cli.main", "--data-dir", str(node.data_dir.path), "ctl", "status"]
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, *argv, "--json"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["identity_key"] == node.info.identity_key
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.decode().splitlines() if "|" in line}
    assert {"overlay_cli.client", "http.client"} <= imported
    assert not {"rich", "httpx", "pydantic"} & imported
