"""The data dir: init, identity key, the one-daemon lock, the control socket path and api.json."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from overlay_node.datadir import MAX_SOCKET_PATH, SECP256K1_N, DataDir, default_data_dir
from overlay_node.errors import DataDirError

CONFIG_TEXT = "# test config\n"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def dd(tmp_path: Path) -> DataDir:
    return DataDir(tmp_path / "node")


def test_default_data_dir_env_and_home(tmp_path: Path) -> None:
    assert default_data_dir({"OVERLAY_NODE_DATA_DIR": str(tmp_path / "x")}) == tmp_path / "x"
    assert default_data_dir({"OVERLAY_NODE_DATA_DIR": ""}) == Path.home() / ".overlay-node"
    assert default_data_dir({}) == Path.home() / ".overlay-node"


def test_paths_are_absolute_and_laid_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    dd = DataDir(Path("rel"))
    assert dd.path == tmp_path / "rel"
    assert dd.config_path.name == "config.toml"
    assert dd.identity_path.name == "identity.key"
    assert dd.lock_path.name == "node.lock"
    assert dd.api_path.name == "api.json"
    assert dd.db_path.name == "node.db"
    assert dd.blobs_dir.name == "blobs"
    assert not dd.path.exists()  # constructing touches nothing


def test_init_creates_files_with_private_modes(dd: DataDir) -> None:
    result = dd.init(config_text=CONFIG_TEXT)
    assert result.created
    assert result.config_created
    assert result.path == dd.path
    assert result.identity_path == dd.identity_path
    assert _mode(dd.path) == 0o700
    assert dd.blobs_dir.is_dir()
    assert not (dd.path / "logs").exists()  # logs go to the daemon's stderr
    assert _mode(dd.identity_path) == 0o600
    assert dd.config_path.read_text() == CONFIG_TEXT
    text = dd.identity_path.read_text()
    assert len(text) == 65
    assert text.endswith("\n")
    assert text == text.lower()
    key = dd.load_identity()
    assert len(key) == 32
    assert 0 < int.from_bytes(key, "big") < SECP256K1_N
    assert key.hex() == text.strip()
    assert sorted(p.name for p in dd.path.iterdir()) == ["blobs", "config.toml", "identity.key"]


def test_init_is_idempotent_and_keeps_identity_and_config(dd: DataDir) -> None:
    dd.init(config_text=CONFIG_TEXT)
    key = dd.load_identity()
    dd.config_path.write_text("# edited by the user\n")
    again = dd.init(config_text="# another\n")
    assert not again.created
    assert not again.config_created
    assert dd.load_identity() == key
    assert dd.config_path.read_text() == "# edited by the user\n"


def test_init_in_existing_dir_writes_missing_config(dd: DataDir) -> None:
    dd.init(config_text=CONFIG_TEXT)
    dd.config_path.unlink()
    result = dd.init(config_text=CONFIG_TEXT)
    assert result.config_created
    assert not result.created


def test_init_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "node").write_text("not a dir")
    with pytest.raises(DataDirError, match="cannot initialise"):
        DataDir(tmp_path / "node").init(config_text=CONFIG_TEXT)


def test_two_data_dirs_get_different_identities(tmp_path: Path) -> None:
    a, b = DataDir(tmp_path / "a"), DataDir(tmp_path / "b")
    a.init(config_text=CONFIG_TEXT)
    b.init(config_text=CONFIG_TEXT)
    assert a.load_identity() != b.load_identity()


def test_missing_identity_says_to_run_init(dd: DataDir) -> None:
    with pytest.raises(DataDirError) as info:
        dd.load_identity()
    assert str(info.value) == f"no identity in {dd.path}: run `overlay-node --data-dir {dd.path} init`"


@pytest.mark.parametrize(("mode", "word"), [(0o644, "readable"), (0o640, "readable"), (0o620, "writable")])
def test_identity_readable_by_others_is_refused(dd: DataDir, mode: int, word: str) -> None:
    dd.init(config_text=CONFIG_TEXT)
    os.chmod(dd.identity_path, mode)
    with pytest.raises(DataDirError) as info:
        dd.load_identity()
    assert str(info.value) == (
        f"identity.key in {dd.path} is {word} by others (mode {mode:04o}): chmod 600 {dd.identity_path}"
    )
    os.chmod(dd.identity_path, 0o600)
    assert len(dd.load_identity()) == 32


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "expected 64 hex characters"),
        (b"zz" * 32 + b"\n", "not hex"),
        (b"ab" * 31 + b"\n", "expected 64 hex characters"),
        (b"\xff" * 64, "not hex text"),
        (b"0" * 64 + b"\n", "not a valid secp256k1"),
        (f"{SECP256K1_N:064x}\n".encode(), "not a valid secp256k1"),
        (b"a" * 5000, "too large"),
    ],
)
def test_malformed_identity_is_refused(dd: DataDir, content: bytes, match: str) -> None:
    dd.init(config_text=CONFIG_TEXT)
    dd.identity_path.write_bytes(content)
    with pytest.raises(DataDirError, match=match):
        dd.load_identity()


def test_identity_accepts_uppercase_and_whitespace(dd: DataDir) -> None:
    dd.init(config_text=CONFIG_TEXT)
    key = dd.load_identity()
    dd.identity_path.write_text(f"  {key.hex().upper()}\r\n")
    assert dd.load_identity() == key


def test_lock_writes_pid_and_refuses_a_second_holder(dd: DataDir) -> None:
    dd.init(config_text=CONFIG_TEXT)
    with dd.lock():
        assert dd.lock_path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(DataDirError) as info, DataDir(dd.path).lock():
            pass  # pragma: no cover - the lock must not be granted
        assert str(info.value) == f"another daemon (pid {os.getpid()}) is running on {dd.path}"
    assert not dd.lock_path.exists()  # removed on release (a crash leaves it, harmlessly: flock dies with us)
    with DataDir(dd.path).lock():  # released on exit: a new holder gets it
        pass


def test_lock_is_released_when_the_block_raises(dd: DataDir) -> None:
    dd.init(config_text=CONFIG_TEXT)
    with pytest.raises(RuntimeError), dd.lock():
        raise RuntimeError("boom")
    with dd.lock():
        pass


def test_lock_on_missing_dir_says_to_run_init(dd: DataDir) -> None:
    with pytest.raises(DataDirError, match=r"run `overlay-node --data-dir \S+ init`"), dd.lock():
        pass  # pragma: no cover


def test_control_socket_short_path_is_in_the_data_dir(dd: DataDir) -> None:
    assert dd.control_socket_path() == dd.path / "control.sock"


def test_control_socket_configured_path_wins(dd: DataDir, tmp_path: Path) -> None:
    assert dd.control_socket_path(str(tmp_path / "c.sock")) == tmp_path / "c.sock"
    with pytest.raises(DataDirError, match="longer than"):
        dd.control_socket_path("/tmp/" + "x" * 200)


def test_long_data_dir_gets_a_short_private_socket_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = DataDir(deep).control_socket_path()
    other = DataDir(tmp_path / ("f" * 120)).control_socket_path()
    try:
        assert len(os.fsencode(path)) <= MAX_SOCKET_PATH
        assert path.name == "control.sock"
        assert not str(path).startswith(str(tmp_path))
        assert _mode(path.parent) == 0o700
        assert _mode(path.parent.parent) == 0o700
        assert path.parent.parent.name == f"overlay-node-{os.getuid()}"
        assert DataDir(deep).control_socket_path() == path  # stable for one dir
        assert other.parent != path.parent  # private to each dir
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(path))  # it really fits in a socket address
        assert path.is_socket()
    finally:
        for p in (path, other):
            p.unlink(missing_ok=True)
            p.parent.rmdir()


def test_api_json_atomic_write_read_remove(dd: DataDir) -> None:
    dd.init(config_text=CONFIG_TEXT)
    assert dd.read_api() is None
    info = {"pid": 123, "control_socket": "/tmp/x.sock", "addresses": ["ws://127.0.0.1:1/p2p/1"]}
    dd.write_api(info)
    assert dd.read_api() == info
    assert _mode(dd.api_path) == 0o600
    dd.write_api({"pid": 456})
    assert dd.read_api() == {"pid": 456}
    assert not [p.name for p in dd.path.iterdir() if p.name.endswith(".tmp")]  # no temp files left behind
    dd.remove_api()
    assert dd.read_api() is None
    dd.remove_api()  # already gone: fine


def test_api_json_unencodable_info_is_refused_and_old_file_kept(dd: DataDir) -> None:
    dd.init(config_text=CONFIG_TEXT)
    dd.write_api({"pid": 1})
    with pytest.raises(DataDirError, match="cannot encode"):
        dd.write_api({"pid": object()})
    assert dd.read_api() == {"pid": 1}


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe", b" " * (1024 * 1024 + 1)])
def test_corrupt_api_json_is_an_error(dd: DataDir, content: bytes) -> None:
    dd.init(config_text=CONFIG_TEXT)
    dd.api_path.write_bytes(content)
    with pytest.raises(DataDirError, match=str(dd.api_path)):
        dd.read_api()
